"""Benchmarks of the geosr pipeline: tiling quality, pipeline overhead, peak memory.

    python -m pipelines.bench_upscale tiling   [--model NAME|PATH] [--scale 4] [--size 320]
                                               [--tilings 256:16,192:16]
    python -m pipelines.bench_upscale overhead [--model NAME|PATH] [--scale 4] [--size 384]
                                               [--no-whole]
    python -m pipelines.bench_upscale rss      [--model nearest|bicubic] [--sizes 2048,8192]
    python -m pipelines.bench_upscale ceiling  [--sizes 4096,8192] [--scales 2,4] [--threads 1,2]

* ``tiling``: real scenes of the shared corpus, LR crops of ``--size`` pixels, are
  super-resolved whole (one tile) and tiled with several (tile_size, overlap)
  pairs through ``geosr.upscale``; prints the tiled-vs-whole PSNR (dB, on the
  written uint8 pixels) and the seam score (``geosr.qa``) of both on the same
  border positions. Without ``--model`` (or with ``--model random``) a full-size
  LGUN with random weights stands in for trained weights: rerun with real
  weights once they ship.
* ``overhead``: end-to-end ``geosr.upscale`` wall time vs the time spent inside
  the model's calls for the same run (pipeline overhead = the rest), plus one
  whole-image model call for reference; also the extra model work due to overlap.
* ``ceiling``: the pipeline's throughput with ``nearest``, streamed vs reference path,
  side by side (``pipelines.bench_ceiling``).
* ``rss``: generates uint8 RGB scenes of each size (streamed to disk), runs
  ``geosr upscale`` on each in a fresh process and prints its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

#: (corpus file, column, row, bands) of the real scenes used by ``tiling``/``overhead``.
SCENES = (
    ("geotiff/rasterio/RGB.byte.tif", 300, 120, (1, 2, 3)),
    ("geotiff/titiler/TCI.tif", 380, 380, (1, 2, 3)),
    ("geotiff/opengeos-data/naip/m_4709963_se_14_1_20200831.tif", 300, 200, (1, 2, 3)),
)
TILINGS = ((128, 8), (128, 16), (192, 16), (256, 16), (256, 32))
#: ``overhead`` crops the corpus scene (1098²) up to this side and generates larger scenes.
GENERATED_ABOVE = 1024


def _data_root() -> Path:
    from geosr.testing import data_root

    root = data_root()
    if root is None:
        sys.exit("shared data not found: set GEOSR_DATA")
    return root


def _model(spec: str | None, scale: int, seed: int = 0) -> Any:
    import torch

    import lgun
    from geosr.models import LGUNUpscaler, load_model

    if spec in (None, "random"):
        torch.manual_seed(seed)
        return LGUNUpscaler(lgun.LGUN(scale=scale), name=f"lgun-random-x{scale}", device="cpu")
    return load_model(spec, scale, device="cpu")


def _crop(src_path: Path, col: int, row: int, size: int, bands: tuple[int, ...],
          dst: Path) -> Path:
    with rasterio.open(src_path) as src:
        w = Window(col, row, min(size, src.width - col), min(size, src.height - row))
        profile = src.profile
        profile.update(width=int(w.width), height=int(w.height), count=len(bands),
                       transform=src.transform @ Affine.translation(w.col_off, w.row_off),
                       driver="GTiff", tiled=False, compress="deflate")
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        with rasterio.open(dst, "w", **profile) as out:
            out.write(src.read(list(bands), window=w))
    return dst


def _psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def _parse_tilings(text: str) -> tuple[tuple[int, int], ...]:
    """``"256:16,192:16"`` -> ((256, 16), (192, 16))."""
    return tuple((int(t), int(o)) for t, o in (item.split(":") for item in text.split(",")))


def cmd_tiling(args: argparse.Namespace) -> dict[str, Any]:
    from geosr.api import upscale
    from geosr.models import describe_model
    from geosr.qa import seam_score
    from geosr.tiling import make_grid

    root = _data_root()
    model = _model(args.model, args.scale)
    s = args.scale
    neural = describe_model(model, s).neural  # the run's grid (networks grow tiles)
    tilings = _parse_tilings(args.tilings) if args.tilings else TILINGS
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        for file, col, row, bands in SCENES:
            lr = _crop(root / file, col, row, args.size, bands, Path(tmp) / "lr.tif")
            with rasterio.open(lr) as ds:
                h, w = ds.height, ds.width
            whole_path = Path(tmp) / "whole.tif"
            t0 = time.perf_counter()
            upscale(lr, whole_path, scale=s, model=model, tile_size=max(h, w, 16), overlap=0,
                    overwrite=True)
            t_whole = time.perf_counter() - t0
            with rasterio.open(whole_path) as ds:
                whole = ds.read()
            for tile, overlap in tilings:
                path = Path(tmp) / "tiled.tif"
                t0 = time.perf_counter()
                upscale(lr, path, scale=s, model=model, tile_size=tile, overlap=overlap,
                        overwrite=True)
                t_tiled = time.perf_counter() - t0
                with rasterio.open(path) as ds:
                    tiled = ds.read()
                grid = make_grid(h, w, tile, overlap, neural=neural, scale=s)
                r_pos, c_pos = grid.border_positions(s)
                rec = {
                    "scene": Path(file).name, "lr": [h, w], "tile_size": tile,
                    "overlap": overlap, "tiles": len(grid),
                    "psnr_tiled_vs_whole_db": round(_psnr(tiled, whole), 2),
                    "seam_tiled": round(seam_score(tiled.astype(float), r_pos, c_pos, s), 3),
                    "seam_whole": round(seam_score(whole.astype(float), r_pos, c_pos, s), 3),
                    "seconds_tiled": round(t_tiled, 1), "seconds_whole": round(t_whole, 1),
                }
                rows_out.append(rec)
                print(json.dumps(rec), flush=True)
    print(f"\nmodel: {model.name} ({model.provenance}), scale x{s}, LR crops {args.size}px")
    print(f"{'tile':>5} {'overlap':>7} {'min PSNR dB':>12} {'mean PSNR dB':>13} "
          f"{'seam tiled':>11} {'seam whole':>11}")
    for tile, overlap in tilings:
        sel = [r for r in rows_out if (r["tile_size"], r["overlap"]) == (tile, overlap)]
        ps = [r["psnr_tiled_vs_whole_db"] for r in sel]
        print(f"{tile:>5} {overlap:>7} {min(ps):>12.2f} {np.mean(ps):>13.2f} "
              f"{np.mean([r['seam_tiled'] for r in sel]):>11.3f} "
              f"{np.mean([r['seam_whole'] for r in sel]):>11.3f}")
    return {"model": model.name, "rows": rows_out}


def cmd_overhead(args: argparse.Namespace) -> dict[str, Any]:
    from geosr.api import upscale
    from geosr.models import describe_model
    from geosr.options import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE
    from geosr.tiling import make_grid

    model = _model(args.model, args.scale)
    file, col, row, bands = SCENES[1]
    with tempfile.TemporaryDirectory() as tmp:
        if args.size <= GENERATED_ABOVE:  # a crop of a real scene
            lr = _crop(_data_root() / file, col, row, args.size, bands, Path(tmp) / "lr.tif")
        else:  # larger than the corpus scene: the generated texture of ``rss``
            file = "generated"
            lr = Path(tmp) / "lr.tif"
            _write_scene(lr, args.size)
        with rasterio.open(lr) as ds:
            h, w = ds.height, ds.width
            model(ds.read(window=((0, 32), (0, 32))).astype(np.float32)[None] / 255.0)  # warm-up
        model.model_seconds = 0.0
        res = upscale(lr, Path(tmp) / "out.tif", scale=args.scale, model=model)
        e2e, inside = res.seconds, res.model_seconds
        whole = math.nan
        if args.whole:
            with rasterio.open(lr) as ds:
                x = ds.read().astype(np.float32)[None] / 255.0
            t0 = time.perf_counter()
            model(x)
            whole = time.perf_counter() - t0
    grid = make_grid(h, w, DEFAULT_TILE_SIZE, DEFAULT_OVERLAP, scale=args.scale,
                     neural=describe_model(model, args.scale).neural)
    work = sum(t.rows.read_size * t.cols.read_size for t in grid) / (h * w)
    out = {
        "model": model.name, "scene": f"{Path(file).name} {h}x{w}", "scale": args.scale,
        "tile_size": DEFAULT_TILE_SIZE, "overlap": DEFAULT_OVERLAP, "tiles": len(grid),
        "end_to_end_s": round(e2e, 2), "model_calls_s": round(inside, 2),
        "pipeline_overhead_pct": round(100 * (e2e - inside) / e2e, 1),
        "whole_image_model_call_s": None if math.isnan(whole) else round(whole, 2),
        "overlap_work_factor": round(work, 3),
        "torch_threads": __import__("torch").get_num_threads(),
    }
    print(json.dumps(out, indent=2))
    return out


def _write_scene(path: Path, size: int) -> None:
    """A size x size uint8 RGB scene with texture (``bench_ceiling.write_texture``)."""
    from pipelines.bench_ceiling import write_texture

    write_texture(path, size, bands=3, dtype="uint8", level=128, amplitude=60, step=20, noise=8)


def cmd_rss(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(v) for v in args.sizes.split(",")]
    out: dict[str, Any] = {"model": args.model, "scale": args.scale, "runs": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in sizes:
            src = Path(tmp) / f"scene_{size}.tif"
            _write_scene(src, size)
            cmd = [sys.executable, "-m", "pipelines.bench_upscale", "_child", str(src),
                   str(Path(tmp) / f"out_{size}.tif"), "--scale", str(args.scale),
                   "--model", args.model]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rec = json.loads(res.stdout.strip().splitlines()[-1])
            rec["input"] = f"{size}x{size}x3 uint8"
            rec["output_mpix"] = round((size * args.scale) ** 2 / 1e6, 1)
            out["runs"].append(rec)
            print(json.dumps(rec), flush=True)
            for p in Path(tmp).iterdir():
                p.unlink()
    peaks = [r["peak_rss_mib"] for r in out["runs"]]
    out["rss_growth_mib"] = round(peaks[-1] - peaks[0], 1)
    print(f"peak RSS {peaks} MiB; growth from the smallest to the largest scene: "
          f"{out['rss_growth_mib']} MiB")
    return out


def _peak_rss_mib() -> float:
    """Peak RSS of this process image.

    ``VmHWM`` belongs to the address space that ``execve`` creates, whereas Linux keeps
    ``ru_maxrss`` across ``execve``: a child forked from a parent that has just written a
    large scene would report the parent's RSS at fork time.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_child(args: argparse.Namespace) -> None:
    from geosr.api import upscale

    res = upscale(args.src, args.dst, scale=args.scale, model=args.model)
    peak = _peak_rss_mib()
    print(json.dumps({"seconds": round(res.seconds, 1), "tiles": res.tiles,
                      "peak_rss_mib": round(peak, 1)}))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ceiling"]:
        from pipelines.bench_ceiling import main as ceiling

        ceiling(argv[1:])
        return
    p = argparse.ArgumentParser(prog="python -m pipelines.bench_upscale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ceiling", help="streamed vs reference pipeline throughput (own options)")
    t = sub.add_parser("tiling", help="tiled vs whole-image PSNR and seam scores")
    t.add_argument("--model", default=None, help="weights name/path, or 'random'")
    t.add_argument("--scale", type=int, default=4)
    t.add_argument("--size", type=int, default=320, help="LR crop side")
    t.add_argument("--tilings", default=None,
                   help="TILE:OVERLAP pairs, comma-separated (default: the built-in sweep)")
    o = sub.add_parser("overhead", help="model-only vs end-to-end time")
    o.add_argument("--model", default=None)
    o.add_argument("--scale", type=int, default=4)
    o.add_argument("--size", type=int, default=384,
                   help=f"LR side; above {GENERATED_ABOVE} a generated texture, not a crop")
    o.add_argument("--whole", action=argparse.BooleanOptionalAction, default=True,
                   help="also time one whole-image model call (memory grows with the size)")
    r = sub.add_parser("rss", help="peak RSS vs scene size")
    r.add_argument("--model", default="nearest")
    r.add_argument("--scale", type=int, default=2)
    r.add_argument("--sizes", default="2048,8192")
    r.add_argument("--tmp", default=None, help="folder for the generated scenes")
    c = sub.add_parser("_child")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--scale", type=int, default=2)
    c.add_argument("--model", default="nearest")
    for sp in (t, o, r):
        sp.add_argument("--json", dest="json_out", default=None, help="also write results here")
    args = p.parse_args(argv)
    if args.cmd == "_child":
        cmd_child(args)
        return
    result = {"tiling": cmd_tiling, "overhead": cmd_overhead, "rss": cmd_rss}[args.cmd](args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
