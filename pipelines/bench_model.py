"""Model-only LGUN throughput on this machine, with a dense-matmul ceiling.

    python -m pipelines.bench_model [--scale 4] [--size 256] [--repeat 3] [--threads N]
                                    [--modes reference,fast,compile] [--device cpu|cuda]
                                    [--json FILE]

Modes (all the same weights; outputs are compared with the reference):

* ``reference``: plain ``nn.Conv2d`` evaluation (1x1 convs by im2col, dilated depthwise
  convs by oneDNN's dilated kernel), NCHW input: the naive eager baseline;
* ``fast``: the exact fast kernels LGUN uses by default (1x1 convs as NHWC matmuls,
  dilated depthwise convs by space-to-batch, channels_last inside);
* ``compile``: ``torch.compile`` of the fast model;
* on CUDA also ``bf16`` and ``fp16`` autocast of the fast model.

Prints seconds per forward pass (median of ``--repeat``), output MPix/s, effective GFLOP/s
(2 x the Multi-Adds of ``lgun.complexity`` for this input size / time), the max abs
difference to the reference, and the same machine's dense fp32 matmul GFLOP/s as a ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from lgun import LGUN, LGUNConfig
from lgun.complexity import count
from lgun.model import set_fast_kernels


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn: Callable[[], torch.Tensor], repeat: int, device: str) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (and compilation)
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def matmul_gflops(device: str, n: int = 2048, repeat: int = 5) -> float:
    """Dense fp32 ``n x n`` matmul throughput: the practical compute ceiling."""
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    secs, _ = _time(lambda: a @ b, repeat, device)
    return 2 * n**3 / secs / 1e9


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LGUN(scale=args.scale).eval().to(device)
    x = torch.rand(1, 3, args.size, args.size, device=device)
    madds = count(LGUNConfig(scale=args.scale), args.size * args.scale, args.size * args.scale)
    flops = 2 * madds.multi_adds
    out_mpix = (args.size * args.scale) ** 2 / 1e6

    modes: dict[str, Callable[[], torch.Tensor]] = {}
    wanted = args.modes.split(",")
    fast_model = model
    if "reference" in wanted:
        ref_model = set_fast_kernels(LGUN(scale=args.scale).eval().to(device), False)
        ref_model.load_state_dict(model.state_dict())
        modes["reference"] = lambda: ref_model(x)
    if "fast" in wanted:
        modes["fast"] = lambda: fast_model(x)
    if "compile" in wanted:
        compiled = torch.compile(fast_model)
        modes["compile"] = lambda: compiled(x)
    if device.startswith("cuda"):
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            if name in wanted:
                def _amp(dtype: torch.dtype = dtype) -> torch.Tensor:
                    with torch.autocast("cuda", dtype=dtype):
                        return fast_model(x)
                modes[name] = _amp

    rows = []
    baseline: torch.Tensor | None = None
    base_secs: float | None = None
    with torch.inference_mode():
        for name, fn in modes.items():
            secs, out = _time(fn, args.repeat, device)
            if baseline is None:
                baseline, base_secs = out.float(), secs
            rows.append({
                "mode": name,
                "seconds": round(secs, 4),
                "out_mpix_per_s": round(out_mpix / secs, 4),
                "gflops_effective": round(flops / secs / 1e9, 2),
                "speedup_vs_first": round((base_secs or secs) / secs, 2),
                "max_abs_diff_vs_first": float((out.float() - baseline).abs().max()),
            })
    ceiling = matmul_gflops(device)
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "scale": args.scale,
        "input": [args.size, args.size],
        "multi_adds_g": round(madds.multi_adds / 1e9, 3),
        "matmul_gflops": round(ceiling, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipelines.bench_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=4)
    p.add_argument("--size", type=int, default=256, help="LR input side")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--modes", default="reference,fast,compile,bf16,fp16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", dest="json_out", default=None, help="also write the result here")
    args = p.parse_args(argv)
    res = run(args)
    print(f"LGUN x{res['scale']} on {res['input'][0]}x{res['input'][1]} input, {res['device']}, "
          f"torch {res['torch']}, {res['threads']} threads; {res['multi_adds_g']} G Multi-Adds")
    print(f"dense fp32 matmul ceiling: {res['matmul_gflops']} GFLOP/s")
    header = ("mode", "s/pass", "MPix/s", "GFLOP/s", "speedup", "max|diff|")
    print(f"{header[0]:<10} " + " ".join(f"{h:>8}" for h in header[1:5]) + f" {header[5]:>10}")
    for r in res["rows"]:
        print(f"{r['mode']:<10} {r['seconds']:>8.3f} {r['out_mpix_per_s']:>8.3f} "
              f"{r['gflops_effective']:>8.1f} {r['speedup_vs_first']:>8.2f} "
              f"{r['max_abs_diff_vs_first']:>10.2e}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
