"""``geosr.radiometry``: DN <-> [0, 1] mappings, clipping and nodata avoidance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geosr.radiometry import BandMapping, avoid_nodata, choose_mappings, to_dtype


def test_uint8_mapping_is_dtype_range() -> None:
    (m,) = choose_mappings("uint8", (1.0,), (0.0,), lambda: iter(()))
    assert (m.lo, m.hi, m.source) == (0, 255, "dtype")


def test_uint16_reflectance_keeps_precision() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10001, size=(1, 64, 64)).astype(np.uint16)
    x[0, 0, 0], x[0, 0, 1] = 0, 10000
    (m,) = choose_mappings("uint16", (1e-4,), (0.0,), lambda: iter([(x, np.ones_like(x, bool))]))
    assert (m.lo, m.hi) == (0, 10000)
    u = m.to_unit(x[0])
    assert u.dtype == np.float32 and u.min() == 0 and u.max() == 1
    back, clipped = to_dtype(m.from_unit(u)[None], "uint16")
    np.testing.assert_array_equal(back[0], x[0])  # every DN survives the round trip
    assert clipped.sum() == 0
    assert m.physical_range == pytest.approx((0.0, 1.0))


def test_mapping_ignores_invalid_and_handles_constant_bands() -> None:
    x = np.array([[[5.0, 7.0, -9999.0]], [[3.0, 3.0, 3.0]]], dtype=np.float32)
    valid = x != -9999.0
    m1, m2 = choose_mappings("float32", (1.0, 1.0), (0.0, 0.0), lambda: iter([(x, valid)]))
    assert (m1.lo, m1.hi) == (5, 7)
    assert m2.hi > m2.lo == 3


def test_to_dtype_counts_clipping_and_avoid_nodata() -> None:
    v = np.array([[[-3.0, 0.2, 254.6, 300.0]]])
    out, clipped = to_dtype(v, "uint8")
    np.testing.assert_array_equal(out, [[[0, 0, 255, 255]]])
    assert clipped.tolist() == [2]
    valid = np.array([[[True, True, True, False]]])
    moved = avoid_nodata(out, valid, 0.0)
    assert moved == 2 and out[0, 0, :2].tolist() == [1, 1]
    m = BandMapping("int16", -100, 100)
    np.testing.assert_allclose(m.from_unit(m.to_unit(np.array([-100, 0, 100]))), [-100, 0, 100])


def test_parse_range_and_presets() -> None:
    from geosr.radiometry import PRESETS, parse_range

    assert parse_range("0,10000") == ((0.0, 10000.0),)
    assert parse_range("0,1;2,3") == ((0.0, 1.0), (2.0, 3.0))
    assert parse_range("Sentinel2-L2A") == (PRESETS["sentinel2-l2a"],)
    lo, hi = PRESETS["landsat-c2-sr"]  # reflectance 0 and 1 in Collection 2 encoding
    assert lo * 0.0000275 - 0.2 == pytest.approx(0) and hi * 0.0000275 - 0.2 == pytest.approx(1)
    for bad in ("1", "2,1", "a,b", "0,nan", "hubble"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_fixed_range_aoi_and_full_scene_agree(tmp_path: Path) -> None:
    """With --range, a pixel-wise nonlinear model gives the AOI's pixels the same values in
    an AOI run and a full-scene run; with ranges from the data it does not."""
    import json

    import rasterio

    from geosr.api import upscale
    from geosr.models import NearestUpscaler
    from geosr.testing import make_raster

    class Gamma(NearestUpscaler):
        """Pixel-wise, nonlinear: u**2, replicated (what an AOI changes is only the range)."""

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return super().__call__(np.clip(batch, 0, None) ** 2)

    src = make_raster(tmp_path / "s.tif", (2, 60, 70), seed=5, dtype="uint16", gain=9000,
                      offset=100, crs="EPSG:32633")
    with rasterio.open(src) as ds:
        t = ds.transform
    x0, y0 = t @ (20, 15)
    x1, y1 = t @ (45, 40)
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "crs": {"type": "name", "properties": {
        "name": "EPSG:32633"}}, "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1],
                                                 [x0, y0]]]}))
    model = Gamma(2)

    def pair(value_range: str | None) -> tuple[np.ndarray, np.ndarray]:
        tag = value_range or "data"
        full = upscale(src, tmp_path / f"full-{tag}.tif", scale=2, model=model,
                       value_range=value_range).dst
        part = upscale(src, tmp_path / f"aoi-{tag}.tif", scale=2, model=model, aoi=aoi,
                       value_range=value_range).dst
        with rasterio.open(full) as f, rasterio.open(part) as p:
            a = f.read()[:, 30:80, 40:90].astype(np.int64)
            return a, p.read().astype(np.int64)

    a, b = pair("0,10000")
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
    a, b = pair(None)
    assert np.abs(a - b).max() > 1  # the data ranges differ, so the pixels do
