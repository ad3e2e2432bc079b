"""Radiometry: a reversible per-band affine mapping between stored values and [0, 1].

The model works on float32 values in [0, 1]. Each selected band gets an affine
map ``u = (x - lo) / (hi - lo)`` chosen from its dtype and its data:

* ``uint8``: ``lo, hi = 0, 255`` (the range the networks were trained on).
* every other dtype (uint16, int16, uint32, int32, float32, float64, ...): the
  exact minimum and maximum of the valid pixels of the processed region, found by
  a streaming pass over windows. A uint16 reflectance band in 0..10000 thus uses
  the whole [0, 1] range, and float32 resolves its steps (1e-4 of the range is far
  above float32's 6e-8 resolution); no "max > 256 means 16 bit" guessing.

A run can fix the ranges instead (``--range LO,HI``, per band ``LO,HI;LO,HI``, or a
product preset of ``PRESETS``): the same stored value then maps to the same model
value in a full scene, an AOI and the neighbouring scene, so outputs mosaic, and one
hot pixel cannot compress the range of the rest. Values outside a fixed range are
passed to the model outside [0, 1] (not clipped on the way in).

The map is applied to the stored numbers (DN). A band's ``scale``/``offset`` tags
define physical values ``DN * scale + offset``; since both maps are affine, the
model sees the same [0, 1] image either way, and the output keeps the DN encoding
and the tags, so physical values are preserved. ``info`` reports both ranges.

The inverse map is followed by rounding (integer dtypes) and clipping to the
dtype's range; clipped pixels are counted. A valid output pixel that would land
exactly on the nodata value is moved to the nearest other value (counted too), so
no valid pixel turns into nodata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

#: Dtypes whose full range is the mapping range.
FIXED_RANGE_DTYPES = {"uint8": (0.0, 255.0)}

#: Product presets: stored values (DN) mapped to [0, 1], with the scaling they assume.
#: Reflectance 0..1 in each product's documented encoding (docs/geosr.md, "Ranges").
PRESETS: dict[str, tuple[float, float]] = {
    # Sentinel-2 L2A: reflectance = DN / 10000 (processing baselines before 04.00).
    "sentinel2-l2a": (0.0, 10000.0),
    # Sentinel-2 L2A baseline 04.00 and later: reflectance = (DN - 1000) / 10000.
    "sentinel2-l2a-offset": (1000.0, 11000.0),
    # Landsat Collection 2 Level-2 surface reflectance: DN * 0.0000275 - 0.2.
    "landsat-c2-sr": (7272.727272727273, 43636.36363636364),
    # 8-bit imagery.
    "8bit": (0.0, 255.0),
}


def parse_range(spec: str) -> tuple[tuple[float, float], ...]:
    """``LO,HI`` (every band), ``LO,HI;LO,HI;...`` (per band) or a ``PRESETS`` name.

    Raises:
        ValueError: anything else, or a pair with ``LO >= HI`` or a non-finite bound.
    """
    text = spec.strip()
    if text.lower() in PRESETS:
        return (PRESETS[text.lower()],)
    pairs = []
    for part in text.split(";"):
        items = part.split(",")
        if len(items) != 2:
            raise ValueError(f"range must be LO,HI (per band LO,HI;LO,HI) or one of "
                             f"{', '.join(PRESETS)}, got {spec!r}")
        lo, hi = (float(v) for v in items)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi:
            raise ValueError(f"range {part.strip()!r} must have finite LO < HI")
        pairs.append((lo, hi))
    return tuple(pairs)


@dataclass(frozen=True)
class BandMapping:
    """Affine map of one band between stored values and the model's [0, 1].

    Attributes:
        dtype: Stored data type (numpy name).
        lo: Stored value mapped to 0.
        hi: Stored value mapped to 1 (``hi > lo``).
        source: ``dtype`` (fixed range) or ``data`` (valid min/max of the region).
        scale: The band's scale tag (physical = DN * scale + offset).
        offset: The band's offset tag.
    """

    dtype: str
    lo: float
    hi: float
    source: str = "data"
    scale: float = 1.0
    offset: float = 0.0

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """Stored values -> float32 model values (not clipped)."""
        return ((np.asarray(x, dtype=np.float64) - self.lo) / (self.hi - self.lo)).astype(
            np.float32
        )

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Model values -> stored values as float64 (not rounded, not clipped)."""
        return np.asarray(u, dtype=np.float64) * (self.hi - self.lo) + self.lo

    @property
    def physical_range(self) -> tuple[float, float]:
        a = self.lo * self.scale + self.offset
        b = self.hi * self.scale + self.offset
        return (min(a, b), max(a, b))

    def describe(self) -> str:
        text = f"[{self.lo:g}, {self.hi:g}] -> [0, 1] ({self.source})"
        if (self.scale, self.offset) != (1.0, 0.0):
            p0, p1 = self.physical_range
            text += f"; physical [{p0:g}, {p1:g}] (scale {self.scale:g}, offset {self.offset:g})"
        return text


def dtype_range(dtype: str | np.dtype) -> tuple[float, float]:
    """The representable range of ``dtype`` (finite float range for floats)."""
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    finfo = np.finfo(dt)
    return float(finfo.min), float(finfo.max)


def iter_windows(window: Window, max_pixels: int = 1 << 22) -> Iterator[Window]:
    """Row strips covering ``window`` with at most ``max_pixels`` pixels each."""
    w = int(window.width)
    rows = max(1, max_pixels // max(w, 1))
    r0, c0, h = int(window.row_off), int(window.col_off), int(window.height)
    for r in range(0, h, rows):
        yield Window(c0, r0 + r, w, min(rows, h - r))


def choose_mappings(
    dtype: str,
    scales: tuple[float, ...],
    offsets: tuple[float, ...],
    read_valid_values: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    fixed: tuple[tuple[float, float], ...] | None = None,
) -> tuple[BandMapping, ...]:
    """Choose one mapping per band.

    Args:
        dtype: Stored dtype of the bands.
        scales: Scale tag per band.
        offsets: Offset tag per band.
        read_valid_values: Called only for data-driven dtypes; yields ``(data, valid)``
            pairs of shape (C, h, w) that cover the processed region.
        fixed: One ``(lo, hi)`` per band given by the run (``--range``): no data pass.

    Returns:
        One ``BandMapping`` per band.
    """
    n = len(scales)
    if fixed is not None:
        return tuple(BandMapping(dtype, float(lo), float(hi), "range", scales[i], offsets[i])
                     for i, (lo, hi) in enumerate(fixed))
    if dtype in FIXED_RANGE_DTYPES:
        lo, hi = FIXED_RANGE_DTYPES[dtype]
        return tuple(
            BandMapping(dtype, lo, hi, "dtype", scales[i], offsets[i]) for i in range(n)
        )
    lows = np.full(n, np.inf)
    highs = np.full(n, -np.inf)
    for data, valid in read_valid_values():
        for c in range(n):
            v = data[c][valid[c]]
            if v.size:
                lows[c] = min(lows[c], float(v.min()))
                highs[c] = max(highs[c], float(v.max()))
    out = []
    for c in range(n):
        lo, hi = float(lows[c]), float(highs[c])
        if not np.isfinite(lo):  # no valid pixel at all
            lo, hi = 0.0, 1.0
        if hi <= lo:  # constant band: any unit step keeps it exact
            hi = lo + 1.0
        out.append(BandMapping(dtype, lo, hi, "data", scales[c], offsets[c]))
    return tuple(out)


def to_dtype(values: np.ndarray, dtype: str,
             valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Round (integer dtypes) and clip float64 values into ``dtype``.

    Args:
        values: (C, H, W) float64 stored values.
        dtype: Target dtype.
        valid: Optional (C, H, W) mask: only valid pixels are counted.

    Returns:
        ``(array, clipped)``: the converted array and the count of clipped pixels per band
        (NaN is neither clipped nor counted).
    """
    lo, hi = dtype_range(dtype)
    if np.issubdtype(np.dtype(dtype), np.integer):
        values = np.rint(values)
    with np.errstate(invalid="ignore"):
        over = (values < lo) | (values > hi)
    if valid is not None:
        over &= valid
    clipped = over.reshape(over.shape[0], -1).sum(axis=1)
    out = np.clip(values, lo, hi).astype(dtype)
    return out, clipped


def avoid_nodata(out: np.ndarray, valid: np.ndarray, nodata: float | None) -> int:
    """Move valid pixels equal to ``nodata`` to the nearest other value, in place.

    Returns:
        How many pixels were moved.
    """
    if nodata is None or np.isnan(nodata):
        return 0
    nd = np.asarray(nodata).astype(out.dtype)
    hit = valid & (out == nd)
    n = int(hit.sum())
    if n:
        lo, hi = dtype_range(out.dtype)
        if np.issubdtype(out.dtype, np.integer):
            repl = nd + 1 if float(nd) < hi else nd - 1
        else:
            repl = np.nextafter(nd, np.inf if float(nd) < hi else -np.inf)
        out[hit] = np.asarray(repl).astype(out.dtype)
    return n
