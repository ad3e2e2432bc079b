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


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 5000), tile=st.integers(16, 400),
       multiple=st.sampled_from([1, 2, 8]), data=st.data())
def test_grown_grid_invariants(length: int, tile: int, multiple: int,
                               data: st.DataObject) -> None:
    from geosr.tiling import GROWTH_LIMIT, axis_tile_size

    overlap = data.draw(st.integers(0, tile // 6))
    side = axis_tile_size(length, tile, overlap, grow=True, multiple=multiple)
    spans = split_axis(length, side, overlap)
    # Every pixel is owned by exactly one unit.
    owned = [0] * length
    for s in spans:
        for i in range(s.unit_start, s.unit_stop):
            owned[i] += 1
    assert owned == [1] * length
    # Never smaller than asked, never beyond the bound; grown sides are size multiples.
    assert side == tile or tile < side <= GROWTH_LIMIT * tile
    assert side == tile or side % multiple == 0
    assert all(s.read_size == min(side, length) for s in spans)  # all tiles the same size
    for a, b in zip(spans, spans[1:], strict=False):
        assert a.read_stop - b.read_start >= 2 * overlap  # at least the requested overlap
        assert b.unit_size >= 2 * overlap
    # Growing saves at least one tile; otherwise the grid is the requested one.
    plain = split_axis(length, tile, overlap)
    assert len(spans) <= len(plain) - 1 if side != tile else spans == plain
    # An axis up to 1.25 x the tile is one tile (when the multiple allows it).
    if length <= int(GROWTH_LIMIT * tile) // multiple * multiple:
        assert len(spans) == 1


def test_grown_grid_718() -> None:
    from geosr.tiling import make_grid

    grid = make_grid(718, 718, 256, 16, neural=True, scale=4)
    # 261 covers the axis in three tiles; 264 makes the core (232) x 4 a multiple of 16.
    assert grid.shape == (3, 3) and grid.tile_shape == (264, 264) and grid.tile_size == 264
    assert [(s.read_start, s.read_stop) for s in grid.rows] == [(0, 264), (232, 496), (454, 718)]
    work = sum(t.rows.read_size * t.cols.read_size for t in grid) / 718**2
    assert round(work, 3) == 1.217  # 2.034 with four tiles of 256
    assert grid.output_blocks(4) == (928, 928)
    assert make_grid(718, 718, 256, 16, neural=True, scale=4, multiple=8).tile_shape == (264, 264)
    assert make_grid(718, 718, 256, 16, neural=True, scale=3).tile_shape == (272, 272)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("shape", [(718, 500), (1000, 300), (2048, 2048), (300, 5000)])
def test_grown_units_are_whole_output_blocks(scale: int, shape: tuple[int, int]) -> None:
    from geosr.tiling import make_grid

    grid = make_grid(*shape, 256, 16, neural=True, scale=scale)
    by, bx = grid.output_blocks(scale)
    for block, spans in ((by, grid.rows), (bx, grid.cols)):
        assert block is not None and block % 16 == 0 and block <= 2048
        if len(spans) > 1:  # every unit starts on a block boundary
            assert all(sp.unit_start * scale % block == 0 for sp in spans)
    plain = make_grid(*shape, 256, 16, neural=False, scale=scale)
    b = (256 - 32) * scale
    assert plain.output_blocks(scale) == (b, b)  # the requested grid keeps its blocks


@pytest.mark.parametrize("length", [257, 300, 320])
def test_side_up_to_limit_is_one_tile(length: int) -> None:
    from geosr.tiling import make_grid

    grid = make_grid(length, 1000, 256, 16, neural=True, scale=2)
    assert len(grid.rows) == 1 and grid.rows[0].read_size == length
    assert grid.tile_size == max(length, grid.axis_sizes[1]) <= 320
    assert make_grid(321, 321, 256, 16, neural=True, scale=2).shape == (2, 2)  # beyond: two of 256


def test_local_methods_keep_the_requested_grid() -> None:
    from geosr.tiling import make_grid

    for h, w in ((718, 718), (300, 1000), (7, 5)):
        plain = make_grid(h, w, 256, 16, neural=False, scale=2)
        assert plain == TileGrid(h, w, 256, 16) and plain.tile_size == 256
        assert [t.read_window for t in plain] == [t.read_window for t in TileGrid(h, w, 256, 16)]
    assert make_grid(718, 718, 256, 16, neural=False, scale=2).shape == (4, 4)
