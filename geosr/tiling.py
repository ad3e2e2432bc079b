"""The tile grid: which input window each model call sees, and which output it owns.

Along each axis of length ``L`` the grid has ``n`` tiles of side ``t`` (the
*axis tile size*, see below). Tile ``r`` owns the *unit* ``[u_r, u_{r+1})`` with
``u_r = r * core`` and ``core = t - 2*overlap`` (the last unit takes the rest); the
units partition the axis. Tile ``r`` reads ``[u_r, u_{r+1} + 2*overlap)``, exactly
``t`` pixels. Neighbouring tiles share the *zone* ``[u_r, u_r + 2*overlap)``, where
their outputs are blended (see ``geosr.blend``). The last tile is shifted back to
read a full ``t`` ending at the raster edge, so it is never a sliver with little
context; the extra pixels it reads before its unit get zero weight. All tiles thus
have the same size (batches need no padding), and unit boundaries fall on multiples
of ``core``, so with an output block of ``core * scale`` pixels every unit is whole
output blocks (written once, flushed at once; ``TileGrid.output_blocks`` gives them).
An axis no longer than ``t`` is one tile. Rows and columns are split independently;
tiles are visited row-major.

Axis tile size (``axis_tile_size``, the one place this is decided): the requested
``tile_size`` ``T``, unless the grid *grows* tiles. A growing grid first counts the
tiles of size ``T`` (``n = ceil((L - 2*overlap) / (T - 2*overlap))``), then tries
one tile fewer, ``n - 1``, each just large enough to cover the axis with the same
zones: ``t = ceil((L + (n - 2) * 2*overlap) / (n - 1))``, rounded up to the model's
size multiple and so that ``(t - 2*overlap) * scale`` is a multiple of 16 (then every
unit is still whole output blocks: ``TileGrid.output_blocks``). It takes that ``t`` if
``t <= GROWTH_LIMIT * T`` (1.25 x, rounded down to the size multiple), else keeps
``T``. So a remainder that ``T`` leaves (718 = 3 x 224 + 46 needs four tiles of 256)
is spread over slightly larger tiles (three of 264 at x4) instead of costing a whole
extra tile, and an axis up to 1.25 x ``T`` is one tile. Tiles are never smaller than
``T``, so each keeps at least its requested context; the largest is bounded by
1.25 x ``T`` whatever the scene size.
``make_grid`` grows tiles for neural models only: local methods (nearest, bicubic,
Lanczos) keep the ``T`` grid, so their output blocks and pixels do not depend on it.

Constraint: ``6 * overlap <= tile_size``, so a pixel is shared by at most two
tiles per axis (each zone fits inside one unit).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from rasterio.windows import Window

from geosr.errors import OptionError


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in input pixels relative to the region.

    Attributes:
        index: Position along the axis.
        read_start: First pixel read (``<= unit_start``; earlier only for the last tile).
        read_stop: One past the last pixel read.
        unit_start: First pixel owned.
        unit_stop: One past the last pixel owned.
        head: Blend zone length at the start (0 for the first tile).
        tail: Blend zone length at the end (0 for the last tile).
    """

    index: int
    read_start: int
    read_stop: int
    unit_start: int
    unit_stop: int
    head: int
    tail: int

    @property
    def read_size(self) -> int:
        return self.read_stop - self.read_start

    @property
    def unit_size(self) -> int:
        return self.unit_stop - self.unit_start

    @property
    def lead(self) -> int:
        """Pixels read before the unit (zero weight)."""
        return self.unit_start - self.read_start


def validate_tiling(tile_size: int, overlap: int) -> None:
    """Raise ``OptionError`` unless ``tile_size``/``overlap`` make a usable grid."""
    if tile_size < 16:
        raise OptionError(f"tile size must be at least 16 pixels, got {tile_size}")
    if overlap < 0:
        raise OptionError(f"overlap must be >= 0, got {overlap}")
    if 6 * overlap > tile_size:
        raise OptionError(
            f"overlap {overlap} is too large for tile size {tile_size} "
            f"(at most tile_size // 6 = {tile_size // 6})"
        )


#: Largest growth of a tile over the requested size (``axis_tile_size``).
GROWTH_LIMIT = 1.25


def axis_tile_size(length: int, tile_size: int, overlap: int, *, grow: bool,
                   multiple: int = 1, align: int = 1) -> int:
    """Tile side along an axis of ``length`` pixels (the rule: module docstring).

    Args:
        length: Axis length in input pixels.
        tile_size: Requested tile side ``T``.
        overlap: Context shared with each neighbour, per side.
        grow: Spread a small remainder over one tile fewer, up to ``GROWTH_LIMIT * T``.
        multiple: The model's size multiple; a grown side is a multiple of it.
        align: A grown side's core (``t - 2*overlap``) is a multiple of it, so that its
            units are whole output blocks (``align_for``).

    Returns:
        ``T``, or the grown side (``T < t <= GROWTH_LIMIT * T``).
    """
    m = max(1, multiple)
    limit = int(GROWTH_LIMIT * tile_size) // m * m
    if not grow or length <= tile_size or limit <= tile_size:
        return tile_size
    z = 2 * overlap
    fewer = math.ceil((length - z) / (tile_size - z)) - 1  # >= 1, as length > tile_size
    # The smallest side whose tiles, shifted by ``t - z``, cover the axis in ``fewer``.
    grown = math.ceil((length + (fewer - 1) * z) / fewer)
    # One tile owns the whole axis (no unit boundary to align); else align the core.
    while grown % m or (fewer > 1 and (grown - z) % max(1, align)):  # < m * align steps
        grown += 1
    return grown if grown <= limit else tile_size


def align_for(scale: int) -> int:
    """The core multiple that makes ``core * scale`` a multiple of 16 (GeoTIFF blocks)."""
    return 16 // math.gcd(16, scale)


def split_axis(length: int, tile_size: int, overlap: int) -> tuple[Span, ...]:
    """Cut an axis of ``length`` pixels into tiles (see the module docstring)."""
    validate_tiling(tile_size, overlap)
    if length <= 0:
        raise OptionError(f"cannot tile an empty axis (length {length})")
    if length <= tile_size:
        return (Span(0, 0, length, 0, length, 0, 0),)
    z = 2 * overlap
    core = tile_size - z
    n = math.ceil((length - z) / core)
    bounds = [r * core for r in range(n)] + [length]
    spans = []
    for r in range(n):
        last = r == n - 1
        read_stop = length if last else bounds[r + 1] + z
        read_start = max(0, read_stop - tile_size) if last else bounds[r]
        spans.append(
            Span(r, read_start, read_stop, bounds[r], bounds[r + 1],
                 0 if r == 0 else z, 0 if last else z)
        )
    return tuple(spans)


def output_block_size(tile_size: int, overlap: int, scale: int) -> int | None:
    """Output block side that makes every unit of a ``tile_size`` grid whole blocks.

    That is ``(tile_size - 2*overlap) * scale`` when it is a multiple of 16 (GeoTIFF's
    rule) and at most 2048; else ``None``. Grown tiles (``axis_tile_size``) have a
    larger core, so their units straddle these blocks: written correctly, but a block
    may be completed by two units.
    """
    b = (tile_size - 2 * overlap) * scale
    return b if b % 16 == 0 and 16 <= b <= 2048 else None


@dataclass(frozen=True)
class Tile:
    """One model call: where it reads and which output unit it completes.

    Attributes:
        row: Tile row.
        col: Tile column.
        rows: The row span.
        cols: The column span.
    """

    row: int
    col: int
    rows: Span
    cols: Span

    @property
    def read_window(self) -> Window:
        """Input window relative to the region."""
        return Window(self.cols.read_start, self.rows.read_start,
                      self.cols.read_size, self.rows.read_size)

    @property
    def lead(self) -> tuple[int, int]:
        """Rows and columns read before the unit (offset of the unit in the tile)."""
        return self.rows.lead, self.cols.lead


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a ``height`` x ``width`` region.

    Attributes:
        height: Region height in input pixels.
        width: Region width in input pixels.
        size: Requested tile side ``T`` (input pixels, overlap included).
        overlap: Context shared with each neighbour, per side, in input pixels.
        grow: Grow tiles to leave no small remainder (``axis_tile_size``).
        multiple: The model's size multiple (for grown tiles).
        align: Grown cores are multiples of this (``align_for(scale)``).
    """

    height: int
    width: int
    size: int
    overlap: int
    grow: bool = False
    multiple: int = 1
    align: int = 1

    @property
    def axis_sizes(self) -> tuple[int, int]:
        """Tile side along the rows and along the columns (``axis_tile_size``)."""
        def side(length: int) -> int:
            return axis_tile_size(length, self.size, self.overlap, grow=self.grow,
                                  multiple=self.multiple, align=self.align)

        return side(self.height), side(self.width)

    def output_blocks(self, scale: int) -> tuple[int | None, int | None]:
        """Output block height and width that make every unit whole blocks (``None``: any).

        The requested grid keeps one square block, ``output_block_size`` of the requested
        size, for both axes (a single tile: any block). A grown grid's cores are multiples of
        ``align``, so each axis with more than one tile has the block ``core * scale``; an
        axis with one tile takes the other axis's block.
        """
        if len(self) <= 1:
            return None, None
        if not self.grow:
            b = output_block_size(self.size, self.overlap, scale)
            return b, b
        by, bx = (output_block_size(t, self.overlap, scale) if n > 1 else None
                  for t, n in zip(self.axis_sizes, self.shape, strict=True))
        return by or bx, bx or by

    @property
    def tile_size(self) -> int:
        """Largest tile side: ``size``, or the grown side (at most ``GROWTH_LIMIT * size``)."""
        return max(self.axis_sizes)

    @property
    def tile_shape(self) -> tuple[int, int]:
        """Rows and columns every tile reads (the same for all tiles of the grid)."""
        return self.rows[0].read_size, self.cols[0].read_size

    @property
    def rows(self) -> tuple[Span, ...]:
        return split_axis(self.height, self.axis_sizes[0], self.overlap)

    @property
    def cols(self) -> tuple[Span, ...]:
        return split_axis(self.width, self.axis_sizes[1], self.overlap)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return len(self.rows), len(self.cols)

    def __len__(self) -> int:
        r, c = self.shape
        return r * c

    def __iter__(self) -> Iterator[Tile]:
        rows, cols = self.rows, self.cols
        for rs in rows:
            for cs in cols:
                yield Tile(rs.index, cs.index, rs, cs)

    def border_positions(self, scale: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Output rows and columns where tile borders lie (unit and zone edges).

        A position ``p`` means the border between output pixels ``p - 1`` and ``p``.
        """

        def axis(spans: tuple[Span, ...]) -> tuple[int, ...]:
            out: set[int] = set()
            for s in spans[1:]:
                out.add(s.unit_start * scale)
                if s.head:
                    out.add((s.unit_start + s.head) * scale)
            return tuple(sorted(out))

        return axis(self.rows), axis(self.cols)


def make_grid(height: int, width: int, tile_size: int, overlap: int, *, neural: bool,
              scale: int, multiple: int = 1) -> TileGrid:
    """The grid of a run: grown tiles for neural models, the requested size otherwise.

    A network pays for every pixel it reads and gains from context, so its tiles grow;
    local methods gain nothing from it and keep the requested grid, whose units are
    whole output blocks (``output_block_size``), so their files stay as they were.

    Args:
        height: Region height in input pixels.
        width: Region width in input pixels.
        tile_size: Requested tile side.
        overlap: Context shared with each neighbour, per side.
        neural: Whether the model is a network (``geosr.models.ModelInfo.neural``).
        multiple: The model's size multiple.
        scale: The upscaling factor: grown cores are aligned so that units stay whole
            output blocks (``TileGrid.output_blocks``).
    """
    return TileGrid(height, width, tile_size, overlap, grow=neural, multiple=multiple,
                    align=align_for(scale) if neural else 1)
