"""Layers of LGUN with exact fast kernels: same parameters and state-dict keys as the
plain ``torch.nn`` layers they replace, same values, faster on CPU.

``set_fast_kernels(model, False)`` switches them back to the plain evaluation: the naive
eager reference that benchmarks and tests compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor (any memory format)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.layer_norm over the last dim of the NHWC view: a contiguous reduction for
        # channels_last tensors. Statistics in fp32: fp16 variance can overflow.
        y = F.layer_norm(
            x.permute(0, 2, 3, 1).float(), (x.shape[1],), self.weight.float(),
            self.bias.float(), self.eps,
        )
        return y.to(x.dtype).permute(0, 3, 1, 2)


class Pointwise(nn.Conv2d):
    """1x1 convolution evaluated as a matmul over the NHWC view.

    Same parameters (and state-dict keys) as ``nn.Conv2d(cin, cout, 1)``. On CPU,
    PyTorch routes 1x1 convs through an im2col path that is ~2x slower than the
    equivalent ``F.linear`` on a channels_last tensor; the result is identical.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)
        self.fast = True  # False: plain nn.Conv2d path (reference for benchmarks/tests)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return super().forward(x)
        w = self.weight.view(self.out_channels, self.in_channels)
        # (B, C, H, W) -> (B, H, W, C) -> linear -> (B, H, W, C') -> channels_last NCHW
        return F.linear(x.permute(0, 2, 3, 1), w, self.bias).permute(0, 3, 1, 2)


class DilatedDepthwise(nn.Conv2d):
    """Depthwise dilated conv evaluated by space-to-batch ("atrous" trick).

    A stride-1 conv with dilation d only mixes pixels of the same phase
    (i mod d, j mod d), so it equals a dense (undilated) k x k depthwise conv on
    each of the d*d sub-images, zero-padded by k//2. oneDNN's dilated depthwise
    kernel is ~7x slower per MAC than its dense one on CPU; the result is identical
    and the parameters are those of ``nn.Conv2d(..., dilation=d, groups=channels)``.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__(
            channels, channels, kernel_size, padding=(kernel_size // 2) * dilation,
            dilation=dilation, groups=channels,
        )
        self.fast = True  # False: plain dilated nn.Conv2d path (reference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return super().forward(x)
        d = self.dilation[0]
        b, c, h, w = x.shape
        hp, wp = -(-h // d) * d, -(-w // d) * d
        # Extra zeros at the end act as the zero padding the dilated conv would see.
        x = F.pad(x, (0, wp - w, 0, hp - h))
        # (B, C, Hp, Wp) -> (B*d*d, C, Hp/d, Wp/d): one sub-image per phase
        x = x.reshape(b, c, hp // d, d, wp // d, d).permute(0, 3, 5, 1, 2, 4)
        x = x.reshape(b * d * d, c, hp // d, wp // d)
        y = F.conv2d(x, self.weight, self.bias, padding=self.kernel_size[0] // 2, groups=c)
        # (B*d*d, C, Hp/d, Wp/d) -> (B, C, Hp, Wp)
        y = y.reshape(b, d, d, c, hp // d, wp // d).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(b, c, hp, wp)[:, :, :h, :w]


def set_fast_kernels(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch the exact fast kernels (``Pointwise``, ``DilatedDepthwise``) on or off.

    Off gives the plain ``nn.Conv2d`` evaluation of the same parameters: the naive
    eager reference that benchmarks and tests compare against.
    """
    for m in model.modules():
        if isinstance(m, (Pointwise, DilatedDepthwise)):
            m.fast = enabled
    return model
