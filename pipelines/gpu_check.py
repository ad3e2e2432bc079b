"""``python -m pipelines.gpu_check``: geosr end to end on a GPU machine, in at most ~3 minutes.

    python -m pipelines.gpu_check prepare                 # here: the wheels that travel, in .whl/
    python -m pipelines.gpu_check --out DIR [--size 4096] [--scale 4] [--dry-run]

On a generated ``--size``² 4-band uint16 GeoTIFF (deflate, tiled 512, written window by window),
with the default model of the scale (what ``geosr upscale`` picks):

1. ``reference``: a 512² crop of the scene through ``geosr upscale --device cpu`` and through
   ``--device cuda``; the two outputs are compared (PSNR over the uint16 range, max |diff| as a
   share of it) against the CUDA fp32 tolerance of ``pipelines.gpu_cuda_check.TOLERANCES``;
2. ``device``: the whole scene through ``geosr upscale --device cuda`` (in this process, through
   the CLI's own ``run``, so the GPU memory peak can be read): wall seconds, output MPix/s;
3. ``gpu_workers``: the whole scene through ``geosr upscale --gpu-workers`` (a subprocess:
   dask-cuda's ``LocalCUDACluster``, one worker per GPU), compared with the ``device`` output;
4. ``model_only``: the loaded model on batches of the plan's tile size, CUDA synchronised:
   output MPix/s, to set the end-to-end figures against.

Everything goes to ``DIR/gpu_check_geosr.json``. ``--dry-run`` runs the same code with
``cpu`` in place of ``cuda`` and ``--workers 1`` in place of ``--gpu-workers``, on a 128² scene
with 64² crops: it is a test in CI, so the GPU run cannot fail on a path that was not run.

The GPU machine has torch, numpy, xarray, pandas, numba, click and the rest of dask's small
dependencies, but not rasterio, dask, distributed or dask-cuda: ``prepare`` downloads the
smallest set of wheels that makes geosr and ``--gpu-workers`` run there (``WHEELS``) and
checks that they and the working tree fit the 64 MiB that travel.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WHEEL_DIR = REPO / ".whl"  # /.whl/ is gitignored: it travels as `carry`
RESULT_NAME = "gpu_check_geosr.json"
#: Wheels missing on the GPU machine (its image has click, cloudpickle, toolz, msgpack, psutil,
#: pyyaml, sortedcontainers, jinja2, fsspec, pandas, numba, cuda-core, nvidia-ml-py, attrs,
#: certifi, pyparsing, packaging). shapely and pyproj are left behind: only ``--aoi`` needs them.
WHEELS = ("rasterio==1.4.4", "affine==3.0.1", "cligj==0.7.2", "click-plugins==1.1.1.2",
          "dask==2026.8.0", "distributed==2026.8.0", "tornado==6.6.1", "zict==3.0.0",
          "tblib==3.2.2", "partd==1.4.2", "locket==1.0.0", "cryptography==48.0.0",
          "cffi==2.0.0", "pycparser==3.0", "dask-cuda==26.10.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TRAVEL_LIMIT = 64 << 20
CROP = 512


def prepare(dest: Path = WHEEL_DIR) -> int:
    """Download ``WHEELS`` for CPython 3.12 on x86-64 Linux into ``dest``; check the size."""
    dest.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + list(WHEELS), check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                             capture_output=True).stdout.split(b"\0")
    tree = sum((REPO / p.decode()).stat().st_size for p in tracked
               if p and (REPO / p.decode()).is_file())
    wheels = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"wheels {wheels / 2**20:.1f} MiB + tracked tree {tree / 2**20:.1f} MiB "
          f"= {(wheels + tree) / 2**20:.1f} MiB (limit {TRAVEL_LIMIT / 2**20:.0f})")
    return 0 if wheels + tree < TRAVEL_LIMIT else 1


def make_scene(path: Path, size: int, bands: int = 4) -> Path:
    """A ``size``² ``bands``-band uint16 scene with structure at every scale, written by
    512-row strips so that memory stays small at any size."""
    import rasterio
    from affine import Affine

    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands,
               "dtype": "uint16", "crs": "EPSG:32633", "compress": "deflate", "tiled": True,
               "blockxsize": 512, "blockysize": 512,
               "transform": Affine(10.0, 0, 500000.0, 0, -10.0, 5200000.0)}
    rng = np.random.default_rng(0)
    freqs = rng.uniform(0.002, 0.2, size=(bands, 6, 2))
    phases = rng.uniform(0, 2 * np.pi, size=(bands, 6))
    x = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 512):
            y = np.arange(r0, min(r0 + 512, size), dtype=np.float32)[:, None]
            for b in range(bands):
                f = sum(np.sin(fx * x[None, :] + fy * y + ph)
                        for (fx, fy), ph in zip(freqs[b], phases[b], strict=True))
                edges = ((x[None, :] // 97 + y // 61) % 2) * 0.8  # sharp block edges
                v = (f / 6 + edges + 1.0) / 2.8 * 9000 + 300
                dst.write(v.astype(np.uint16), b + 1,
                          window=((r0, r0 + v.shape[0]), (0, size)))
    return path


def crop(src: Path, dst: Path, side: int) -> Path:
    """The central ``side``² window of ``src`` as its own GeoTIFF (window transform)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        off = (ds.width - side) // 2
        win = Window(off, off, side, side)
        profile = dict(ds.profile, width=side, height=side,
                       transform=ds.window_transform(win))
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read(window=win))
    return dst


def geosr_cli(args: list[str], *, in_process: bool) -> tuple[int, float, str]:
    """``geosr ARGS``: exit status, wall seconds and stderr's last line."""
    t0 = time.perf_counter()
    if in_process:
        from geosr.cli import run

        status, err = run(args), ""
    else:
        p = subprocess.run([sys.executable, "-m", "geosr.cli", *args], cwd=REPO,
                           capture_output=True, text=True)
        status, err = p.returncode, (p.stderr.strip().splitlines() or [""])[-1]
    return status, time.perf_counter() - t0, err


def compare(a_path: Path, b_path: Path) -> dict[str, Any]:
    """PSNR over the uint16 range and max |diff| (share of the range) of two outputs."""
    import rasterio

    with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
        x, y = a.read().astype(np.float64), b.read().astype(np.float64)
    if x.shape != y.shape:
        return {"shape_a": list(x.shape), "shape_b": list(y.shape), "equal_shape": False}
    mse = float(np.mean((x - y) ** 2))
    return {"equal_shape": True, "identical": bool(np.array_equal(x, y)),
            "psnr_db": None if mse == 0 else 10 * math.log10(65535.0 ** 2 / mse),  # None: equal
            "max_abs_diff": float(np.abs(x - y).max() / 65535.0)}


def within_tolerance(cmp: dict[str, Any]) -> bool:
    """Whether a device-vs-CPU comparison meets the CUDA fp32 tolerance."""
    from pipelines.gpu_cuda_check import TOLERANCES

    min_psnr, max_diff = TOLERANCES["fp32"]
    if not cmp.get("equal_shape"):
        return False
    return cmp["identical"] or (cmp["psnr_db"] >= min_psnr and cmp["max_abs_diff"] <= max_diff)


def model_only(scale: int, device: str, tile: int, batch: int, reps: int) -> dict[str, Any]:
    """Output MPix/s of the default model alone on batches of ``tile``² 3-band inputs."""
    import torch

    from geosr.models import default_model_spec, load_model

    spec, _ = default_model_spec(scale)
    model = load_model(spec, scale, device=device)
    x = np.random.default_rng(0).random((batch, 3, tile, tile), dtype=np.float32)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    model(x)  # warm-up (cuDNN algorithm choice, allocator)
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"model": spec, "tile": tile, "batch": batch, "seconds_per_batch": best,
            "output_mpix_per_s": batch * (tile * scale) ** 2 / best / 1e6}


def check(out: Path, *, size: int, scale: int, dry_run: bool) -> dict[str, Any]:
    """Run the four parts; the result dict is also written to ``out/RESULT_NAME``."""
    import torch

    device = "cpu" if dry_run else "cuda"
    cluster = ["--workers", "1", "--device", "cpu"] if dry_run else ["--gpu-workers"]
    side = min(CROP if not dry_run else 64, size)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": dry_run,
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "gpu": (torch.cuda.get_device_name(0)
                                            if torch.cuda.is_available() else None),
        "scene": {"size": size, "bands": 4, "dtype": "uint16", "scale": scale},
    }
    with tempfile.TemporaryDirectory(prefix="geosr-gpu-check-") as tmp:
        t = Path(tmp)
        t0 = time.perf_counter()
        scene = make_scene(t / "scene.tif", size)
        res["scene"]["generate_s"] = time.perf_counter() - t0
        small = crop(scene, t / "crop.tif", side)
        common = ["--scale", str(scale), "-q"]
        ref: dict[str, Any] = {"crop": side}
        for name, dev in (("cpu", "cpu"), ("device", device)):
            status, sec, err = geosr_cli(["upscale", str(small), *common, "--device", dev,
                                          "-o", str(t / f"crop_{name}.tif")], in_process=True)
            ref[name] = {"device": dev, "status": status, "seconds": sec, "error": err}
        if ref["cpu"]["status"] == 0 and ref["device"]["status"] == 0:
            ref.update(compare(t / "crop_cpu.tif", t / "crop_device.tif"))
            ref["pass"] = within_tolerance(ref)
        res["reference"] = ref
        mpix = (size * scale) ** 2 / 1e6
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        status, sec, err = geosr_cli(["upscale", str(scene), *common, "--device", device,
                                      "-o", str(t / "device.tif")], in_process=True)
        res["device"] = {"status": status, "seconds": sec, "error": err,
                         "output_mpix_per_band": mpix, "output_mpix_per_s": mpix / sec,
                         "gpu_peak_mib": (torch.cuda.max_memory_allocated() / 2**20
                                          if device.startswith("cuda") else None)}
        status, sec, err = geosr_cli(["upscale", str(scene), *common, *cluster,
                                      "-o", str(t / "workers.tif")], in_process=False)
        workers: dict[str, Any] = {"args": cluster, "status": status, "seconds": sec,
                                   "error": err, "output_mpix_per_s": mpix / sec}
        if status == 0 and (t / "device.tif").exists():
            workers.update(compare(t / "device.tif", t / "workers.tif"))
            workers["pass"] = within_tolerance(workers)
        res["gpu_workers"] = workers
        res["model_only"] = model_only(scale, device, tile=64 if dry_run else 256,
                                       batch=2 if dry_run else 8, reps=1 if dry_run else 5)
    res["ok"] = bool(res["reference"].get("pass") and res["device"]["status"] == 0
                     and res["gpu_workers"].get("pass"))
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_NAME).write_text(json.dumps(res, indent=2, allow_nan=False) + "\n")
    return res


def main(argv: list[str] | None = None) -> int:
    """Command line; exit status 0 when every comparison passed."""
    p = argparse.ArgumentParser(prog="python -m pipelines.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=("run", "prepare"), default="run")
    p.add_argument("--out", type=Path, help="folder for gpu_check_geosr.json (run)")
    p.add_argument("--size", type=int, default=None, help="scene side (default 4096; 128 dry)")
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--dry-run", action="store_true", help="same code on CPU, small scene")
    a = p.parse_args(argv)
    if a.command == "prepare":
        return prepare()
    if a.out is None:
        p.error("--out DIR is needed")
    res = check(a.out, size=a.size or (128 if a.dry_run else 4096), scale=a.scale,
                dry_run=a.dry_run)
    print(json.dumps(res, indent=2, allow_nan=False))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
