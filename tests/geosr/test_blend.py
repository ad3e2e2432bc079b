"""``geosr.blend``: ramps, per-axis weights, and the unit blender (partition of unity)."""

from __future__ import annotations

import numpy as np
import pytest

from geosr.blend import UnitBlender, axis_weights, ramp
from geosr.tiling import TileGrid, split_axis


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
