"""Blending overlapping tile outputs with smooth weights, streamed unit by unit.

Each tile's output is multiplied by a separable weight ``w_y(y) * w_x(x)``. Along
an axis the weight is 1 inside the tile's unit and ramps across the blend zones it
shares with its neighbours; the ramp of one tile is exactly one minus the ramp of
its neighbour, so the weights of all tiles sum to 1 at every pixel (a partition of
unity: blending a constant gives the constant, and nearest-neighbour tiles give
the untiled result bit for bit). Within a zone of ``Z`` output pixels the outer
quarter on each side has weight 0 for the tile whose edge is there (its least
reliable pixels are discarded, as in crop-based tiling), and the middle half
follows a raised cosine (continuous value and slope: no visible kink).

``UnitBlender`` receives tiles in row-major order and returns each tile's unit as
soon as it is complete: contributions a tile makes to units not yet complete (its
right and bottom zones) are kept as small patches, so memory holds one row of
zone-sized patches, never a row of tiles.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from geosr.tiling import Span, Tile


def ramp(length: int) -> np.ndarray:
    """Rising weights over a blend zone of ``length`` output pixels (float32)."""
    if length <= 0:
        return np.zeros(0, dtype=np.float32)
    margin = length // 4
    inner = length - 2 * margin
    t = (np.arange(inner, dtype=np.float64) + 0.5) / inner
    rise = np.sin(0.5 * np.pi * t) ** 2
    return np.concatenate([np.zeros(margin), rise, np.ones(margin)]).astype(np.float32)


def axis_weights(span: Span, scale: int) -> np.ndarray:
    """Weights along one axis of a tile's output (length ``read_size * scale``)."""
    w = np.ones(span.read_size * scale, dtype=np.float32)
    lead = span.lead * scale
    w[:lead] = 0.0
    if span.head:
        n = span.head * scale
        w[lead : lead + n] = ramp(n)
    if span.tail:
        n = span.tail * scale
        w[-n:] = 1.0 - ramp(n)
    return w


class UnitBlender:
    """Accumulate weighted tile outputs and release completed units.

    Args:
        scale: Upscaling factor (output pixels per input pixel).
    """

    def __init__(self, scale: int) -> None:
        self.scale = scale
        # (row, col) of a unit -> list of (y, x, patch) to add (output pixels, unit-relative)
        self._patches: dict[tuple[int, int], list[tuple[int, int, np.ndarray]]] = defaultdict(list)

    @property
    def pending_bytes(self) -> int:
        """Bytes held in patches for units not yet complete."""
        return sum(p.nbytes for lst in self._patches.values() for _, _, p in lst)

    def add(self, tile: Tile, output: np.ndarray, *, consume: bool = False) -> np.ndarray:
        """Blend one tile's output and return its completed unit.

        Must be called in row-major tile order.

        Args:
            tile: The tile.
            output: (C, read_h * s, read_w * s) model output for the tile's read window.
            consume: ``output`` may be overwritten: the weights are applied in place, and
                only on the blend zones (a weight of 1 leaves a value as it is), and the
                unit is returned as a view of it. Same values as without.

        Returns:
            (C, unit_h * s, unit_w * s) final values of the tile's unit.
        """
        s = self.scale
        rs, cs = tile.rows, tile.cols
        if consume and output.flags.writeable:
            weighted = _weigh_zones(output[:, rs.lead * s :, cs.lead * s :], rs, cs, s)
        else:
            weighted = output * axis_weights(rs, s)[:, None] * axis_weights(cs, s)[None, :]
            # Drop what was read before the unit (zero weight; last tiles only).
            weighted = weighted[:, rs.lead * s :, cs.lead * s :]
        uh, uw = rs.unit_size * s, cs.unit_size * s
        # After the lead, a tile's output = its unit + the head zone of the next unit.
        if cs.tail:
            self._patches[(tile.row, tile.col + 1)].append((0, 0, weighted[:, :uh, uw:].copy()))
        if rs.tail:
            self._patches[(tile.row + 1, tile.col)].append((0, 0, weighted[:, uh:, :uw].copy()))
        if rs.tail and cs.tail:
            self._patches[(tile.row + 1, tile.col + 1)].append(
                (0, 0, weighted[:, uh:, uw:].copy())
            )
        unit = weighted[:, :uh, :uw] if consume else np.array(weighted[:, :uh, :uw], copy=True)
        for y, x, patch in self._patches.pop((tile.row, tile.col), []):
            unit[:, y : y + patch.shape[1], x : x + patch.shape[2]] += patch
        return unit


def _weigh_zones(out: np.ndarray, rs: Span, cs: Span, s: int) -> np.ndarray:
    """``out * w_y * w_x`` in place, past the lead: rows first, then columns, as the
    broadcast product evaluates; only the zones, where a weight differs from 1."""
    wy, wx = axis_weights(rs, s)[rs.lead * s :], axis_weights(cs, s)[cs.lead * s :]
    for a, b in ((0, rs.head * s), (len(wy) - rs.tail * s, len(wy))):
        if b > a:
            out[:, a:b, :] *= wy[a:b, None]
    for a, b in ((0, cs.head * s), (len(wx) - cs.tail * s, len(wx))):
        if b > a:
            out[:, :, a:b] *= wx[None, a:b]
    return out
