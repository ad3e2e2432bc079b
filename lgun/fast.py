"""Inference-only fast path for LGUN: the same function with fewer passes over memory.

``optimize_for_inference(model)`` returns a new module that computes what ``model``
computes (equal within fp32 rounding; ``tests/test_fast.py`` checks 1e-4 on the whole
network) and shares nothing mutable with it::

    fast = optimize_for_inference(LGUN(scale=4).eval())
    with torch.inference_mode():
        sr = fast(lr)  # (B, 3, H, W) -> (B, 3, 4H, 4W)

What it changes, all exact algebra (on CPU the network is bound by memory traffic and
allocation more than by its Multi-Adds):

* activations stay NHWC from the head to the reconstruction, so every 1x1 conv is one GEMM
  on a contiguous matrix (oneDNN's matmul where available: 20-35% faster than MKL's sgemm
  on these tall-skinny shapes) and depthwise convs see channels_last tensors;
* each LayerNorm's scale and shift are folded into the 1x1 conv that reads it;
* the residual stream is updated in place (each block's last 1x1 conv is added into it);
* DGSA: q k^T of all heads is one (C x N) @ (N x C) GEMM on strided views of the qkv tensor
  (the heads' Dh x Dh blocks are its diagonal); q and k are normalised by dividing the
  Dh x Dh scores by their norms instead of writing normalised copies; and since attn @ V
  and proj_out are both linear in V, they are one GEMM with ``W_out @ blockdiag(attn)``;
* FFN: the squeeze-excitation mean of the 3x3 depthwise conv's output is computed from
  border sums of its input (``_dw3x3_mean``), so the SE scale folds into the conv weights
  and conv + scale + GELU are one oneDNN conv with a GELU epilogue;
* MLHA writes each branch's ``F_in * y_i`` straight into its slice (no ``cat``), and runs
  the (5, d=2) dilated conv directly (oneDNN is fast there), the wider ones by
  space-to-batch.

``tune_malloc()`` is separate because it is process-wide: glibc serves blocks over 32 MiB
with fresh ``mmap`` pages, so every large activation of a big tile is page-faulted in
and zeroed again on every layer; at 256 x 256 input that is a large part of the run time.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util

import torch
import torch.nn.functional as F
from torch import nn

from lgun.layers import LayerNorm2d, set_fast_kernels
from lgun.model import DGSA, FFN, LGUN, LKCS, MLHA, LGUBlock, LGUNConfig

__all__ = ["FastLGUN", "optimize_for_inference", "tune_malloc"]


def _fold_norm(norm: LayerNorm2d, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (out, in) and bias of ``conv(norm(x))`` for an affine-free normalisation.

    W (n * g + beta) + b = (W diag(g)) n + (W beta + b).
    """
    w = conv.weight.detach().flatten(1)  # (out, in)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
    g, beta = norm.weight.detach(), norm.bias.detach()
    return (w * g).contiguous(), b + w @ beta


def _mkldnn_linear_ok() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(
            torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


#: oneDNN runs a dilated depthwise conv directly as fast as a dense one only while the
#: dilated kernel spans <= 9 pixels ((5, d=2): 4x faster than space-to-batch); wider ones
#: ((7, 3), (9, 4)) are 10-20x slower than space-to-batch (AVX2, oneDNN 3.x).
_DIRECT_DILATED_SPAN = 9

#: oneDNN's fp32 matmul beats MKL's sgemm (what F.linear calls) by 20-35% on these
#: tall-skinny shapes (N x 64 @ 64 x 160 and back) on AVX2 CPUs, with identical results.
_MKLDNN_LINEAR = _mkldnn_linear_ok()


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` over the last dim; oneDNN's matmul for fp32 CPU tensors."""
    if _MKLDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def _mkldnn_conv_ok() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(
            torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


#: oneDNN convolution with a fused GELU (erf) epilogue: one pass instead of two.
_MKLDNN_CONV_GELU = _mkldnn_conv_ok()


def _dw_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """GELU(depthwise conv(x)) for channels_last NCHW ``x``."""
    c = x.shape[1]
    if _MKLDNN_CONV_GELU and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, b, [padding] * 2, [1, 1], [1, 1], c, "gelu", [], "none")
    return torch.ops.aten.gelu_(F.conv2d(x, w, b, padding=padding, groups=c))


def _border_sums(y: torch.Tensor) -> torch.Tensor:
    """(B, 9, C) sums of NHWC ``y``: all, last row, first row, last column, first column,
    and the corners (-1, -1), (-1, 0), (0, -1), (0, 0). Linear in ``y``."""
    return torch.stack([y.sum(dim=(1, 2)), y[:, -1].sum(1), y[:, 0].sum(1), y[:, :, -1].sum(1),
                        y[:, :, 0].sum(1), y[:, -1, -1], y[:, -1, 0], y[:, 0, -1], y[:, 0, 0]],
                       dim=1)


def _border_counts(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Pixels behind each of the 9 ``_border_sums``: (9, 1)."""
    return like.new_tensor([h * w, w, w, h, h, 1, 1, 1, 1])[:, None]


def _dw3x3_mean(sums: torch.Tensor, h: int, w: int, weight: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
    """Spatial mean of a zero-padded 3x3 depthwise conv of an H x W map, without running it.

    Summed over all outputs, tap (i, j) sees every input pixel except one border row
    (the last for i = 0, the first for i = 2) and one border column likewise, so its sum
    is total - row - column + their corner (inclusion-exclusion; right for any H, W >= 1).

    Args:
        sums: ``_border_sums`` of the conv's input, (B, 9, C).

    Returns:
        (B, C) means, equal to ``conv(y).mean((H, W))``.
    """
    total, r_last, r_first, c_last, c_first, k00, k02, k20, k22 = sums.unbind(1)
    zero = torch.zeros_like(total)
    row_ex = torch.stack([r_last, zero, r_first], dim=-1)  # (B, C, 3) by tap row
    col_ex = torch.stack([c_last, zero, c_first], dim=-1)  # (B, C, 3) by tap column
    corner = torch.stack([k00, zero, k02, zero, zero, zero, k20, zero, k22], dim=-1)
    taps = (total[..., None, None] - row_ex[..., :, None] - col_ex[..., None, :]
            + corner.view(*total.shape, 3, 3))  # (B, C, 3, 3)
    c = total.shape[-1]
    return bias + (taps * weight.view(c, 3, 3)).sum(dim=(-2, -1)) / (h * w)


def _normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last (channel) dim of NHWC ``x``, without scale and shift."""
    return F.layer_norm(x, (x.shape[-1],), None, None, eps)


def _conv_nhwc(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW module to an NHWC tensor through channels_last views; NHWC out."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()


def _add_linear_(stream: torch.Tensor, t: torch.Tensor, w: torch.Tensor,
                 b: torch.Tensor) -> None:
    """``stream += t @ w.T + b`` in place; both NHWC with channels last."""
    stream.add_(_linear(t, w, b))


class _FastMLHA(nn.Module):
    def __init__(self, norm: LayerNorm2d, mixer: MLHA) -> None:
        super().__init__()
        self.eps = norm.eps
        w, b = _fold_norm(norm, mixer.proj_in)
        self.register_buffer("w_in", w)
        self.register_buffer("b_in", b)
        self.register_buffer("w_out", mixer.proj_out.weight.detach().flatten(1).clone())
        self.register_buffer("b_out", mixer.proj_out.bias.detach().clone())
        self.stf, self.groups = mixer.stf, mixer.groups
        self.branches = mixer.branches

    @staticmethod
    def _branch(branch: LKCS, z: torch.Tensor) -> torch.Tensor:
        """LKCS on NHWC ``z``; NHWC out."""
        t = branch.dw(z.permute(0, 3, 1, 2))
        dd = branch.dw_dilated
        if dd.dilation[0] * (dd.kernel_size[0] - 1) + 1 <= _DIRECT_DILATED_SPAN:
            t = F.conv2d(t, dd.weight, dd.bias, padding=dd.padding, dilation=dd.dilation,
                         groups=dd.groups)
        else:
            t = dd(t)  # space-to-batch
        t = t.permute(0, 2, 3, 1).contiguous()
        return _linear(t, branch.pw.weight.flatten(1), branch.pw.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_in = _linear(_normalise(x, self.eps), self.w_in, self.b_in)  # (B, H, W, C)
        if not self.stf:
            g = f_in * self._branch(self.branches[0], f_in)
        else:
            g = torch.empty_like(f_in)
            xs, gs = f_in.chunk(self.groups, dim=-1), g.chunk(self.groups, dim=-1)
            prev = xs[0]  # y1 = x1
            torch.mul(xs[0], prev, out=gs[0])
            for xi, gi, branch in zip(xs[1:], gs[1:], self.branches, strict=True):
                prev = self._branch(branch, xi + prev)  # y_i = LKCS_i(x_i + y_{i-1})
                torch.mul(xi, prev, out=gi)
        _add_linear_(x, g, self.w_out, self.b_out)
        return x


class _FastDGSA(nn.Module):
    def __init__(self, norm: LayerNorm2d, mixer: DGSA) -> None:
        super().__init__()
        self.eps = norm.eps
        w, b = _fold_norm(norm, mixer.qkv)
        self.register_buffer("w_qkv", w)
        self.register_buffer("b_qkv", b)
        self.register_buffer("w_out", mixer.proj_out.weight.detach().flatten(1).clone())
        self.register_buffer("b_out", mixer.proj_out.bias.detach().clone())
        self.qkv_dw = mixer.qkv_dw
        self.heads = mixer.num_heads
        self.attn = mixer  # temperature, stage weights and combine_stages; its 1x1s are unused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        heads, dh = self.heads, c // self.heads
        qkv = _linear(_normalise(x, self.eps), self.w_qkv, self.b_qkv)  # (B, H, W, 3C)
        qkv = _conv_nhwc(self.qkv_dw, qkv).view(b, h * w, 3 * c)  # (B, N, 3C)
        q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]  # strided (B, N, C) views
        gram = torch.bmm(q.transpose(1, 2).float(), k.float())  # (B, C, C)
        # The heads' blocks are on the diagonal: (B, heads, Dh, heads, Dh) -> (B, heads, Dh, Dh)
        scores = gram.view(b, heads, dh, heads, dh).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)
        # F.normalize(q, dim=tokens) = q / max(|q|, 1e-12), applied to the scores instead.
        # vecdot: one strided pass (torch's norm over the strided token dim is ~6x slower)
        qk = qkv[..., :2 * c].float()
        norms = torch.linalg.vecdot(qk, qk, dim=1).sqrt_().clamp_min_(1e-12)  # (B, 2C)
        nq = norms[:, :c].view(b, heads, dh, 1)
        nk = norms[:, c:].view(b, heads, 1, dh)
        attn = self.attn.combine_stages(scores / (nq * nk) * self.attn.temperature)
        # attn @ V then proj_out = V @ (W_out @ blockdiag(attn))^T: one GEMM.
        block = attn.new_zeros(b, heads, dh, heads, dh)
        block.diagonal(dim1=1, dim2=3).copy_(attn.permute(0, 2, 3, 1))
        m = (self.w_out.float() @ block.view(b, c, c)).to(v.dtype)  # (B, C, C)
        stream = x.view(b, h * w, c)
        for i in range(b):
            stream[i].add_(_linear(v[i], m[i], self.b_out))
        return x


class _FastFFN(nn.Module):
    def __init__(self, norm: LayerNorm2d, ffn: FFN) -> None:
        super().__init__()
        self.eps = norm.eps
        w, b = _fold_norm(norm, ffn.fc1)
        self.register_buffer("w1", w)
        self.register_buffer("b1", b)
        self.dw = ffn.dw
        dw = ffn.dw
        # 3x3, padding 1, stride 1: the SE mean can be had before the conv (_dw3x3_mean).
        self.mean_first = (dw.kernel_size == (3, 3) and dw.padding == (1, 1)
                           and dw.stride == (1, 1) and dw.dilation == (1, 1))
        se = ffn.se
        self.register_buffer("se_w1", se.fc1.weight.detach().flatten(1).clone())
        self.register_buffer("se_b1", se.fc1.bias.detach().clone())
        self.register_buffer("se_w2", se.fc2.weight.detach().flatten(1).clone())
        self.register_buffer("se_b2", se.fc2.bias.detach().clone())
        self.register_buffer("w2", ffn.fc2.weight.detach().flatten(1).clone())
        self.register_buffer("b2", ffn.fc2.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = _normalise(x, self.eps)
        t = _linear(n, self.w1, self.b1)  # (B, H, W, hidden)
        if not self.mean_first:
            t = _conv_nhwc(self.dw, t)
            t.mul_(self._se(t.mean(dim=(1, 2)))[:, None, None, :])
            _add_linear_(x, torch.ops.aten.gelu_(t), self.w2, self.b2)
            return x
        # GELU(s * dw(t)) = GELU(dw_{s w, s b}(t)): the SE scale goes into the conv's
        # weights, so the conv, the scale and the GELU are one pass over t.
        # fc1 is affine, so t's border sums are fc1 of n's: 64 channels to read, not 160.
        h, wd = x.shape[1:3]
        sums = _border_sums(n) @ self.w1.t() + _border_counts(h, wd, n) * self.b1
        w, b = self.dw.weight, self.dw.bias
        s = self._se(_dw3x3_mean(sums, h, wd, w, b))  # (B, hidden)
        for i in range(t.shape[0]):
            si = s[i]
            g = _dw_gelu(t[i:i + 1].permute(0, 3, 1, 2), w * si[:, None, None, None], b * si,
                         padding=1)
            _add_linear_(x[i:i + 1], g.permute(0, 2, 3, 1), self.w2, self.b2)
        return x

    def _se(self, mean: torch.Tensor) -> torch.Tensor:
        """Squeeze-excitation scales (B, hidden) from the (B, hidden) spatial means."""
        s = F.relu(F.linear(mean, self.se_w1, self.se_b1))
        return torch.sigmoid(F.linear(s, self.se_w2, self.se_b2))


class _FastBlock(nn.Module):
    def __init__(self, block: LGUBlock) -> None:
        super().__init__()
        mixer = block.mixer
        if isinstance(mixer, DGSA):
            self.mixer: nn.Module = _FastDGSA(block.norm1, mixer)
        elif isinstance(mixer, MLHA):
            self.mixer = _FastMLHA(block.norm1, mixer)
        else:
            raise TypeError(f"unknown LGU mixer {type(mixer).__name__}")
        self.ffn = _FastFFN(block.norm2, block.ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.mixer(x))


class FastLGUN(nn.Module):
    """Inference-only LGUN built from a trained one; see the module docstring.

    Takes and returns what ``LGUN`` does ((B, 3, H, W) -> (B, 3, sH, sW), fp32). It
    updates its own intermediate tensors in place, so it has no backward pass.
    """

    def __init__(self, model: LGUN) -> None:
        super().__init__()
        m = set_fast_kernels(copy.deepcopy(model), True).eval().requires_grad_(False)
        self.config: LGUNConfig = m.config
        self.head = m.head
        self.blocks = nn.ModuleList(_FastBlock(b) for b in m.blocks)
        self.rec = m.rec

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = x.contiguous(memory_format=torch.channels_last)
            f = self.head(x).permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
            s = f.clone()
            for block in self.blocks:
                s = block(s)
            s.add_(f)  # long skip
            return self.rec(s.permute(0, 3, 1, 2)).contiguous()


def optimize_for_inference(model: LGUN) -> FastLGUN:
    """A fast inference-only copy of ``model`` (same outputs within fp32 rounding).

    The copy is taken now: later changes to ``model``'s weights do not reach it.
    """
    if not isinstance(model, LGUN):
        raise TypeError(f"expected an lgun.LGUN, got {type(model).__name__}")
    return FastLGUN(model)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def tune_malloc() -> bool:
    """Keep freed memory in the process so big activations are not page-faulted again.

    Process-wide and glibc-only: allocations stop using ``mmap`` and the heap top is no
    longer trimmed, so the resident size stays at its peak instead of shrinking between
    layers; fragmentation can raise the peak too (about +20% end to end in BENCHMARKS.md).
    Call it once in an inference process.

    Returns:
        True if glibc accepted both settings; False elsewhere (nothing changed).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
