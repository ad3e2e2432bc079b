"""LGUN: Local Global Union Network for lightweight single-image super-resolution.

The network of section 3 of the paper: a 3x3 head conv, ``num_blocks`` LGU blocks
(MLHA mixer in the shallow half, DGSA mixer in the deep half, each followed by an
FFN with a spatial awareness layer), a long skip, and a 3x3 conv + PixelShuffle
reconstruction::

    F = head(I_LR);  I_SR = REC(NLM(F) + F)

Where the paper is silent we follow the reading that matches its Table 2 parameter
counts (see ``docs``/DESIGN.md): 8 heads, a 3x3 depthwise conv on qkv, FFN expansion
2.5, SE reduction 16, LKCS dilations 2/3/4 as in MAN's multi-scale large-kernel
attention.

Tensors are NCHW (channels_last memory format works too), values in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lgun.layers import DilatedDepthwise, LayerNorm2d, Pointwise

#: Ablation variants of the paper's Table 3 (plus "full", the paper's model).
VARIANTS = (
    "full",
    "no-mlha",  # (a) DGSA in every block
    "no-dgsa",  # (a) MLHA in every block
    "no-stf",  # (b) MLHA without split-transform-fusion: one LKCS on all channels
    "no-topk",  # (c) dense channel attention
    "single-topk",  # (c) one top-k stage (k = first ratio)
    "identical-lkcs",  # (d) LKCS (5, 7) in all three branches
)

#: (k1, k2, dilation of k2) per LKCS branch, as in MAN's MLKA.
LKCS_KERNELS: tuple[tuple[int, int, int], ...] = ((3, 5, 2), (5, 7, 3), (7, 9, 4))
IDENTICAL_LKCS_KERNELS: tuple[tuple[int, int, int], ...] = ((5, 7, 3),) * 3


@dataclass(frozen=True)
class LGUNConfig:
    """Hyper-parameters of an LGUN network; saved next to every set of weights.

    Attributes:
        scale: Upscaling factor (2, 3 or 4).
        in_channels: Image channels (3 for RGB).
        channels: Feature width C.
        num_blocks: Number of LGU blocks; the first half use MLHA, the rest DGSA.
        num_heads: DGSA heads (head dim = channels // num_heads).
        ffn_expansion: FFN hidden width factor.
        se_reduction: Squeeze-excitation reduction in the SAL.
        topk_ratios: Multi-stage token selection ratios of the head dim.
        variant: One of ``VARIANTS`` (Table 3 ablations).
    """

    scale: int = 2
    in_channels: int = 3
    channels: int = 64
    num_blocks: int = 16
    num_heads: int = 8
    ffn_expansion: float = 2.5
    se_reduction: int = 16
    topk_ratios: tuple[float, ...] = field(default=(1 / 2, 2 / 3, 3 / 4))
    variant: str = "full"

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {self.scale}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.channels % self.num_heads or self.channels % 4:
            raise ValueError("channels must be divisible by num_heads and by 4")
        if not all(0 < r <= 1 for r in self.topk_ratios) or not self.topk_ratios:
            raise ValueError(f"topk_ratios must be non-empty, in (0, 1]: {self.topk_ratios}")
        object.__setattr__(self, "topk_ratios", tuple(float(r) for r in self.topk_ratios))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["topk_ratios"] = list(self.topk_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LGUNConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown LGUN config keys: {sorted(unknown)}")
        d = dict(d)
        if "topk_ratios" in d:
            d["topk_ratios"] = tuple(d["topk_ratios"])
        return cls(**d)

    def with_scale(self, scale: int) -> LGUNConfig:
        return replace(self, scale=scale)


class LKCS(nn.Module):
    """Large kernel conv sequence: DW k1 -> DW dilated k2 -> 1x1."""

    def __init__(self, channels: int, k1: int, k2: int, dilation: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, k1, padding=k1 // 2, groups=channels)
        self.dw_dilated = DilatedDepthwise(channels, k2, dilation)
        self.pw = Pointwise(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw_dilated(self.dw(x)))


class MLHA(nn.Module):
    """Multi-order local hierarchical aggregation (Linear - MLHA - Linear).

    Split F_in into 4 groups; y1 = x1, y_i = LKCS_i(x_i + y_{i-1}); the output is
    proj_out(F_in * concat(y1..y4)). Without STF a single LKCS sees all channels.
    """

    def __init__(
        self,
        channels: int,
        *,
        stf: bool = True,
        kernels: tuple[tuple[int, int, int], ...] = LKCS_KERNELS,
    ) -> None:
        super().__init__()
        self.proj_in = Pointwise(channels, channels)
        self.stf = stf
        if stf:
            self.groups = len(kernels) + 1
            width = channels // self.groups
            self.branches = nn.ModuleList(LKCS(width, *k) for k in kernels)
        else:
            self.groups = 1
            self.branches = nn.ModuleList([LKCS(channels, *IDENTICAL_LKCS_KERNELS[0])])
        self.proj_out = Pointwise(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_in = self.proj_in(x)
        if not self.stf:
            return self.proj_out(f_in * self.branches[0](f_in))
        xs = torch.chunk(f_in, self.groups, dim=1)  # groups x (B, C/groups, H, W)
        ys = [xs[0]]
        for xi, branch in zip(xs[1:], self.branches, strict=True):
            ys.append(branch(xi + ys[-1]))
        return self.proj_out(f_in * torch.cat(ys, dim=1))


class DGSA(nn.Module):
    """Dynamic global sparse attention: channel attention with multi-stage top-k.

    Per head, A = softmax-normalised (q k^T) * temperature is a Dh x Dh matrix (q, k
    L2-normalised over tokens), so the cost is linear in the number of pixels. For
    each ratio r, only the top ``int(Dh * r)`` entries of every row are
    kept (others -inf) before the softmax; the stage outputs are summed with
    learnable weights (init 0.1). Because every stage multiplies the same V, the
    weighted sum of the Dh x Dh softmax matrices is formed first and V is multiplied
    once: mathematically identical to summing the stage outputs, and ~k times
    cheaper on large images. One sort serves all stages.
    """

    def __init__(
        self, channels: int, num_heads: int, topk_ratios: tuple[float, ...] | None
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = channels // num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = Pointwise(channels, channels * 3)
        self.qkv_dw = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3)
        self.proj_out = Pointwise(channels, channels)
        if topk_ratios is None:
            self.topk: tuple[int, ...] = ()
            self.stage_weights = None
        else:
            self.topk = tuple(max(1, int(head_dim * r)) for r in topk_ratios)
            self.stage_weights = nn.Parameter(torch.full((len(self.topk),), 0.1))

    def attention_matrix(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Combined (B, heads, Dh, Dh) attention from q, k of shape (B, heads, Dh, N)."""
        q = F.normalize(q.float(), dim=-1)
        k = F.normalize(k.float(), dim=-1)
        return self.combine_stages((q @ k.transpose(-2, -1)) * self.temperature)

    def combine_stages(self, attn: torch.Tensor,
                       stage_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted sum of the top-k masked softmaxes of (B, heads, Dh, Dh) fp32 scores.

        ``stage_weights`` replaces the module's own (a detached copy of them, when a training
        step builds this small graph apart from the model's: ``lgun.fast_ops``).
        """
        if not self.topk:
            return attn.softmax(dim=-1)
        if stage_weights is None:
            stage_weights = self.stage_weights
        assert stage_weights is not None
        # One descending sort shared by all stages; rank[i, j] = position of j in row i.
        order = attn.argsort(dim=-1, descending=True)
        rank = torch.empty_like(order).scatter_(
            -1, order, torch.arange(attn.shape[-1], device=attn.device).expand_as(order)
        )
        combined = torch.zeros_like(attn)
        for w, kk in zip(stage_weights, self.topk, strict=True):
            # -inf cannot give NaN: rank 0 (the row maximum) is always kept.
            masked = attn.masked_fill(rank >= kk, float("-inf"))
            combined = combined + w.float() * masked.softmax(dim=-1)
        return combined

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv_dw(self.qkv(x))
        q, k, v = qkv.chunk(3, dim=1)  # 3 x (B, C, H, W)
        heads = self.num_heads
        # (B, C, H, W) -> (B, heads, Dh, N)
        q = q.reshape(b, heads, c // heads, h * w)
        k = k.reshape(b, heads, c // heads, h * w)
        v = v.reshape(b, heads, c // heads, h * w)
        # The Dh x Dh attention is computed in fp32 (tiny); V stays in its dtype.
        attn = self.attention_matrix(q, k).to(v.dtype)
        out = attn @ v  # (B, heads, Dh, N)
        return self.proj_out(out.reshape(b, c, h, w))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class FFN(nn.Module):
    """Linear -> SAL (3x3 depthwise + SE) -> GELU -> Linear."""

    def __init__(self, channels: int, expansion: float, se_reduction: int) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.fc1 = Pointwise(channels, hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.se = SqueezeExcitation(hidden, se_reduction)
        self.fc2 = Pointwise(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.se(self.dw(self.fc1(x)))))


class LGUBlock(nn.Module):
    """X' = X + Mixer(LN(X)); X'' = X' + FFN(LN(X'))."""

    def __init__(self, mixer: nn.Module, channels: int, cfg: LGUNConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(channels)
        self.mixer = mixer
        self.norm2 = LayerNorm2d(channels)
        self.ffn = FFN(channels, cfg.ffn_expansion, cfg.se_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _make_mixer(cfg: LGUNConfig, deep: bool) -> nn.Module:
    v = cfg.variant
    use_dgsa = (deep and v != "no-dgsa") or v == "no-mlha"
    if use_dgsa:
        ratios: tuple[float, ...] | None = cfg.topk_ratios
        if v == "no-topk":
            ratios = None
        elif v == "single-topk":
            ratios = cfg.topk_ratios[:1]
        return DGSA(cfg.channels, cfg.num_heads, ratios)
    kernels = IDENTICAL_LKCS_KERNELS if v == "identical-lkcs" else LKCS_KERNELS
    return MLHA(cfg.channels, stf=v != "no-stf", kernels=kernels)


class LGUN(nn.Module):
    """Local Global Union Network.

    Args:
        config: A full ``LGUNConfig``; or give its fields as keywords instead.
        **kwargs: ``LGUNConfig`` fields (``scale``, ``variant``, ...).

    Example:
        >>> model = LGUN(scale=4)
        >>> model(torch.rand(1, 3, 17, 23)).shape
        torch.Size([1, 3, 68, 92])
    """

    def __init__(self, config: LGUNConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("give either config or keyword fields, not both")
        cfg = config if config is not None else LGUNConfig(**kwargs)
        self.config = cfg
        c = cfg.channels
        self.head = nn.Conv2d(cfg.in_channels, c, 3, padding=1)
        half = cfg.num_blocks // 2
        self.blocks = nn.Sequential(
            *(LGUBlock(_make_mixer(cfg, deep=i >= half), c, cfg) for i in range(cfg.num_blocks))
        )
        self.rec = nn.Sequential(
            nn.Conv2d(c, cfg.in_channels * cfg.scale**2, 3, padding=1),
            nn.PixelShuffle(cfg.scale),
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Super-resolve a (B, in_channels, H, W) batch to (B, in_channels, sH, sW)."""
        # NHWC inside: the 1x1 convs are NHWC matmuls, and oneDNN's depthwise kernels
        # (forward and backward) are 1.5-2.5x faster on channels_last tensors.
        x = x.contiguous(memory_format=torch.channels_last)
        f = self.head(x)
        return self.rec(self.blocks(f) + f).contiguous()
