"""The tile grid: which input window each model call sees, and which output it owns.

Along each axis of length ``L`` the grid has ``n`` tiles. Tile ``r`` owns the
*unit* ``[u_r, u_{r+1})`` with ``u_r = r * core`` and ``core = tile_size - 2*overlap``
(the last unit takes the rest); the units partition the axis. Tile ``r`` reads
``[u_r, u_{r+1} + 2*overlap)``, exactly ``tile_size`` pixels. Neighbouring tiles
share the *zone* ``[u_r, u_r + 2*overlap)``, where their outputs are blended (see
``geosr.blend``). The last tile is shifted back to read a full ``tile_size`` ending
at the raster edge, so it is never a sliver with little context; the extra pixels
it reads before its unit get zero weight. All tiles thus have the same size
(batches need no padding), and unit boundaries fall on multiples of ``core``, so
with an output block of ``core * scale`` pixels every unit is whole output blocks
(written once, flushed at once). A raster smaller than a tile is one tile. Rows
and columns are split independently; tiles are visited row-major.

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
    """Output block side that makes every unit whole blocks, if a valid one exists.

    That is ``(tile_size - 2*overlap) * scale`` when it is a multiple of 16 (GeoTIFF's
    rule) and at most 2048; else ``None``.
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
        tile_size: Largest tile side (input pixels, overlap included).
        overlap: Context shared with each neighbour, per side, in input pixels.
    """

    height: int
    width: int
    tile_size: int
    overlap: int

    @property
    def rows(self) -> tuple[Span, ...]:
        return split_axis(self.height, self.tile_size, self.overlap)

    @property
    def cols(self) -> tuple[Span, ...]:
        return split_axis(self.width, self.tile_size, self.overlap)

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
