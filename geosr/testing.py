"""Test and benchmark support: synthetic rasters, the shared corpus, tiny models.

Not imported by the rest of geosr.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geosr.models import NearestUpscaler

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    """The shared data folder holding the GeoTIFF corpus (``geotiff/``), if present.

    ``lgun.paths`` decides where the shared data lives (``$GEOSR_DATA`` or
    ``../shared/data``); this only asks it for a root with the corpus in it.
    """
    from lgun.paths import find_data_root

    return find_data_root("geotiff")


def smooth_field(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth-ish random field in [0, 1] of shape (C, H, W) (image-like test content)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    small = rng.random((c, max(2, h // 8 + 2), max(2, w // 8 + 2)))
    ys = np.linspace(0, small.shape[1] - 1.001, h)
    xs = np.linspace(0, small.shape[2] - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    out = np.empty((c, h, w))
    for i in range(c):
        s = small[i]
        out[i] = ((1 - fy) * (1 - fx) * s[y0][:, x0] + (1 - fy) * fx * s[y0][:, x0 + 1]
                  + fy * (1 - fx) * s[y0 + 1][:, x0] + fy * fx * s[y0 + 1][:, x0 + 1])
    out += 0.05 * rng.standard_normal(out.shape)
    return np.clip(out, 0, 1)


def make_raster(path: str | Path, shape: tuple[int, int, int], *, seed: int = 0,
                dtype: str = "uint8", gain: float = 255.0, offset: float = 0.0,
                nodata: float | None = None, hole: tuple[slice, ...] | None = None,
                hole_value: float | None = None, **profile: Any) -> Path:
    """Write ``(smooth_field(shape, seed) * gain + offset).astype(dtype)`` as a GeoTIFF.

    The one synthetic-raster recipe of the tests and benchmarks.

    Args:
        path: Destination; missing parent folders are created.
        shape: (C, H, W).
        seed: Seed of ``smooth_field``.
        dtype: Sample type (the scaled field is cast, truncating).
        gain, offset: Map the field's [0, 1] onto the dtype's range.
        nodata: The nodata value recorded in the file.
        hole: (rows, cols) slices set to ``hole_value`` in every band (an invalid area).
        hole_value: Value of the hole; ``None`` means ``nodata``.
        **profile: Passed to ``write_raster`` (``mask``, ``crs``, ``photometric``, ...).
    """
    data = (smooth_field(shape, seed=seed) * gain + offset).astype(dtype)
    if hole is not None:
        data[(slice(None), *hole)] = nodata if hole_value is None else hole_value
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_raster(path, data, nodata=nodata, **profile)


def write_raster(path: str | Path, data: np.ndarray, *, crs: Any = "EPSG:32618",
                 transform: Affine | None = None, nodata: float | None = None,
                 mask: np.ndarray | None = None, **extra: Any) -> Path:
    """Write a (C, H, W) array as a GeoTIFF; ``mask`` (H, W) bool adds an internal mask."""
    path = Path(path)
    c, h, w = data.shape
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": w, "height": h, "count": c, "dtype": data.dtype.name,
        "crs": CRS.from_user_input(crs) if crs else None,
        "transform": transform or Affine(30.0, 0, 500000.0, 0, -30.0, 4000000.0),
        "nodata": nodata,
    }
    profile.update(extra)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return path


def wait_while_running(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float,
                       what: str, poll: float = 0.02) -> None:
    """Block until ``ready()`` holds, failing if ``proc`` exits first or ``timeout`` s pass.

    For the tests that signal a child process at a chosen moment (mid-write, mid-scene):
    the moment is observed on disk, so a child that died early must fail with its stderr.

    Raises:
        AssertionError: the process ended (message: its stderr) or the deadline passed
            (message: ``what`` did not happen).
    """
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(poll)


def reuse_cluster(monkeypatch: Any, cluster: Any) -> list[dict[str, Any]]:
    """Make ``geosr.distributed.connect`` yield ``cluster`` (an already started one) instead
    of starting or reaching another; returns the list its calls' keyword arguments go to.

    Args:
        monkeypatch: pytest's ``monkeypatch`` fixture (undone after the test).
        cluster: What every ``connect(...)`` of the test hands back.
    """
    calls: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def fake_connect(**kwargs: Any) -> Iterator[Any]:
        calls.append(kwargs)
        yield cluster

    monkeypatch.setattr("geosr.distributed.connect", fake_connect)
    return calls


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: children of a shell's
    background job start with SIGINT ignored (POSIX), and Python then never raises
    ``KeyboardInterrupt``; the default disposition, kept across exec, makes it Ctrl-C again."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def gdalinfo_json(path: str | Path) -> dict[str, Any]:
    """``gdalinfo -json`` of ``path`` (the GDAL command-line tool)."""
    out = subprocess.run(["gdalinfo", "-json", str(path)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def assert_nearest_upscaled(src: str | Path, dst: str | Path, scale: int = 2) -> None:
    """``dst`` is ``src`` with every pixel replicated ``scale`` x ``scale`` times."""
    with rasterio.open(src) as s, rasterio.open(dst) as d:
        np.testing.assert_array_equal(d.read(), s.read().repeat(scale, 1).repeat(scale, 2))


@dataclass(frozen=True)
class SlowNearest(NearestUpscaler):
    """Nearest neighbour taking ``delay`` seconds per call (time to signal a process).

    Lives here, not in a test module, so Dask worker processes and child processes
    unpickle it from an installed package, without the tests folder on their path.
    """

    delay: float = 0.05

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return super().__call__(batch)


def tiny_lgun(scale: int = 2, seed: int = 0) -> Any:
    """A small random-weight LGUN wrapped as an ``Upscaler`` (CPU, one thread).

    One intra-op thread: tiny convolutions gain nothing from more, and on a busy
    shared machine spinning OpenMP threads make them tens of times slower.
    """
    import torch

    import lgun
    from geosr.models import LGUNUpscaler

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    net = lgun.LGUN(scale=scale, channels=16, num_blocks=2, num_heads=4)
    return LGUNUpscaler(net, name="tiny-lgun", device="cpu")
