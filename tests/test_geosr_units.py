"""Unit tests of geosr's small pieces: bands, tiling, blending, radiometry, masks, models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.bands import band_groups, parse_bands
from geosr.blend import UnitBlender, axis_weights, ramp
from geosr.errors import OptionError
from geosr.masks import fill_invalid, upsample_nearest
from geosr.models import ClassicalUpscaler, NearestUpscaler, Upscaler, default_model_spec
from geosr.qa import block_mean, seam_score
from geosr.radiometry import BandMapping, avoid_nodata, choose_mappings, to_dtype
from geosr.tiling import TileGrid, split_axis, validate_tiling


def test_import_geosr_does_not_import_torch_or_dask() -> None:
    code = ("import sys, geosr, geosr.cli, geosr.upscale, geosr.qa, geosr.models; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'dask', 'lgun')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# --- bands -----------------------------------------------------------------


def test_parse_bands() -> None:
    assert parse_bands("4,3,2", 4) == (4, 3, 2)
    assert parse_bands(None, 4, alpha_band=4) == (1, 2, 3)
    for bad in ("0", "5", "1,1", "a,b"):
        with pytest.raises(OptionError):
            parse_bands(bad, 4)
    with pytest.raises(OptionError, match="alpha"):
        parse_bands("4", 4, alpha_band=4)


@pytest.mark.parametrize("n", range(1, 12))
def test_band_groups_cover_every_band_once(n: int) -> None:
    groups = band_groups(n, 3)
    written = [p for g in groups for _, p in g.outputs]
    assert sorted(written) == list(range(n))
    for g in groups:
        assert len(g.inputs) == 3
        for ch, p in g.outputs:
            assert g.inputs[ch] == p
    if n >= 3:  # real spectral groups, never replication
        assert all(g.mode == "model" for g in groups)
        assert all(len(set(g.inputs)) == 3 for g in groups)
    else:
        assert all(g.mode == "replicate" for g in groups)


def test_band_groups_any_channels_and_palette() -> None:
    (g,) = band_groups(5, None)
    assert g.inputs == (0, 1, 2, 3, 4)
    groups = band_groups(2, 3, categorical=[1])
    assert groups[0].mode == "nearest" and groups[0].inputs == (1,)
    assert groups[1].mode == "replicate" and groups[1].inputs == (0, 0, 0)


# --- tiling ----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(length=st.integers(1, 3000), tile=st.integers(16, 400), data=st.data())
def test_split_axis_invariants(length: int, tile: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, tile // 6))
    spans = split_axis(length, tile, overlap)
    # Units partition the axis; reads stay within it and within the tile size.
    assert spans[0].unit_start == 0 and spans[-1].unit_stop == length
    for a, b in zip(spans, spans[1:], strict=False):
        assert a.unit_stop == b.unit_start
        assert a.read_stop == b.unit_start + 2 * overlap  # zone shared with the next tile
        assert b.unit_size >= 2 * overlap  # the zone fits in one unit
    core = tile - 2 * overlap
    for s in spans:
        assert 0 <= s.read_start <= s.unit_start < s.unit_stop <= s.read_stop <= length
        assert s.read_size == min(tile, length)  # every tile is full: no sliver tile
        if s.index < len(spans) - 1:
            assert s.lead == 0 and s.unit_start == s.index * core  # block-aligned units
    if len(spans) > 1:
        assert spans[-1].read_stop == length and spans[-1].unit_size > 2 * overlap


def test_validate_tiling() -> None:
    validate_tiling(256, 42)
    for t, o in ((8, 0), (256, 43), (64, -1)):
        with pytest.raises(OptionError):
            validate_tiling(t, o)


def test_output_blocks_match_units() -> None:
    from geosr.tiling import output_block_size

    assert output_block_size(256, 16, 2) == 448
    assert output_block_size(256, 16, 4) == 896
    assert output_block_size(100, 3, 3) is None  # 282 is not a multiple of 16


def test_small_raster_is_one_tile() -> None:
    grid = TileGrid(7, 5, 256, 16)
    assert len(grid) == 1
    (tile,) = list(grid)
    assert (tile.read_window.width, tile.read_window.height) == (5, 7)


# --- blending --------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 2, 5, 8, 33, 64])
def test_ramp_is_partition_of_unity_and_monotone(length: int) -> None:
    r = ramp(length)
    assert r.shape == (length,)
    np.testing.assert_allclose(r + (1 - r), 1)
    assert np.all(np.diff(r) >= 0)
    if length >= 4:
        assert r[0] == 0 and r[-1] == 1


@pytest.mark.parametrize("shape,tile,overlap,scale", [
    ((50, 61), 24, 4, 2), ((33, 17), 16, 2, 3), ((40, 40), 40, 6, 2), ((90, 23), 30, 5, 4)])
def test_blender_partition_of_unity(shape: tuple[int, int], tile: int, overlap: int,
                                    scale: int) -> None:
    """Blending all-ones tiles gives exactly ones, each output pixel written once."""
    grid = TileGrid(*shape, tile, overlap)
    blender = UnitBlender(scale)
    out = np.zeros((1, shape[0] * scale, shape[1] * scale))
    written = np.zeros_like(out, dtype=int)
    for t in grid:
        pred = np.ones((1, t.rows.read_size * scale, t.cols.read_size * scale), np.float32)
        unit = blender.add(t, pred)
        ys, xs = t.rows.unit_start * scale, t.cols.unit_start * scale
        out[:, ys : ys + unit.shape[1], xs : xs + unit.shape[2]] += unit
        written[:, ys : ys + unit.shape[1], xs : xs + unit.shape[2]] += 1
    np.testing.assert_allclose(out, 1.0, atol=1e-6)
    assert (written == 1).all()
    assert blender.pending_bytes == 0


def test_axis_weights_zero_near_tile_edges() -> None:
    spans = split_axis(100, 40, 6)
    w = axis_weights(spans[1], 2)
    assert w[0] == 0 and w[-1] == 0 and w.max() == 1


# --- radiometry ------------------------------------------------------------


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


# --- masks -----------------------------------------------------------------


def test_fill_invalid_uses_nearest_valid_pixel_and_removes_nan() -> None:
    x = np.array([[[1.0, np.nan, np.nan, 4.0]], [[np.nan] * 4]], dtype=np.float32)
    valid = np.isfinite(x)
    f = fill_invalid(x, valid)
    assert np.isfinite(f).all()
    assert f[0, 0].tolist() == [1, 1, 4, 4]
    assert (f[1] == 0.5).all()
    assert upsample_nearest(np.eye(2, dtype=bool), 2).sum() == 8


# --- models ----------------------------------------------------------------


def test_nearest_upscaler_is_exact_and_a_protocol_member() -> None:
    m = NearestUpscaler(3)
    assert isinstance(m, Upscaler)
    x = np.random.default_rng(0).random((2, 5, 4, 3)).astype(np.float32)
    y = m(x)
    assert y.shape == (2, 5, 12, 9)
    np.testing.assert_array_equal(y[:, :, ::3, ::3], x)


@pytest.mark.parametrize("method", ["bicubic", "lanczos"])
def test_classical_upscaler_grid_and_constants(method: str) -> None:
    m = ClassicalUpscaler(2, method)
    assert isinstance(m, Upscaler)
    const = np.full((1, 2, 9, 7), 0.25, np.float32)
    np.testing.assert_allclose(m(const), 0.25, atol=1e-6)
    # A linear ramp stays linear on the pixel-centre grid: out[j] = in((j + 0.5)/s - 0.5).
    x = np.tile(np.arange(16, dtype=np.float32), (1, 1, 16, 1))
    y = m(x)[0, 0, 8]
    j = np.arange(8, 24)
    err = y[8:24] - ((j + 0.5) / 2 - 0.5)
    assert abs(err.mean()) < 1e-4  # no half-pixel shift: same grid as GDAL
    # Keys cubic (a = -0.5) reproduces linear functions exactly; Lanczos nearly.
    assert np.abs(err).max() < (1e-3 if method == "bicubic" else 0.03)


def test_default_model_spec_prefers_shipped_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import lgun

    for info in lgun.PRETRAINED.values():
        if info.available:
            break
    else:
        spec, warning = default_model_spec(4)
        assert spec == "bicubic" and "falling back to bicubic" in warning
    # Pretend weights are installed: the aerial ones win over the natural ones.
    monkeypatch.setattr(type(lgun.PRETRAINED["lgun-x4"]), "available", property(lambda s: True))
    assert default_model_spec(4) == ("lgun-aid-x4", None)


def test_block_mean_and_seam_score() -> None:
    x = np.arange(16, dtype=float).reshape(1, 4, 4)
    m, ok = block_mean(x, np.ones_like(x, bool), 2)
    np.testing.assert_allclose(m[0], [[2.5, 4.5], [10.5, 12.5]])
    assert ok.all()
    # A step at column 8 of otherwise smooth noise is a seam there.
    rng = np.random.default_rng(0)
    img = rng.random((1, 32, 32)) * 0.1
    assert seam_score(img, (), (8,), 2) == pytest.approx(1.0, abs=0.6)
    img[:, :, 8:] += 1.0
    assert seam_score(img, (), (8,), 2) > 5
