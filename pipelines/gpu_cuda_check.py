"""``python -m pipelines.gpu_cuda_check --out DIR [--smoke]``: LGUN's CUDA inference paths
against CPU fp32, and their speed, in at most ~90 s; writes ``DIR/gpu_check.json``.

For the shipped ``lgun-x2`` and ``lgun-x4``, on one tile (a crop of Set5 ``baby`` when the
benchmark is there, else a smooth synthetic image):

* paths: fp32, bf16 autocast, and fp16 by ``.half()`` of the module and the input, as geosr's
  ``LGUNUpscaler(half=True)`` runs it, each compared with CPU fp32 (max |diff| and PSNR of the
  outputs clipped to [0, 1]) and passed or failed against ``TOLERANCES``;
* speed: model-only output MPix/s at x2 and x4 for 256² and 1024² inputs in each path,
  channels_last, warm-up calls then the median of timed calls (CUDA synchronised).

Only ``lgun`` is imported (geosr needs rasterio, which the GPU machine lacks). ``--smoke`` runs
the same code on CPU with tiny sizes; its numbers only show that the code runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lgun.paths import default_data_root
from lgun.pretrained import load_pretrained

#: path -> (minimum PSNR in dB against CPU fp32, maximum |diff|), on outputs in [0, 1].
#: Untested guesses from the number formats: one uint8 step is 1/255 = 0.0039.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (50.0, 1e-2),  # cuDNN convs use TF32 by default; geosr keeps torch's defaults
    "bf16": (40.0, 0.1),   # 8-bit mantissa in every autocast op
    "fp16": (45.0, 0.05),  # 11-bit mantissa; LGUN's norms and attention scores stay fp32
}
PATHS = tuple(TOLERANCES)
WEIGHTS = ("lgun-x2", "lgun-x4")
BUDGET_S = 90.0


def _runner(model: torch.nn.Module, path: str, device: torch.device
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A float32-in, float32-out callable running ``model`` in ``path`` on ``device``."""
    if path == "fp16":
        half = copy.deepcopy(model).half()
        return lambda x: half(x.half()).float()
    if path == "bf16":
        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return model(x).float()
        return run
    return model


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return 99.0 if mse == 0 else min(99.0, 10 * math.log10(1.0 / mse))


def load_tile(size: int, data_root: Path | None) -> torch.Tensor:
    """(1, 3, size, size) float32 in [0, 1]: Set5 ``baby`` if present, else a smooth image."""
    from PIL import Image

    baby = (data_root or default_data_root()) / "natural/benchmark/Set5/HR/baby.png"
    if baby.is_file():
        with Image.open(baby) as im:
            arr = np.asarray(im.convert("RGB"))[128 : 128 + size, 128 : 128 + size]
    else:
        small = np.random.default_rng(0).integers(0, 256, (size // 8 + 1,) * 2 + (3,), np.uint8)
        arr = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))
    # (H, W, 3) uint8 -> (1, 3, H, W) float32
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 255


@torch.inference_mode()
def compare_paths(model: torch.nn.Module, tile: torch.Tensor, device: torch.device
                  ) -> list[dict[str, Any]]:
    """Each path on ``device`` against CPU fp32 on the same tile."""
    ref = model.cpu()(tile)
    model.to(device)
    rows = []
    for path in PATHS:
        min_psnr, max_abs = TOLERANCES[path]
        row: dict[str, Any] = {"path": path, "min_psnr": min_psnr, "max_abs_limit": max_abs}
        try:
            out = _runner(model, path, device)(tile.to(device)).cpu()
            diff = float((out - ref).abs().max())
            psnr = _psnr(out, ref)
            row.update(max_abs=diff, psnr=round(psnr, 2),
                       passed=bool(psnr >= min_psnr and diff <= max_abs))
        except Exception as e:  # a path that cannot run fails; the others still run
            row.update(passed=False, error=f"{type(e).__name__}: {e}")
        rows.append(row)
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def throughput(model: torch.nn.Module, scale: int, sizes: Sequence[int], device: torch.device,
               *, warmup: int, repeats: int, deadline: float) -> list[dict[str, Any]]:
    """Model-only output MPix/s, channels_last, median of ``repeats`` after ``warmup`` calls."""
    model = model.to(device).to(memory_format=torch.channels_last)
    rows = []
    for size in sizes:
        for path in PATHS:
            row: dict[str, Any] = {"scale": scale, "size": size, "path": path}
            if time.time() > deadline:
                rows.append({**row, "skipped": "time budget spent"})
                continue
            try:
                run = _runner(model, path, device)
                x = torch.rand(1, 3, size, size, device=device)
                x = x.contiguous(memory_format=torch.channels_last)
                for _ in range(warmup):
                    run(x)
                times = []
                for _ in range(repeats):
                    _sync(device)
                    t = time.perf_counter()
                    run(x)
                    _sync(device)
                    times.append(time.perf_counter() - t)
                s = statistics.median(times)
                row.update(seconds=round(s, 5), mpix_s=round((size * scale) ** 2 / s / 1e6, 4))
            except Exception as e:  # out of memory, unsupported kernel: recorded, not fatal
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "device": str(device)}
    if device.type == "cuda":
        env.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return env


def run_check(out: Path, *, device: str = "cuda", smoke: bool = False,
              data_root: Path | None = None, budget_s: float = BUDGET_S) -> dict[str, Any]:
    """Run the check and write ``out`` (JSON); never raises for a failing path."""
    t0 = time.time()
    dev = torch.device(device)
    tile_size, sizes = (16, (16,)) if smoke else (96, (256, 1024))
    warmup, repeats = (1, 1) if smoke else (2, 5)
    report: dict[str, Any] = {"smoke": smoke, "tolerances": TOLERANCES, "tile": tile_size,
                              "models": {}}
    if smoke:
        report["note"] = "smoke run: 'cuda' paths ran on CPU; numbers only show the code runs"
    try:  # a broken device still leaves a report
        report["environment"] = environment(dev)
        tile = load_tile(tile_size, data_root)
        for name in WEIGHTS:
            model = load_pretrained(name)
            scale = model.config.scale
            paths = compare_paths(model, tile, dev)
            speed = throughput(model, scale, sizes, dev, warmup=warmup, repeats=repeats,
                               deadline=t0 + budget_s * 0.9)
            report["models"][name] = {"scale": scale, "paths": paths, "throughput": speed}
            del model
    except Exception as e:
        report["error"] = f"{type(e).__name__}: {e}"
    report["all_passed"] = "error" not in report and all(
        p["passed"] for m in report["models"].values() for p in m["paths"])
    report["seconds"] = round(time.time() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.gpu_cuda_check",
                                description=__doc__.split("\n")[0].strip("`"))
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes")
    a = p.parse_args(argv)
    report = run_check(a.out / "gpu_check.json", device="cpu" if a.smoke else "cuda",
                       smoke=a.smoke)
    print(json.dumps({k: report[k] for k in ("all_passed", "seconds")}))
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
