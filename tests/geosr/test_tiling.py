"""``geosr.tiling``: splitting an axis into tiles, validation, output blocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.errors import OptionError
from geosr.tiling import TileGrid, split_axis, validate_tiling


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
