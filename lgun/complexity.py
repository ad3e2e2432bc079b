"""Parameter and Multi-Add counts of LGUN, comparable to the paper's Table 2.

Usage::

    python -m lgun.complexity --scale 2 --hr 1280x720 [--variant full] [--json]

What is counted: one multiply-add per weight per output element for every
convolution (dense 1x1/3x3, depthwise and dilated depthwise, the SE layers on
their 1x1 pooled maps, the reconstruction conv) and for the attention matmuls
(q k^T and attn @ V in DGSA). Not counted (as in the SR literature): biases,
normalisation, activations, softmax, top-k sorting, PixelShuffle. Counts come from
forward hooks on a model built on the meta device (no memory is allocated), by
each layer's definition; ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2)
runs alongside as an independent cross-check of the total (it also sees the few
zero-padding MACs of the space-to-batch dilated convs).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lgun.model import DGSA, LGUN, VARIANTS, LGUNConfig

#: Table 2 of the paper: scale -> (params K, Multi-Adds G at 1280x720 HR).
PAPER_TABLE2 = {2: (675, 141.1), 3: (684, 63.5), 4: (696, 36.4)}


@dataclass(frozen=True)
class Complexity:
    """Counts for one configuration and input size (Multi-Adds in units of 1)."""

    scale: int
    lr_size: tuple[int, int]  # (H, W) of the input
    params: int
    multi_adds: int
    conv_dense: int
    conv_depthwise: int
    attention: int
    attention_unfused_extra: int  # what summing k stage outputs separately would add
    flop_counter_multi_adds: int  # FlopCounterMode's total, a cross-check


def count(config: LGUNConfig, hr_width: int, hr_height: int) -> Complexity:
    """Count parameters and Multi-Adds for an output of ``hr_width x hr_height``."""
    s = config.scale
    h, w = hr_height // s, hr_width // s
    with torch.device("meta"):
        model = LGUN(config)
        x = torch.empty(1, config.in_channels, h, w)
    params = sum(p.numel() for p in model.parameters())

    dense = depthwise = 0

    def conv_hook(m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal dense, depthwise
        assert isinstance(m, nn.Conv2d)
        kh, kw = m.kernel_size
        macs = out.numel() * (m.in_channels // m.groups) * kh * kw
        if m.groups > 1 and m.groups == m.in_channels:
            depthwise += macs
        else:
            dense += macs

    attention = unfused_extra = 0

    def dgsa_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal attention, unfused_extra
        assert isinstance(m, DGSA)
        b, c, hh, ww = inp[0].shape
        # q k^T and attn @ V, each heads * Dh * Dh * N = c * Dh * N multiply-adds.
        per_matmul = b * c * (c // m.num_heads) * hh * ww
        attention += 2 * per_matmul
        unfused_extra += (max(1, len(m.topk)) - 1) * per_matmul

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, DGSA):
            handles.append(mod.register_forward_hook(dgsa_hook))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    for hd in handles:
        hd.remove()
    return Complexity(
        scale=s,
        lr_size=(h, w),
        params=params,
        multi_adds=dense + depthwise + attention,
        conv_dense=dense,
        conv_depthwise=depthwise,
        attention=attention,
        attention_unfused_extra=unfused_extra,
        flop_counter_multi_adds=counter.get_total_flops() // 2,
    )


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lgun.complexity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    parser.add_argument("--hr", type=_parse_size, default=(1280, 720), help="output size WxH")
    parser.add_argument("--variant", choices=VARIANTS, default="full")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    c = count(LGUNConfig(scale=args.scale, variant=args.variant), *args.hr)
    paper = PAPER_TABLE2.get(args.scale) if args.variant == "full" else None
    if args.json:
        doc = {**c.__dict__, "hr_size": list(args.hr), "variant": args.variant}
        if paper:
            doc["paper"] = {"params_k": paper[0], "multi_adds_g": paper[1]}
        print(json.dumps(doc))
        return 0
    w, h = args.hr
    print(f"LGUN x{c.scale} ({args.variant}), output {w}x{h}, input {c.lr_size[1]}x{c.lr_size[0]}")
    line = f"  params      {c.params / 1e3:9.1f} K"
    if paper:
        line += f"   (paper {paper[0]} K, {100 * (c.params / 1e3 / paper[0] - 1):+.1f}%)"
    print(line)
    line = f"  Multi-Adds  {c.multi_adds / 1e9:9.2f} G"
    if paper and (w, h) == (1280, 720):
        line += f"   (paper {paper[1]} G, {100 * (c.multi_adds / 1e9 / paper[1] - 1):+.1f}%)"
    print(line)
    print(f"    dense convs      {c.conv_dense / 1e9:8.2f} G")
    print(f"    depthwise convs  {c.conv_depthwise / 1e9:8.2f} G")
    print(f"    attention matmul {c.attention / 1e9:8.2f} G  (q k^T and fused attn @ V)")
    print(
        f"    (summing the top-k stages' outputs separately would add "
        f"{c.attention_unfused_extra / 1e9:.2f} G)"
    )
    print("  not counted: biases, norms, activations, softmax, top-k sort, PixelShuffle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
