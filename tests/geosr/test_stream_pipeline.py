"""The streamed pipeline against the reference path, and its failure behaviour.

* The streamed path (source rows read once, fused conversions, in-place blending, with
  1 or 2 threads) writes the same pixels, masks, tags and profile as the reference path
  (``GEOSR_PIPELINE=reference``) for several band counts, dtypes, masks, scales, an AOI
  window and a tiled run with overlap.
* A failure in the middle (in the model, the reader or the writer) raises promptly,
  leaves nothing at the destination and no pipeline thread behind.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from geosr.api import upscale
from geosr.models import NearestUpscaler
from geosr.testing import make_raster

TILING = {"tile_size": 96, "overlap": 8}

CASES: dict[str, dict[str, Any]] = {
    "rgb-uint8": {"shape": (3, 203, 230)},
    "uint16-nodata-hole": {"shape": (4, 230, 190), "dtype": "uint16", "gain": 60000.0,
                           "offset": 1.0, "nodata": 0, "hole": (slice(40, 90), slice(10, 60))},
    "float32-nodata": {"shape": (2, 180, 200), "dtype": "float32", "gain": 3.0,
                       "offset": -1.0, "nodata": -9999.0, "hole": (slice(0, 30), slice(0, 40))},
    "int16-one-band": {"shape": (1, 150, 260), "dtype": "int16", "gain": 2000.0,
                       "offset": -500.0},
}


def _read(path: Path) -> dict[str, Any]:
    with rasterio.open(path) as d:
        return {"data": d.read(), "masks": d.read_masks(), "tags": d.tags(),
                "band_tags": [d.tags(i) for i in range(1, d.count + 1)],
                "profile": d.profile, "colorinterp": d.colorinterp}


def _run(monkeypatch: pytest.MonkeyPatch, src: Path, dst: Path, pipeline: str, threads: int,
         **kw: Any) -> tuple[dict[str, Any], Any]:
    monkeypatch.setenv("GEOSR_PIPELINE", pipeline)
    monkeypatch.setenv("GDAL_NUM_THREADS", str(threads))
    res = upscale(src, dst, overwrite=True, **kw)
    assert (res.pipeline, res.threads) == (pipeline, threads)
    return _read(dst), res


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    np.testing.assert_array_equal(a["data"], b["data"])  # NaN == NaN here
    assert a["data"].dtype == b["data"].dtype
    np.testing.assert_array_equal(a["masks"], b["masks"])
    for k in ("tags", "band_tags", "profile", "colorinterp"):
        assert a[k] == b[k], k


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("scale", [2, 3])
def test_streamed_equals_reference(case: str, scale: int, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dict(CASES[case])
    src = make_raster(tmp_path / "src.tif", spec.pop("shape"), seed=scale, tiled=True,
                      blockxsize=64, blockysize=64, **spec)
    # bicubic: values that the blend zones really mix; nearest: the pipeline's own path.
    model = "bicubic" if scale == 3 else "nearest"
    ref, rres = _run(monkeypatch, src, tmp_path / "ref.tif", "reference", 1, scale=scale,
                     model=model, **TILING)
    assert rres.tiles > 4
    for threads in (1, 2):
        new, nres = _run(monkeypatch, src, tmp_path / f"new{threads}.tif", "streamed", threads,
                         scale=scale, model=model, **TILING)
        _assert_same(ref, new)
        assert (nres.clipped, nres.nodata_moved) == (rres.clipped, rres.nodata_moved)


@pytest.mark.parametrize("kind", ["mask", "alpha"])
def test_streamed_equals_reference_with_mask_or_alpha(kind: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    valid = np.ones((170, 210), dtype=bool)
    valid[20:70, 30:90] = False
    if kind == "mask":
        src = make_raster(tmp_path / "src.tif", (3, 170, 210), tiled=True, blockxsize=64,
                          blockysize=64, mask=valid)
    else:
        data = np.concatenate([np.full((3, 170, 210), 90, np.uint8),
                               np.where(valid, 255, 0).astype(np.uint8)[None]])
        data[:3] += np.arange(210, dtype=np.uint8)[None, None, :] // 3
        from geosr.testing import write_raster

        src = write_raster(tmp_path / "src.tif", data, photometric="RGB", alpha="YES",
                           tiled=True, blockxsize=64, blockysize=64)
    ref, _ = _run(monkeypatch, src, tmp_path / "ref.tif", "reference", 1, scale=2,
                  model="bicubic", **TILING)
    new, _ = _run(monkeypatch, src, tmp_path / "new.tif", "streamed", 2, scale=2,
                  model="bicubic", **TILING)
    _assert_same(ref, new)
    assert (ref["masks"] == 0).any()


def test_streamed_equals_reference_in_an_aoi_window(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pyproj import Transformer

    src = make_raster(tmp_path / "src.tif", (3, 300, 280), seed=3, tiled=True,
                      blockxsize=64, blockysize=64)
    with rasterio.open(src) as s:
        t, crs = s.transform, s.crs
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ring = [tr.transform(*(t @ (c, r))) for c, r in
            [(33.2, 41.2), (262.8, 41.2), (262.8, 281.8), (33.2, 281.8), (33.2, 41.2)]]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    ref, _ = _run(monkeypatch, src, tmp_path / "ref.tif", "reference", 1, scale=2,
                  model="bicubic", aoi=aoi, **TILING)
    new, _ = _run(monkeypatch, src, tmp_path / "new.tif", "streamed", 2, scale=2,
                  model="bicubic", aoi=aoi, **TILING)
    _assert_same(ref, new)


def test_streamed_equals_reference_reading_exact_rows(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A strip-organised source, and rows read without block alignment (small budget)."""
    import geosr.stages

    src = make_raster(tmp_path / "src.tif", (2, 260, 150), dtype="uint16", gain=4000.0,
                      nodata=0, hole=(slice(100, 140), slice(0, 20)))
    ref, _ = _run(monkeypatch, src, tmp_path / "ref.tif", "reference", 1, scale=2,
                  model="bicubic", **TILING)
    for budget in (1, 1 << 30):
        monkeypatch.setattr(geosr.stages, "READ_BUFFER_BYTES", budget)
        new, _ = _run(monkeypatch, src, tmp_path / "new.tif", "streamed", 2, scale=2,
                      model="bicubic", **TILING)
        _assert_same(ref, new)


@dataclass(frozen=True)
class FailingNearest(NearestUpscaler):
    """Nearest neighbour that raises on its ``fail_at``-th call (counted per instance)."""

    fail_at: int = 3
    calls: list[int] | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert self.calls is not None
        self.calls.append(1)
        if len(self.calls) == self.fail_at:
            raise RuntimeError("model failed on this tile")
        return super().__call__(batch)


def _pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("geosr-")]


def _assert_failed_cleanly(tmp_path: Path, started: float) -> None:
    assert not (tmp_path / "out.tif").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src.tif"]
    assert _pipeline_threads() == []
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("threads", [1, 2])
def test_model_failure_mid_run_leaves_nothing(threads: int, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_raster(tmp_path / "src.tif", (3, 400, 400), tiled=True, blockxsize=64,
                      blockysize=64)
    monkeypatch.setenv("GDAL_NUM_THREADS", str(threads))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="model failed"):
        upscale(src, tmp_path / "out.tif", scale=2, batch_size=1,
                model=FailingNearest(2, fail_at=5, calls=[]), **TILING)
    _assert_failed_cleanly(tmp_path, started)


@pytest.mark.parametrize("where", ["reader", "writer"])
def test_thread_failure_mid_run_leaves_nothing(where: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import geosr.stages
    import geosr.stream

    src = make_raster(tmp_path / "src.tif", (3, 400, 400), tiled=True, blockxsize=64,
                      blockysize=64)
    monkeypatch.setenv("GDAL_NUM_THREADS", "2")
    cls = geosr.stages.SourceRows if where == "reader" else geosr.stream.UnitWriter
    name = "tile" if where == "reader" else "emit"
    original = getattr(cls, name)
    count = [0]

    def failing(self: Any, *args: Any) -> Any:
        count[0] += 1
        assert threading.current_thread().name == f"geosr-{where}"
        if count[0] == 6:
            raise OSError(f"{where} failed")
        return original(self, *args)

    monkeypatch.setattr(cls, name, failing)
    started = time.monotonic()
    with pytest.raises(OSError, match=f"{where} failed"):
        upscale(src, tmp_path / "out.tif", scale=2, model="nearest", batch_size=1, **TILING)
    _assert_failed_cleanly(tmp_path, started)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # NaN -> int
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("holes", [False, True])
def test_fused_conversions_equal_the_plain_ones(dtype: str, holes: bool) -> None:
    from geosr.engine import finish_unit, finish_unit_fused, prepare_tile, prepare_tile_fused
    from geosr.radiometry import BandMapping

    rng = np.random.default_rng(7)
    s, c, h, w = 3, 3, 40, 170
    maps = tuple(BandMapping(dtype, lo, hi) for lo, hi in ((0.0, 255.0), (-30.0, 900.5),
                                                              (1.0, 60000.0)))
    valid = np.ones((c, h, w), dtype=bool)
    if holes:
        valid[:, 5:12, 30:80] = False
    raw = (rng.random((c, h, w)) * 1000).astype(dtype)
    np.testing.assert_array_equal(prepare_tile(raw, valid, maps),
                                  prepare_tile_fused(raw, valid, maps))
    unit = rng.normal(0.5, 0.6, (c, h * s, w * s)).astype(np.float32)  # clips both ways
    unit[1, 3, 4] = np.nan
    unit[0, :, :7] = 0.0  # hits nodata 0 after conversion
    lr = rng.random((c, h, w)).astype(np.float32)
    for nodata, consistency in ((None, "none"), (0.0, "exact")):
        kw = dict(mappings=maps, dtype=dtype, scale=s, nodata=nodata, consistency=consistency)
        a = finish_unit(unit, valid, lr, **kw)
        b = finish_unit_fused(unit, valid, lr, **kw)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], a[1] if b[1] is None else b[1])
        assert b[1] is not None or a[1].all()
        np.testing.assert_array_equal(a[2], b[2])
        assert a[3] == b[3]
        assert a[2].sum() > 0 or dtype == "float32"


def test_in_place_blending_equals_the_plain_product() -> None:
    from geosr.blend import UnitBlender
    from geosr.tiling import TileGrid

    rng = np.random.default_rng(3)
    grid = TileGrid(150, 230, 64, 8)
    plain, fused = UnitBlender(2), UnitBlender(2)
    for t in grid:
        out = rng.random((2, t.rows.read_size * 2, t.cols.read_size * 2)).astype(np.float32)
        a = plain.add(t, out.copy())
        b = fused.add(t, out, consume=True)
        np.testing.assert_array_equal(a, b)
