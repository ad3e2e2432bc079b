"""Autograd nodes of LGUN's fast CPU training step (``lgun.fast_train``).

Each computes what a few eager PyTorch ops compute, with fewer passes over the activations
and fewer saved tensors than eager autograd makes of them; gradients equal within fp32
rounding (``tests/lgun/test_fast_train.py`` compares the whole model with the eager one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lgun.model import DGSA

__all__ = ["ChannelAttention", "MeanHW", "ScaleGelu"]


class MeanHW(torch.autograd.Function):
    """Spatial mean of NHWC ``t`` -> (B, C); the backward is a broadcast view, not a tensor."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.shape = t.shape
        return t.mean(dim=(1, 2))

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, h, w, c = ctx.shape
        return (g / (h * w))[:, None, None, :].expand(b, h, w, c)


class ScaleGelu(torch.autograd.Function):
    """``GELU(t * s)`` for NHWC ``t`` and per-sample channel scales ``s`` (B, C).

    What runs where ``lgun.cpu_kernels.scale_gelu`` does not (oneDNN convs, CUDA).

    Keeps only ``t`` and ``s`` (eager autograd also keeps ``t * s``) and recomputes the
    product in the backward, where it is consumed at once.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(t, s)
        return torch.ops.aten.gelu_(t * s[:, None, None, :])

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        t, s = ctx.saved_tensors
        s4 = s[:, None, None, :]
        gu = torch.ops.aten.gelu_backward(g.contiguous(), t * s4)  # dL/d(t s)
        b, c = s.shape
        # dL/ds = sum over pixels of dL/du * t: (B, N, C) . (B, N, C) over N
        gs = torch.linalg.vecdot(gu.view(b, -1, c), t.reshape(b, -1, c), dim=1)
        return gu.mul_(s4), gs


def _attention_map(mixer: DGSA, gram: torch.Tensor, sq: torch.Tensor, sk: torch.Tensor,
                   temperature: torch.Tensor, stage_weights: torch.Tensor | None,
                   w_out: torch.Tensor) -> torch.Tensor:
    """DGSA's (B, C, C) map ``M = W_out @ blockdiag(attn)`` from q^T k and the squared norms.

    ``gram`` = q^T k (B, C, C), heads' blocks on its diagonal; ``sq``, ``sk`` (B, C): the
    squared L2 norms of q and k over the tokens (F.normalize applied to the Dh x Dh scores).
    """
    b, c = sq.shape
    heads = mixer.num_heads
    dh = c // heads
    # (B, heads, Dh, heads, Dh) -> (B, Dh, Dh, heads) -> (B, heads, Dh, Dh)
    scores = gram.view(b, heads, dh, heads, dh).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)
    nq = sq.sqrt().clamp_min(1e-12).view(b, heads, dh, 1)
    nk = sk.sqrt().clamp_min(1e-12).view(b, heads, 1, dh)
    attn = mixer.combine_stages(scores / (nq * nk) * temperature, stage_weights)
    return torch.einsum("ohi,bhij->bohj", w_out.view(c, heads, dh), attn).reshape(b, c, c)


class ChannelAttention(torch.autograd.Function):
    """DGSA from its (B, N, 3C) qkv tensor to ``proj_out(attn @ V)``, (B, N, C).

    ``apply(qkv, mixer, temperature, stage_weights, w_out, bias)``: ``mixer`` is the
    ``lgun.model.DGSA`` (for its heads and top-k stages), the tensors are its parameters
    (``stage_weights`` may be None). Forward: q^T k of all heads as one (C x N) @ (N x C)
    GEMM, the squared norms of q and k, the small (B, C, C) map M of ``_attention_map``
    (its autograd graph built on detached copies and kept for the backward), and
    V @ M^T + bias as one GEMM. Backward: autograd through the small graph, then dq, dk
    (norm terms added in place) and dV, each one GEMM written straight into its slice of one
    (B, N, 3C) gradient (eager autograd also materialises the norm products, sums them and
    concatenates the three gradients).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # fp32 under autocast
    def forward(ctx, qkv, mixer, temperature, stage_weights, w_out, bias):  # type: ignore[override]
        c = qkv.shape[-1] // 3
        q, k, v = qkv.split(c, dim=-1)  # strided (B, N, C) views
        gram = torch.bmm(q.transpose(1, 2), k)
        sq, sk = torch.linalg.vecdot(q, q, dim=1), torch.linalg.vecdot(k, k, dim=1)
        leaves = [t.detach().requires_grad_() for t in (gram, sq, sk, temperature, w_out)]
        if stage_weights is not None:
            leaves.append(stage_weights.detach().requires_grad_())
        with torch.enable_grad():  # the small graph only: (B, C, C) and smaller tensors
            m = _attention_map(mixer, *leaves[:4], leaves[5] if len(leaves) > 5 else None,
                               leaves[4])
        ctx.graph = (m, leaves)
        m = m.detach()
        ctx.save_for_backward(qkv, m)
        return torch.baddbmm(bias, v, m.transpose(1, 2))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, gout):  # type: ignore[override]
        qkv, m = ctx.saved_tensors
        c = qkv.shape[-1] // 3
        gout = gout.contiguous()
        q, k, v = qkv.split(c, dim=-1)
        small, leaves = ctx.graph
        grads = torch.autograd.grad(small, leaves, torch.bmm(gout.transpose(1, 2), v))
        ggram, gsq, gsk, gtemp, gw_out = grads[:5]  # dL/dM = gout^T V fed the small graph
        gqkv = torch.empty_like(qkv)
        gq, gk, gv = gqkv.split(c, dim=-1)
        torch.bmm(k, ggram.transpose(1, 2), out=gq).addcmul_(q, (2 * gsq)[:, None, :])
        torch.bmm(q, ggram, out=gk).addcmul_(k, (2 * gsk)[:, None, :])
        torch.bmm(gout, m, out=gv)
        return (gqkv, None, gtemp, grads[5] if len(grads) > 5 else None, gw_out,
                gout.sum((0, 1)))
