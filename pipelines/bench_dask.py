"""Benchmark of geosr's Dask scale-out: workers, threads vs processes, scheduler overhead.

    python -m pipelines.bench_dask [--size 384] [--scale 2] [--tile-size 96] [--overlap 8]
                                   [--models bicubic,tiny-lgun,lgun-x2] [--repeat 1]

A synthetic uint8 RGB scene of ``--size`` pixels is upscaled by ``geosr.api.upscale``
through each executor, one tile per task; the cluster is started and warmed up on
a small scene (imports, model loaded on the workers) before timing, and each figure
is the best of ``--repeat`` runs:

* ``local``: the in-process loop (no Dask), the reference;
* ``processes 1x1`` / ``processes 2x1``: a ``LocalCluster`` of 1 or 2 worker
  processes with one thread each, TCP on loopback (``geosr upscale --workers N``);
* ``threads 1x2``: one in-process worker with two threads (no pickling, shared GIL).

Models: ``bicubic`` (Pillow), ``tiny-lgun`` (a random 2-block, 16-channel LGUN),
``lgun-x2`` (the shipped full-size weights, loaded by name on each worker), ``nearest``
(almost free); torch runs one thread per task everywhere. Every output is compared
with the local one (``equal``, or the largest difference in DN and how many pixels
differ). The scheduler overhead per tile is measured with ``nearest`` and one
tile per task: (wall time on one worker process - local wall time) / tiles; it
includes sending the tile to the worker and its upscaled result back.

With ``lgun-x2`` among the models, it also times one tile of it inside a worker
started by ``geosr.distributed.connect`` (``MALLOC_TRIM_THRESHOLD_`` unset) and inside
a worker of a default ``LocalCluster`` (dask sets it to 64 KiB).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

RUNS = (("local", None), ("processes 1x1", (1, 1, True)), ("processes 2x1", (2, 1, True)),
        ("threads 1x2", (1, 2, False)))


def _machine() -> str:
    import torch

    torch.set_num_threads(1)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()}-core {platform.machine()} CPU, {mem:.0f} GiB, {gpu}, "
            f"torch {torch.__version__}")


def _model(name: str, scale: int) -> Any:
    if name == "tiny-lgun":
        from geosr.testing import tiny_lgun

        return tiny_lgun(scale)
    return name


def _tile_seconds(tile: int) -> float:
    """Mean seconds of one lgun-x2 call on a (1, 3, tile, tile) batch, in this process."""
    import torch

    from geosr.models import load_model

    torch.set_num_threads(1)
    m = load_model("lgun-x2", 2, device="cpu")
    x = np.random.default_rng(0).random((1, 3, tile, tile), dtype=np.float32)
    m(x)
    t0 = time.perf_counter()
    for _ in range(3):
        m(x)
    return (time.perf_counter() - t0) / 3


def _malloc_trim_ab(tile: int) -> None:
    import logging

    from distributed import Client, LocalCluster

    from geosr.distributed import connect

    print(f"\nlgun-x2, one {tile} x {tile} tile inside one worker process (mean of 3 calls):")
    saved = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    try:
        # geosr's cluster first: a dask nanny leaves the variable in this process's env.
        with connect(workers=1) as c:
            ours = c.client.submit(_tile_seconds, tile, pure=False).result()
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                          silence_logs=logging.ERROR) as lc, Client(lc) as client:
            theirs = client.submit(_tile_seconds, tile, pure=False).result()
    finally:
        if saved is None:
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        else:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = saved
    print(f"  geosr workers (MALLOC_TRIM_THRESHOLD_ unset)   {ours:6.2f} s")
    print(f"  default LocalCluster (64 KiB)                 {theirs:6.2f} s")


def _timed(src: Path, dst: Path, *, model: Any, scale: int, cluster: Any, repeat: int,
           **tiling: int) -> float:
    from geosr.api import upscale

    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        upscale(src, dst, scale=scale, model=model, cluster=cluster, overwrite=True, **tiling)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipelines.bench_dask", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--tile-size", type=int, default=96)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--models", default="bicubic,tiny-lgun,lgun-x2")
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args(argv)

    from geosr.distributed import connect
    from geosr.testing import smooth_field, write_raster
    from geosr.tiling import make_grid

    s = a.scale
    tiling = {"tile_size": a.tile_size, "overlap": a.overlap, "batch_size": 1}
    # The requested grid: per-tile costs are measured with nearest, whose tiles never grow.
    n_tiles = len(make_grid(a.size, a.size, a.tile_size, a.overlap, neural=False, scale=s))
    mpix = (a.size * s) ** 2 / 1e6
    models = [m for m in a.models.split(",") if m]
    print(f"machine: {_machine()}")
    print(f"scene: {a.size} x {a.size} x 3 uint8, x{s} -> {mpix:.2f} MPix, tile {a.tile_size}"
          f" overlap {a.overlap}, {n_tiles} tiles, one tile per task, best of {a.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        data = (smooth_field((3, a.size, a.size), seed=0) * 255).astype(np.uint8)
        src = write_raster(d / "scene.tif", data)
        warm = write_raster(d / "warm.tif", data[:, : 2 * a.tile_size, : 2 * a.tile_size])
        seconds: dict[tuple[str, str], float] = {}
        refs: dict[str, np.ndarray] = {}
        print(f"\n{'model':<10} {'executor':<15} {'start s':>8} {'run s':>8} {'MPix/s':>8} "
              f"{'vs local':>9}  output vs local")
        for label, spec in RUNS:
            t0 = time.perf_counter()
            ctx = (connect(workers=spec[0], threads_per_worker=spec[1], processes=spec[2])
                   if spec else None)
            cluster = ctx.__enter__() if ctx else None
            start = time.perf_counter() - t0
            try:
                for name in [*models, "nearest"]:
                    model = _model(name, s)
                    if cluster is None and isinstance(model, str):
                        # Locally, load shipped weights once, outside the timing (workers
                        # load them once, at warm-up).
                        from geosr.models import load_model

                        model = load_model(model, s, device="cpu")
                    dst = d / f"{name}-{label.replace(' ', '_')}.tif"
                    # Warm-up: imports, model loading on every worker.
                    _timed(warm, d / "warm_x.tif", model=model, scale=s, cluster=cluster,
                           repeat=1, **tiling)
                    t = _timed(src, dst, model=model, scale=s, cluster=cluster,
                               repeat=a.repeat, **tiling)
                    seconds[(name, label)] = t
                    with rasterio.open(dst) as ds:
                        out = ds.read()
                    if label == "local":
                        refs[name] = out
                    diff = np.abs(out.astype(np.int64) - refs[name])
                    same = "equal" if not diff.any() else (
                        f"max {int(diff.max())} DN, {int((diff > 0).sum())} px")
                    if name in models:
                        speed = seconds[(name, "local")] / t
                        print(f"{name:<10} {label:<15} {start:>8.2f} {t:>8.2f} "
                              f"{mpix / t:>8.2f} {speed:>8.2f}x  {same}", flush=True)
                    elif diff.any():
                        print(f"{name} on {label}: {same} from the local output")
            finally:
                if ctx:
                    ctx.__exit__(None, None, None)
        print("\nscheduler overhead per tile (nearest, one tile per task, vs local loop):")
        base = seconds[("nearest", "local")]
        for label, _ in RUNS[1:]:
            extra = (seconds[("nearest", label)] - base) / n_tiles
            print(f"  {label:<15} {extra * 1e3:7.2f} ms/tile  (local {base / n_tiles * 1e3:.2f}"
                  f" ms/tile, {label} {seconds[('nearest', label)] / n_tiles * 1e3:.2f} ms/tile)")
    if "lgun-x2" in models:
        _malloc_trim_ab(a.tile_size)


if __name__ == "__main__":
    main()
