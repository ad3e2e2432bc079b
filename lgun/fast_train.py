"""Faster CPU training step for LGUN: same parameters, same gradients (fp32 rounding).

``optimize_for_training(model)`` changes how ``model`` computes, never what it holds: the
same ``nn.Parameter`` objects, the same ``state_dict`` keys (checkpoints and safetensors stay
interchangeable), gradients equal to the eager reference within fp32 rounding
(``tests/lgun/test_fast_train.py`` checks 1e-4 relative per parameter)::

    training_setup(threads=1)          # once per process: threads + allocator
    model = optimize_for_training(model)
    opt = torch.optim.AdamW(model.parameters(), ...)

What it changes (``python -m pipelines.bench_train`` measures it, each depthwise
implementation against the eager step, in one run; BENCHMARKS.md). The step is bound by
memory passes and by the depthwise convs more than by its GEMMs:

* activations stay NHWC ``(B, H, W, C)`` contiguous from the head conv to the reconstruction:
  every 1x1 conv is one GEMM on a contiguous matrix in both directions, depthwise convs see
  channels_last views, and the NCHW code's layout copies (DGSA's per-head reshape of q, k and
  v, the NCHW round trip around each space-to-batch) are gone;
* depthwise convs, dilated or not, run on ``lgun.cpu_kernels`` (C loops over NHWC with the
  channels innermost, dilation handled directly, no re-arranging) where those build
  (``optimize_for_training(model, native=None)``, the default; ``native=False`` or
  ``LGUN_NATIVE_KERNELS=0`` keep oneDNN's); the convs that run there carry
  ``NATIVE_ATTR``. Without them:
* dilated depthwise convs are dense convs on re-arranged images. Space-to-batch (what
  ``DilatedDepthwise`` does) gives sub-images smaller than the kernel at x4 (4 x 4 under the
  9 x 9, d=4 kernel), where oneDNN's weight gradient is several times slower per MAC than on
  one larger image; there the sub-images are laid out as a *mosaic*, one canvas per sample,
  separated by zero rows and columns so that a dense conv never mixes them (``_mosaic``:
  1.13x on the whole x4 step), and taps that can only ever see padding are cropped;
* DGSA from its qkv tensor on is one autograd node (``lgun.fast_ops.ChannelAttention``):
  q k^T of all heads is one (C x N) @ (N x C) GEMM on strided views of the qkv tensor
  (heads' blocks are its diagonal), q and k are normalised through the Dh x Dh scores,
  attn @ V and proj_out are one GEMM with ``W_out @ blockdiag(attn)``, and the backward
  writes the gradients of q, k (norm terms added in place) and V into one tensor;
* FFN: the SE scale and GELU are one autograd node that keeps only its inputs: with the
  native kernels ``lgun.cpu_kernels.scale_gelu`` (one pass over the activation forward and
  one backward, where eager makes six), else ``lgun.fast_ops.ScaleGelu`` (the same from
  PyTorch ops); the SE mean's backward is a broadcast view (``MeanHW``).

Measured and left out: oneDNN's matmul for the 1x1 convs (fast in inference, ``lgun.fast``;
neutral to 4% slower over a whole training step), an input gradient by the flipped-kernel
forward conv (slower than oneDNN's backward-data kernel), folding LayerNorm's affine into
the next 1x1 conv (``F.layer_norm`` without weights is the slower path), ``torch.compile``
(tens of seconds for one elementwise chain; minutes for the model, against 40-70 minute
training runs).

``training_setup`` calls ``lgun.fast.tune_malloc`` (glibc keeps freed activations instead of
returning them to the OS and faulting them in again); it doubled inference speed on large
tiles, and the training step's activations are small enough that its effect there is within
the noise of a shared machine (``bench_train`` reports it). bf16 autocast is a separate
opt-in (``bf16_supported``): without native bf16 (``avx512_bf16``/``amx_bf16``) it is
emulated and slower, and bf16 gradients cannot meet the 1e-4 fp32 tolerance anyway.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lgun import cpu_kernels
from lgun.fast import tune_malloc
from lgun.fast_ops import ChannelAttention, MeanHW, ScaleGelu
from lgun.layers import DilatedDepthwise, LayerNorm2d
from lgun.model import DGSA, FFN, LGUN, LKCS, MLHA, LGUBlock

__all__ = ["NATIVE_ATTR", "bf16_supported", "native_convs", "optimize_for_training",
           "training_setup"]

# Set on each depthwise conv that runs on ``lgun.cpu_kernels`` (a plain attribute: it is
# copied with the module and is not part of the state_dict).
NATIVE_ATTR = "lgun_native"


def training_setup(threads: int = 1) -> dict[str, object]:
    """Process-wide settings for a CPU training run; call once before building the model.

    Args:
        threads: ``torch.set_num_threads`` value (intra-op threads).

    Returns:
        What was set: ``{"threads": int, "tune_malloc": bool}``.
    """
    torch.set_num_threads(threads)
    return {"threads": torch.get_num_threads(), "tune_malloc": tune_malloc()}


def bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` in cpuinfo).

    Without them PyTorch emulates bf16 matmuls through fp32 and autocast only adds casts.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ---------------------------------------------------------------------------- kernels


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) contiguous -> (B, C, H, W) channels_last view (what oneDNN wants)."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C) contiguous (a view when ``x`` is channels_last)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _native(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``conv`` of ``x`` runs on ``lgun.cpu_kernels`` (marked, float32, on the CPU)."""
    return (getattr(conv, NATIVE_ATTR, False) and x.dtype == torch.float32
            and x.device.type == "cpu")


def _depthwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Stride-1, 'same' depthwise ``conv`` of NHWC ``x``; NHWC out."""
    if _native(x, conv):
        return cpu_kernels.depthwise_nhwc(x, conv.weight, conv.bias, conv.padding,
                                          conv.dilation[0])
    y = F.conv2d(_nchw(x), conv.weight, conv.bias, padding=conv.padding,
                 dilation=conv.dilation, groups=conv.groups)
    return _nhwc(y)


def _space_to_batch(x: torch.Tensor, d: int) -> torch.Tensor:
    """NHWC (B, H, W, C), H and W multiples of d -> (B*d*d, H/d, W/d, C), one per phase."""
    b, h, w, c = x.shape
    # (B, H/d, d, W/d, d, C) -> (B, d, d, H/d, W/d, C)
    t = x.reshape(b, h // d, d, w // d, d, c).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b * d * d, h // d, w // d, c)


def _batch_to_space(y: torch.Tensor, b: int, d: int) -> torch.Tensor:
    """Inverse of ``_space_to_batch``."""
    _, hs, ws, c = y.shape
    # (B, d, d, H/d, W/d, C) -> (B, H/d, d, W/d, d, C)
    t = y.reshape(b, d, d, hs, ws, c).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(b, hs * d, ws * d, c)


def _mosaic(x: torch.Tensor, d: int, gap: tuple[int, int]) -> torch.Tensor:
    """NHWC (B, H, W, C) -> one canvas per sample holding its d x d phase sub-images.

    Sub-image (i, j) (pixels ``x[:, i::d, j::d]``) sits at canvas block (i, j), each block
    followed by ``gap`` = (rows, columns) of zeros, so a dense conv with that padding sees
    every sub-image zero-padded exactly as space-to-batch would give it.
    Out: (B, d*(H/d + gap[0]), d*(W/d + gap[1]), C).
    """
    b, h, w, c = x.shape
    # (B, H/d, d, W/d, d, C) -> (B, d, H/d, d, W/d, C), then the gap after each block
    t = x.reshape(b, h // d, d, w // d, d, c).permute(0, 2, 1, 4, 3, 5)
    t = F.pad(t, (0, 0, 0, gap[1], 0, 0, 0, gap[0]))
    return t.reshape(b, d * (h // d + gap[0]), d * (w // d + gap[1]), c)


def _unmosaic(y: torch.Tensor, d: int, gap: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``_mosaic`` (the gaps are dropped)."""
    b, hc, wc, c = y.shape
    hs, ws = hc // d - gap[0], wc // d - gap[1]
    t = y.reshape(b, d, hs + gap[0], d, ws + gap[1], c)[:, :, :hs, :, :ws]
    return t.permute(0, 2, 1, 4, 3, 5).reshape(b, hs * d, ws * d, c)


def dilated_depthwise_nhwc(x: torch.Tensor, conv: DilatedDepthwise) -> torch.Tensor:
    """``conv`` (k x k depthwise, dilation d, 'same' padding) of NHWC ``x``; NHWC out.

    A dense conv on phase sub-images (see the module docstring): space-to-batch while a
    sub-image is larger than the kernel, the zero-gapped mosaic otherwise (oneDNN's weight
    gradient on many sub-images smaller than the kernel is what made the x4 step slow).
    Taps that reach past every sub-image (a 9 x 9 kernel on 4 x 4 sub-images) only ever
    see zeros: they are cropped, and their weight gradient is exactly zero as in eager.
    """
    if _native(x, conv):  # dilation is native there: no re-arranging
        return _depthwise(x, conv)
    d, k = conv.dilation[0], conv.kernel_size[0]
    b, h, w, c = x.shape
    hp, wp = -(-h // d) * d, -(-w // d) * d
    # Zeros at the end act as the zero padding the dilated conv would see.
    x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    hs, ws = hp // d, wp // d  # sub-image size
    kh, kw = min(k, 2 * hs - 1), min(k, 2 * ws - 1)  # taps that can reach a pixel
    weight = conv.weight[:, :, (k - kh) // 2:(k + kh) // 2, (k - kw) // 2:(k + kw) // 2]
    pad = (kh // 2, kw // 2)
    if min(hs, ws) <= k:
        canvas = _mosaic(x, d, pad)
        y = F.conv2d(_nchw(canvas), weight, conv.bias, padding=pad, groups=c)
        y = _unmosaic(_nhwc(y), d, pad)
    else:
        tiles = _space_to_batch(x, d)
        y = F.conv2d(_nchw(tiles), weight, conv.bias, padding=pad, groups=c)
        y = _batch_to_space(_nhwc(y), b, d)
    return y[:, :h, :w].contiguous() if (hp, wp) != (h, w) else y


def _normalise(x: torch.Tensor, norm: LayerNorm2d) -> torch.Tensor:
    """``norm`` over the channel (last) dim of NHWC ``x``.

    With its affine parameters: folding them into the next 1x1 conv would save nothing, as
    ``F.layer_norm`` without weights is 2x slower forward (torch 2.13, 16384 x 64, measured).
    """
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def _linear(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 conv (``Pointwise`` or ``nn.Conv2d``) applied to NHWC ``x``."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


# ---------------------------------------------------------------------------- modules
# Subclasses that add an NHWC forward and nothing else (no new parameters or buffers):
# ``optimize_for_training`` swaps each module's class in place, so parameters, their
# identity (an optimiser built before still works) and state_dict keys are untouched.


class _TrainDilatedDepthwise(DilatedDepthwise):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # NCHW in/out, channels_last out
        return _nchw(dilated_depthwise_nhwc(_nhwc(x), self))


class _TrainLKCS(LKCS):
    def forward_nhwc(self, z: torch.Tensor) -> torch.Tensor:
        t = dilated_depthwise_nhwc(_depthwise(z, self.dw), self.dw_dilated)
        return _linear(t, self.pw)


class _TrainMLHA(MLHA):
    def forward_nhwc(self, n: torch.Tensor) -> torch.Tensor:
        f_in = _linear(n, self.proj_in)  # (B, H, W, C)
        if not self.stf:
            return _linear(f_in * self.branches[0].forward_nhwc(f_in), self.proj_out)
        xs = f_in.chunk(self.groups, dim=-1)  # groups x (B, H, W, C/groups) views
        ys = [xs[0]]
        for xi, branch in zip(xs[1:], self.branches, strict=True):
            ys.append(branch.forward_nhwc(xi + ys[-1]))
        return _linear(f_in * torch.cat(ys, dim=-1), self.proj_out)


class _TrainDGSA(DGSA):
    def forward_nhwc(self, n: torch.Tensor) -> torch.Tensor:
        b, h, w, c = n.shape
        qkv = _depthwise(_linear(n, self.qkv), self.qkv_dw).view(b, h * w, 3 * c)
        out = ChannelAttention.apply(qkv, self, self.temperature, self.stage_weights,
                                     self.proj_out.weight, self.proj_out.bias)
        return out.view(b, h, w, c)


class _TrainFFN(FFN):
    def forward_nhwc(self, n: torch.Tensor) -> torch.Tensor:
        t = _depthwise(_linear(n, self.fc1), self.dw)  # (B, H, W, hidden)
        se = self.se
        s = F.relu(F.linear(MeanHW.apply(t), se.fc1.weight.flatten(1), se.fc1.bias))
        s = torch.sigmoid(F.linear(s, se.fc2.weight.flatten(1), se.fc2.bias))  # (B, hidden)
        # with the native depthwise kernels, the native GELU(t s) too: one pass each way
        u = cpu_kernels.scale_gelu(t, s) if _native(t, self.dw) else ScaleGelu.apply(t, s)
        return _linear(u, self.fc2)


class _TrainBlock(LGUBlock):
    def forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """X' = X + Mixer(LN(X)); X'' = X' + FFN(LN(X')) on NHWC ``x``."""
        x = x + self.mixer.forward_nhwc(_normalise(x, self.norm1))
        return x + self.ffn.forward_nhwc(_normalise(x, self.norm2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # NCHW in/out
        return _nchw(self.forward_nhwc(_nhwc(x)))


class _TrainLGUN(LGUN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Super-resolve a (B, in_channels, H, W) batch to (B, in_channels, sH, sW)."""
        f = _nhwc(self.head(x.contiguous(memory_format=torch.channels_last)))  # (B, H, W, C)
        s = f
        for block in self.blocks:
            s = block.forward_nhwc(s)
        return self.rec(_nchw(s + f)).contiguous()


_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    LGUN: _TrainLGUN,
    LGUBlock: _TrainBlock,
    MLHA: _TrainMLHA,
    DGSA: _TrainDGSA,
    FFN: _TrainFFN,
    LKCS: _TrainLKCS,
    DilatedDepthwise: _TrainDilatedDepthwise,
}


def _is_depthwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels
            and m.stride == (1, 1) and m.padding_mode == "zeros")


def native_convs(model: nn.Module) -> int:
    """How many of ``model``'s depthwise convs run on ``lgun.cpu_kernels``."""
    return sum(bool(getattr(m, NATIVE_ATTR, False)) for m in model.modules())


def optimize_for_training(model: LGUN, native: bool | None = None) -> LGUN:
    """Switch ``model`` (in place) to the fast training forward; returns it.

    Same parameters (the same objects), buffers and ``state_dict`` keys; forward values and
    gradients equal the eager ones within fp32 rounding. Apply before or after building the
    optimiser, before ``copy.deepcopy`` for an EMA (the copy keeps the fast forward).
    ``set_fast_kernels`` has no effect on a switched model.

    Args:
        model: the ``LGUN`` to switch.
        native: run the depthwise convs (float32, CPU) on ``lgun.cpu_kernels``; None (the
            default) does where they are ``available()``, False keeps oneDNN's.

    Raises:
        TypeError: ``model`` is not an ``LGUN`` (or a module holds an unknown subclass).
        RuntimeError: ``native=True`` where the kernels are not available.
    """
    if not isinstance(model, LGUN):
        raise TypeError(f"expected an lgun.LGUN, got {type(model).__name__}")
    if native is None:
        native = cpu_kernels.available()
    elif native and not cpu_kernels.available():
        raise RuntimeError(f"lgun native kernels unavailable: {cpu_kernels.build_error()}")
    for m in model.modules():
        new = _SWAPS.get(type(m))
        if new is not None:
            m.__class__ = new
        elif type(m) not in _SWAPS.values() and isinstance(m, tuple(_SWAPS)):
            raise TypeError(f"unsupported subclass {type(m).__name__}")
        if _is_depthwise(m):
            setattr(m, NATIVE_ATTR, native)
    return model
