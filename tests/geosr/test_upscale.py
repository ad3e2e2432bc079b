"""End-to-end tests of ``geosr.upscale`` on small synthetic rasters.

The nearest-neighbour upscaler gives exact expectations (every output pixel is
its input pixel), so georeferencing, radiometry, masks, tiling and blending are
checked bit for bit; a tiny random LGUN checks the band strategy and batching.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.rpc import RPC

from geosr.api import describe, upscale
from geosr.errors import GeosrError, InputError, OptionError, OutputError
from geosr.models import ClassicalUpscaler, NearestUpscaler
from geosr.qa import qa_report
from geosr.testing import gdalinfo_json, smooth_field, tiny_lgun, write_raster

Raster = Callable[..., Path]


def _rep(a: np.ndarray, s: int) -> np.ndarray:
    return a.repeat(s, axis=-2).repeat(s, axis=-1)


class CountingUpscaler(NearestUpscaler):
    """Nearest neighbour that records the batches it was given."""

    calls: list[tuple[int, ...]]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        object.__getattribute__(self, "calls").append(batch.shape)
        return super().__call__(batch)


def counting(scale: int) -> CountingUpscaler:
    m = CountingUpscaler(scale)
    object.__setattr__(m, "calls", [])
    return m


@pytest.fixture
def rgb8(make_raster: Raster) -> Path:
    path = make_raster("rgb8.tif", (3, 45, 70), seed=1, nodata=0, photometric="RGB")
    with rasterio.open(path, "r+") as ds:
        ds.set_band_description(1, "red band")
        ds.update_tags(1, WAVELENGTH="0.66")
        ds.update_tags(ACQUIRED="2020-01-01")
        ds.set_band_unit(2, "DN")
    return path


# --- georeferencing, metadata, exactness -------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_nearest_is_exact_and_georeferenced(rgb8: Path, tmp_path: Path, scale: int) -> None:
    dst = tmp_path / "out.tif"
    model = counting(scale)
    res = upscale(rgb8, dst, scale=scale, model=model, tile_size=24, overlap=4, batch_size=3)
    assert res.tiles > 4 and max(s[0] for s in model.calls) <= 3
    with rasterio.open(rgb8) as s, rasterio.open(dst) as d:
        src = s.read()
        out = d.read()
        assert out.shape == (3, 45 * scale, 70 * scale)
        np.testing.assert_array_equal(out, _rep(src, scale))
        assert d.transform == s.transform @ Affine.scale(1 / scale)
        assert d.crs == s.crs
        assert d.bounds == pytest.approx(s.bounds)
        assert d.nodata == 0
        assert d.colorinterp == s.colorinterp
        assert d.descriptions[0] == "red band"
        assert d.tags(1)["WAVELENGTH"] == "0.66"
        assert d.units[1] == "DN"
        assert d.tags()["ACQUIRED"] == "2020-01-01"
        # Output blocks are the tiling units: each unit is written as whole blocks.
        assert d.block_shapes[0] == (16 * scale, 16 * scale)
    info = gdalinfo_json(dst)
    assert info["size"] == [70 * scale, 45 * scale]
    src_info = gdalinfo_json(rgb8)
    for corner in ("upperLeft", "lowerRight"):
        assert info["cornerCoordinates"][corner] == pytest.approx(
            src_info["cornerCoordinates"][corner])
    assert info["coordinateSystem"]["wkt"] == src_info["coordinateSystem"]["wkt"]
    md = info["metadata"][""]
    assert md["GEOSR_MODEL"] == "nearest" and md["GEOSR_SCALE"] == str(scale)
    assert md["GEOSR_TILE_SIZE"] == "24" and md["GEOSR_OVERLAP"] == "4"
    assert "AI" in md["GEOSR_NOTE"] or "model" in md["GEOSR_NOTE"]
    assert md["GEOSR_WEIGHTS_SHA256"] == "none" and md["GEOSR_VERSION"]
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "DEFLATE"
    assert info["bands"][0]["block"][0] >= 16 and "STATISTICS_MEAN" not in json.dumps(info)


@pytest.mark.parametrize("dtype,nodata", [
    ("uint16", 0), ("int16", -1000), ("uint32", None), ("int32", -1), ("float32", np.nan),
    ("float64", -9999.0)])
def test_dtypes_and_nodata_roundtrip_exactly(tmp_path: Path, dtype: str, nodata: float | None
                                             ) -> None:
    rng = np.random.default_rng(3)
    if np.issubdtype(np.dtype(dtype), np.integer):
        hi = 10000 if dtype != "int16" else 3000
        data = rng.integers(1, hi, size=(2, 37, 29)).astype(dtype)
    else:
        data = (rng.standard_normal((2, 37, 29)) * 100 + 500).astype(dtype)
    invalid = np.zeros(data.shape, bool)
    invalid[:, 5:9, 3:20] = True
    invalid[1, 30, 28] = True
    if nodata is not None:
        data[invalid] = nodata
    src = write_raster(tmp_path / "in.tif", data, nodata=nodata)
    if dtype == "int16":
        with rasterio.open(src, "r+") as ds:
            ds.scales = (0.01, 0.5)
            ds.offsets = (100.0, -3.0)
    dst = tmp_path / "out.tif"
    upscale(src, dst, scale=2, model="nearest", tile_size=16, overlap=2)
    with rasterio.open(dst) as d:
        out = d.read()
        assert d.dtypes[0] == dtype
        if dtype == "int16":
            assert d.scales == (0.01, 0.5) and d.offsets == (100.0, -3.0)
        if nodata is None:
            assert d.nodata is None
        elif np.isnan(nodata):
            assert np.isnan(d.nodata)
        else:
            assert d.nodata == nodata
    expected = _rep(data, 2)
    if np.issubdtype(np.dtype(dtype), np.integer):
        np.testing.assert_array_equal(out, expected)
    else:  # float32 model arithmetic: exact to float32 resolution of the band range
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-4, equal_nan=True)


def test_rotated_transform_and_no_crs(tmp_path: Path, make_raster: Raster) -> None:
    t = Affine(20.0, 5.0, 1000.0, 3.0, -10.0, 2000.0)
    src = make_raster("rot.tif", (1, 15, 10), gain=200, crs=None, transform=t)
    dst = tmp_path / "out.tif"
    upscale(src, dst, scale=4, model="nearest")
    with rasterio.open(dst) as d:
        assert d.transform.almost_equals(t @ Affine.scale(0.25))
        assert d.crs is None
    a, b = gdalinfo_json(src), gdalinfo_json(dst)
    for corner in ("upperLeft", "lowerRight", "upperRight", "lowerLeft"):
        assert b["cornerCoordinates"][corner] == pytest.approx(a["cornerCoordinates"][corner])


def test_gcps_and_rpcs_are_scaled(tmp_path: Path) -> None:
    data = (smooth_field((1, 20, 30)) * 200).astype(np.uint8)
    gcps = [GroundControlPoint(row=0, col=0, x=10.0, y=50.0), GroundControlPoint(
        row=20, col=30, x=10.3, y=49.8), GroundControlPoint(row=0, col=30, x=10.3, y=50.0)]
    src = tmp_path / "gcp.tif"
    with rasterio.open(src, "w", driver="GTiff", width=30, height=20, count=1, dtype="uint8",
                       gcps=gcps, crs="EPSG:4326") as ds:
        ds.write(data)
    dst = tmp_path / "out.tif"
    upscale(src, dst, scale=2, model="nearest")
    info = gdalinfo_json(dst)
    pts = info["gcps"]["gcpList"]
    assert [(p["pixel"], p["line"]) for p in pts] == [(0, 0), (60, 40), (60, 0)]
    assert [(p["x"], p["y"]) for p in pts] == [(g.x, g.y) for g in gcps]
    # RPCs: image offsets and scales follow the pixel grid (centres at integers).
    rpc = RPC(height_off=0, height_scale=100, lat_off=50, lat_scale=0.1,
              line_den_coeff=[1] + [0] * 19,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_off=9.5, line_scale=10, long_off=10,
              long_scale=0.1, samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18,
              samp_off=14.5, samp_scale=15)
    src2 = tmp_path / "rpc.tif"
    with rasterio.open(src2, "w", driver="GTiff", width=30, height=20, count=1, dtype="uint8",
                       rpcs=rpc, crs="EPSG:4326") as ds:
        ds.write(data)
    upscale(src2, tmp_path / "out2.tif", scale=3, model="nearest")
    with rasterio.open(tmp_path / "out2.tif") as d:
        r = d.rpcs
        assert r.line_off == pytest.approx(9.5 * 3 + 1)
        assert r.samp_off == pytest.approx(14.5 * 3 + 1)
        assert r.line_scale == pytest.approx(30) and r.samp_scale == pytest.approx(45)
        # Corner coordinates scale by s: the same pixel corner is the same ground point.
        with rasterio.open(src2) as s:
            for r, c in ((0, 0), (9.5, 14.5), (20, 3)):
                rs = rasterio.transform.RPCTransformer(s.rpcs).xy(r, c, offset="ul")
                rd = rasterio.transform.RPCTransformer(d.rpcs).xy(3 * r, 3 * c, offset="ul")
                assert rd == pytest.approx(rs, abs=1e-9)


# --- masks ---------------------------------------------------------------------


def test_internal_mask_is_upsampled_and_kept(tmp_path: Path, make_raster: Raster) -> None:
    mask = np.ones((40, 40), bool)
    mask[:12, :] = False
    mask[30:, 30:] = False
    src = make_raster("m.tif", (3, 40, 40), seed=2, mask=mask)
    dst = tmp_path / "out.tif"
    upscale(src, dst, scale=2, model=ClassicalUpscaler(2, "bicubic"), tile_size=24, overlap=4)
    with rasterio.open(dst) as d:
        assert MaskFlags.per_dataset in d.mask_flag_enums[0]
        np.testing.assert_array_equal(d.dataset_mask() > 0, _rep(mask, 2))


def test_alpha_band_is_carried(tmp_path: Path) -> None:
    rgb = (smooth_field((3, 30, 33), 4) * 255).astype(np.uint8)
    alpha = np.full((1, 30, 33), 255, np.uint8)
    alpha[0, :, :7] = 0
    alpha[0, 20:, :] = 128
    src = write_raster(tmp_path / "rgba.tif", np.concatenate([rgb, alpha]), photometric="RGB",
                       alpha="YES")
    with rasterio.open(src) as s:
        assert s.colorinterp[3] == ColorInterp.alpha
    dst = tmp_path / "out.tif"
    upscale(src, dst, scale=3, model="nearest", tile_size=16, overlap=2)
    with rasterio.open(dst) as d:
        assert d.count == 4 and d.colorinterp[3] == ColorInterp.alpha
        np.testing.assert_array_equal(d.read(4), _rep(alpha[0], 3))
        out = d.read([1, 2, 3])
        valid = _rep(alpha[0] > 0, 3)
        np.testing.assert_array_equal(out[:, valid], _rep(rgb, 3)[:, valid])


def test_all_invalid_tiles_are_skipped_and_nan_does_not_poison(tmp_path: Path) -> None:
    data = smooth_field((3, 64, 64), 5).astype(np.float32)
    data[:, :32, :] = np.nan  # top half missing: its tiles never reach the model
    data[0, 50, 40] = np.nan  # one NaN in a valid tile
    src = write_raster(tmp_path / "nan.tif", data, nodata=np.nan)
    model = counting(2)
    res = upscale(src, tmp_path / "o.tif", scale=2, model=model, tile_size=16, overlap=0,
                  batch_size=64)
    assert res.skipped_tiles == 8 and sum(s[0] for s in model.calls) == 8
    net = tiny_lgun(2)
    upscale(src, tmp_path / "l.tif", scale=2, model=net, tile_size=32, overlap=4)
    with rasterio.open(tmp_path / "l.tif") as d:
        out = d.read()
    expected_invalid = _rep(~np.isfinite(data), 2)
    np.testing.assert_array_equal(np.isnan(out), expected_invalid)


def test_valid_pixels_never_become_nodata(tmp_path: Path) -> None:
    data = np.full((1, 20, 20), 200, np.uint8)
    data[0, :, 10:] = 1  # bicubic undershoots next to the edge: would round to 0
    data[0, :2, :2] = 0
    src = write_raster(tmp_path / "e.tif", data, nodata=0)
    res = upscale(src, tmp_path / "o.tif", scale=2, model="bicubic")
    with rasterio.open(tmp_path / "o.tif") as d:
        out = d.read(1)
    assert ((out == 0) == _rep(data[0] == 0, 2)).all()
    assert res.nodata_moved > 0 and res.clipped_total > 0


# --- tiling --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (61, 47), (100, 33)])
def test_tiled_equals_whole_for_local_methods(tmp_path: Path, make_raster: Raster,
                                              shape: tuple[int, int]) -> None:
    """Bicubic/Lanczos have a small support: blended tiles reproduce the whole image."""
    src = make_raster("f.tif", (2, *shape), seed=6, dtype="float32", gain=1.0)
    for method in ("bicubic", "lanczos"):
        upscale(src, tmp_path / f"t_{method}.tif", scale=3, model=method, tile_size=40,
                overlap=6)
        upscale(src, tmp_path / f"w_{method}.tif", scale=3, model=method, tile_size=512)
        with rasterio.open(tmp_path / f"t_{method}.tif") as a, \
                rasterio.open(tmp_path / f"w_{method}.tif") as b:
            np.testing.assert_allclose(a.read(), b.read(), atol=1e-5)


def test_tiled_lgun_blends_without_seams(tmp_path: Path, make_raster: Raster) -> None:
    """With a model whose output depends on the whole tile, the blend keeps borders smooth."""
    from geosr.qa import seam_score
    from geosr.tiling import TileGrid

    src = make_raster("s.tif", (3, 72, 72), seed=7)
    net = tiny_lgun(2, seed=1)
    upscale(src, tmp_path / "whole.tif", scale=2, model=net, tile_size=128)
    upscale(src, tmp_path / "tiled.tif", scale=2, model=net, tile_size=48, overlap=8)
    upscale(src, tmp_path / "crop.tif", scale=2, model=net, tile_size=48, overlap=0)
    rows, cols = TileGrid(72, 72, 48, 8).border_positions(2)
    with rasterio.open(tmp_path / "whole.tif") as w, rasterio.open(tmp_path / "tiled.tif") as t:
        whole, tiled = w.read().astype(float), t.read().astype(float)
    ref = seam_score(whole, rows, cols, 2)
    assert seam_score(tiled, rows, cols, 2) < ref * 1.25 + 0.05
    assert np.abs(tiled - whole).mean() < 3.0


# --- bands ---------------------------------------------------------------------


def test_band_strategy_with_a_three_channel_model(tmp_path: Path) -> None:
    """4 bands -> groups (1,2,3) and (2,3,4); 1 band -> replicated, output = channel mean."""
    data = smooth_field((4, 20, 24), 8).astype(np.float32)
    src = write_raster(tmp_path / "b4.tif", data)
    net = tiny_lgun(2, seed=2)
    upscale(src, tmp_path / "all.tif", scale=2, model=net)
    upscale(src, tmp_path / "sel.tif", scale=2, model=net, bands="4,2")
    with rasterio.open(tmp_path / "all.tif") as d:
        out = d.read()
    with rasterio.open(tmp_path / "sel.tif") as d:
        sel = d.read()
        assert d.count == 2
    lo, hi = data.min(axis=(1, 2)), data.max(axis=(1, 2))
    u = (data - lo[:, None, None]) / (hi - lo)[:, None, None]
    g1 = net(u[None, :3])[0]
    g2 = net(u[None, 1:])[0]
    expected = np.stack([g1[0], g1[1], g1[2], g2[2]]) * (hi - lo)[:, None, None] + lo[:, None,
                                                                                     None]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # Selected bands 4,2 go through separately (two bands < three channels): replicated.
    for i, b in enumerate((4, 2)):
        x = u[b - 1][None, None].repeat(3, axis=1)
        e = net(x)[0].mean(axis=0) * (hi[b - 1] - lo[b - 1]) + lo[b - 1]
        np.testing.assert_allclose(sel[i], e, rtol=1e-4, atol=1e-4)


def test_palette_band_uses_nearest_and_keeps_colormap(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 4, size=(1, 20, 20)).astype(np.uint8)
    src = write_raster(tmp_path / "pal.tif", data, photometric="PALETTE")
    cmap = {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255)}
    with rasterio.open(src, "r+") as ds:
        ds.write_colormap(1, cmap)
    upscale(src, tmp_path / "o.tif", scale=2, model="bicubic")
    with rasterio.open(tmp_path / "o.tif") as d:
        np.testing.assert_array_equal(d.read(), _rep(data, 2))
        assert d.colormap(1)[3] == (0, 0, 255, 255)


# --- radiometry and consistency ------------------------------------------------------


def test_consistency_exact_preserves_block_means(tmp_path: Path, make_raster: Raster) -> None:
    src = make_raster("c.tif", (2, 30, 30), seed=9, dtype="float32", gain=5000, offset=1000)
    upscale(src, tmp_path / "plain.tif", scale=3, model="lanczos", tile_size=16, overlap=2)
    upscale(src, tmp_path / "exact.tif", scale=3, model="lanczos", tile_size=16, overlap=2,
            consistency="exact")
    plain = qa_report(src, tmp_path / "plain.tif")
    exact = qa_report(src, tmp_path / "exact.tif")
    assert max(plain.mae) > 1.0
    assert max(exact.mae) < 1e-2
    with rasterio.open(tmp_path / "exact.tif") as d:
        assert d.tags()["GEOSR_CONSISTENCY"] == "exact"


def test_clipped_pixels_are_counted_and_tagged(tmp_path: Path) -> None:
    data = np.zeros((1, 16, 16), np.uint8)
    data[0, ::2, ::2] = 255  # bicubic over/undershoots on every edge
    data[0, 1::2, 1::2] = 255
    src = write_raster(tmp_path / "chk.tif", data)
    res = upscale(src, tmp_path / "o.tif", scale=2, model="bicubic")
    assert res.clipped_total > 0
    with rasterio.open(tmp_path / "o.tif") as d:
        assert [int(v) for v in d.tags()["GEOSR_CLIPPED"].split(",")] == res.clipped


# --- output safety, options ------------------------------------------------------------


def test_existing_destination_needs_overwrite(rgb8: Path, tmp_path: Path) -> None:
    dst = tmp_path / "exists.tif"
    dst.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="--overwrite"):
        upscale(rgb8, dst, scale=2, model="nearest")
    assert dst.read_bytes() == b"keep me"
    upscale(rgb8, dst, scale=2, model="nearest", overwrite=True)
    with rasterio.open(dst) as d:
        assert d.width == 140


def test_failure_midway_leaves_nothing(rgb8: Path, tmp_path: Path) -> None:
    class Boom(NearestUpscaler):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            raise KeyboardInterrupt

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        upscale(rgb8, out_dir / "x.tif", scale=2, model=Boom(2), tile_size=16, overlap=2)
    assert list(out_dir.iterdir()) == []
    dst = out_dir / "keep.tif"
    dst.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        upscale(rgb8, dst, scale=2, model=Boom(2), overwrite=True, cog=True)
    assert dst.read_bytes() == b"old" and list(out_dir.iterdir()) == [dst]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_destination(rgb8: Path, tmp_path: Path) -> None:  # pragma: no cover
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OutputError, match="not writable"):
        upscale(rgb8, ro / "x.tif", scale=2, model="nearest")


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"scale": 5}, OptionError, "scale"),
    ({"scale": 2, "bands": "9"}, OptionError, "band 9"),
    ({"scale": 2, "tile_size": 64, "overlap": 20}, OptionError, "overlap"),
    ({"scale": 2, "model": "lgun-x2"}, OptionError, "lgun-x2"),
    ({"scale": 3, "model": NearestUpscaler(2)}, OptionError, "x2"),
    ({"scale": 2, "model": "sharpen"}, OptionError, "unknown model"),
    ({"scale": 2, "creation_options": ["COMPRESS"]}, OptionError, "KEY=VAL"),
])
def test_bad_options_fail_before_writing(rgb8: Path, tmp_path: Path, kwargs: dict, exc: type,
                                         match: str) -> None:
    import lgun

    if kwargs.get("model") == "lgun-x2" and lgun.PRETRAINED["lgun-x2"].available:
        pytest.skip("lgun-x2 weights are installed")
    with pytest.raises(exc, match=match):
        upscale(rgb8, tmp_path / "x.tif", **kwargs)
    assert not (tmp_path / "x.tif").exists()


def test_complex_and_missing_inputs_fail(tmp_path: Path) -> None:
    src = tmp_path / "c.tif"
    with rasterio.open(src, "w", driver="GTiff", width=8, height=8, count=1,
                       dtype="complex64") as ds:
        ds.write(np.ones((1, 8, 8), np.complex64))
    with pytest.raises(InputError, match="complex"):
        upscale(src, tmp_path / "o.tif", scale=2, model="nearest")
    with pytest.raises(InputError, match="no such file"):
        upscale(tmp_path / "nope.tif", tmp_path / "o.tif", scale=2, model="nearest")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(GeosrError):
        upscale(bad, tmp_path / "o.tif", scale=2, model="nearest")
    assert not (tmp_path / "o.tif").exists()


def test_creation_options_and_cog(rgb8: Path, tmp_path: Path, make_raster: Raster) -> None:
    from rio_cogeo.cogeo import cog_validate

    upscale(rgb8, tmp_path / "lzw.tif", scale=2, model="nearest",
            creation_options=["COMPRESS=LZW", "BLOCKXSIZE=64", "BLOCKYSIZE=64"])
    info = gdalinfo_json(tmp_path / "lzw.tif")
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "LZW"
    assert info["bands"][0]["block"] == [64, 64]
    big = make_raster("big.tif", (3, 300, 280), seed=3, nodata=0)
    dst = tmp_path / "cog.tif"
    upscale(big, dst, scale=2, model="nearest", cog=True, tile_size=128, overlap=8)
    valid, errors, _ = cog_validate(str(dst))
    assert valid, errors
    with rasterio.open(dst) as d:
        assert d.overviews(1), "a COG of this size has overviews"
        assert d.tags()["GEOSR_MODEL"] == "nearest" and d.nodata == 0
        ov = d.read(1, out_shape=(d.height // 2, d.width // 2))
    with rasterio.open(big) as s:
        np.testing.assert_allclose(ov.astype(float), s.read(1).astype(float), atol=1)


# --- AOI ---------------------------------------------------------------------------


def test_aoi_geojson_is_reprojected_and_cut(rgb8: Path, tmp_path: Path) -> None:
    from pyproj import Transformer

    with rasterio.open(rgb8) as s:
        t = s.transform
        crs = s.crs
    # A lon/lat polygon around input pixels cols 10..30, rows 5..20 (slightly inside).
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ring = [tr.transform(*(t @ (c, r))) for c, r in
            [(10.2, 5.2), (29.8, 5.2), (29.8, 19.8), (10.2, 19.8), (10.2, 5.2)]]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                                                           "coordinates": [ring]}}]}))
    dst = tmp_path / "aoi.tif"
    upscale(rgb8, dst, scale=2, model="nearest", aoi=aoi)
    with rasterio.open(rgb8) as s, rasterio.open(dst) as d:
        assert (d.width, d.height) == (40, 30)
        assert d.transform.almost_equals(t @ Affine.translation(10, 5) @ Affine.scale(0.5))
        np.testing.assert_array_equal(d.read(), _rep(s.read(window=((5, 20), (10, 30))), 2))
        assert d.tags()["GEOSR_SOURCE_WINDOW"] == "10,5,20,15"
    qa = qa_report(rgb8, dst)
    assert max(qa.mae) == 0
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "Polygon", "coordinates": [
        [[100, 10], [101, 10], [101, 11], [100, 11], [100, 10]]]}))
    with pytest.raises(OptionError, match="does not intersect"):
        upscale(rgb8, tmp_path / "far.tif", scale=2, model="nearest", aoi=far)


def test_aoi_shapefile_via_ogr(rgb8: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("ogr2ogr") is None:
        pytest.skip("ogr2ogr (gdal-bin) is not installed")
    with rasterio.open(rgb8) as s:
        b = s.bounds
        crs = s.crs.to_string()
    gj = tmp_path / "a.geojson"
    x0, y0 = b.left + 300, b.top - 600
    gj.write_text(json.dumps({"type": "Polygon", "coordinates": [
        [[x0, y0], [x0 + 600, y0], [x0 + 600, y0 - 300], [x0, y0 - 300], [x0, y0]]]}))
    shp = tmp_path / "a.shp"
    subprocess.run(["ogr2ogr", "-f", "ESRI Shapefile", "-s_srs", crs, "-a_srs", crs, str(shp),
                    str(gj)], check=True, capture_output=True)
    dst = tmp_path / "shp.tif"
    upscale(rgb8, dst, scale=2, model="nearest", aoi=shp)
    with rasterio.open(dst) as d:
        assert d.tags()["GEOSR_SOURCE_WINDOW"] == "10,20,20,10"


# --- info and qa -------------------------------------------------------------------------


def test_describe_reports_plan(rgb8: Path) -> None:
    d = describe(rgb8, scale=4, model="nearest", tile_size=32, overlap=4)
    assert d["output"]["width"] == 280 and d["tiles"]["total"] == len(
        __import__("geosr.tiling", fromlist=["TileGrid"]).TileGrid(45, 70, 32, 4))
    assert d["mask"] == "nodata" and d["bands"][0]["mapping"].startswith("[0, 255]")
    assert d["memory_estimate_bytes"]["total"] > 0


def test_qa_on_nearest_and_bicubic(rgb8: Path, tmp_path: Path) -> None:
    upscale(rgb8, tmp_path / "n.tif", scale=2, model="nearest")
    upscale(rgb8, tmp_path / "b.tif", scale=2, model="bicubic", tile_size=32, overlap=4)
    qn = qa_report(rgb8, tmp_path / "n.tif")
    qb = qa_report(rgb8, tmp_path / "b.tif")
    assert qn.mae == [0, 0, 0] and qn.spectral_angle_deg == pytest.approx(0, abs=1e-6)
    assert 0 < max(qb.mae) < 10 and qb.spectral_angle_deg > 0
    assert qb.clipped is not None and qn.nodata_fraction_src == pytest.approx(
        qn.nodata_fraction_dst)
    assert "seam score" in qb.format()
