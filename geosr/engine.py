"""The tile computation, in pure numpy: model values in, stored values out.

Three pure steps shared by every way of running geosr (the streaming file writer,
the Dask executor, the xarray accessor), so that they produce the same pixels:

* ``prepare_tile``: stored values (C, h, w) -> model values in [0, 1], invalid
  pixels filled;
* ``predict_tiles``: a chunk of prepared tiles through the model, band groups
  routed (``geosr.bands``), tiles without data skipped; run by a ``TileExecutor``
  (``LocalExecutor`` here, ``geosr.distributed.DaskExecutor`` on a cluster);
* ``finish_unit``: a blended unit back to stored values, masked as the input was.

``prepare_tile_fused`` and ``finish_unit_fused`` compute the same values bit for bit
(the same float64 operations in the same order) in cache-sized row chunks, without
the full-size temporaries, and skip the mask work when every pixel is valid; the
streaming writer uses them, the reference path and the xarray accessor the plain forms.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from geosr.bands import BandGroup
from geosr.errors import GeosrError
from geosr.masks import fill_invalid, upsample_nearest
from geosr.models import Upscaler
from geosr.radiometry import BandMapping, avoid_nodata, dtype_range, to_dtype

#: Elements per chunk of the fused conversions: float64 scratch of 256 KiB stays in
#: the CPU's L2 cache, where the chained operations of one chunk run.
_CHUNK_ELEMENTS = 1 << 15


def prepare_tile(data: np.ndarray, valid: np.ndarray,
                 mappings: Sequence[BandMapping]) -> np.ndarray:
    """Map stored values (C, h, w) to model values in [0, 1], invalid pixels filled."""
    x = np.stack([m.to_unit(data[c]) for c, m in enumerate(mappings)])
    if not valid.all():
        x = fill_invalid(x, valid)
    return x


def _row_chunks(h: int, w: int) -> Iterator[slice]:
    rows = max(1, _CHUNK_ELEMENTS // max(w, 1))
    for r in range(0, h, rows):
        yield slice(r, min(h, r + rows))


def prepare_tile_fused(data: np.ndarray, valid: np.ndarray,
                       mappings: Sequence[BandMapping]) -> np.ndarray:
    """``prepare_tile`` bit for bit: ``float32((float64(x) - lo) / (hi - lo))`` by chunks."""
    c, h, w = data.shape
    x = np.empty((c, h, w), dtype=np.float32)
    scratch = np.empty(_CHUNK_ELEMENTS + w, dtype=np.float64)
    for b, m in enumerate(mappings):
        span = m.hi - m.lo
        for rows in _row_chunks(h, w):
            v = scratch[: (rows.stop - rows.start) * w].reshape(-1, w)
            np.subtract(data[b, rows], m.lo, out=v, dtype=np.float64)
            v /= span
            np.copyto(x[b, rows], v, casting="unsafe")
    if not valid.all():
        x = fill_invalid(x, valid)
    return x


def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="symmetric")


def run_model(model: Upscaler, items: list[np.ndarray], batch_size: int,
              spread: bool = False) -> list[np.ndarray]:
    """Run ``model`` on (C, h, w) items in batches padded to a common, valid size.

    With ``spread`` the model must have ``predict_with_spread``
    (``geosr.ensemble.EnsembleUpscaler``); each output is then (2C, h*s, w*s): the
    prediction's C channels, then the spread's.
    """
    s, m = model.scale, max(1, model.size_multiple)
    outs: list[np.ndarray] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        h = max(x.shape[-2] for x in chunk)
        w = max(x.shape[-1] for x in chunk)
        h, w = -(-h // m) * m, -(-w // m) * m
        batch = np.stack([_pad_to(x, h, w) for x in chunk]).astype(np.float32, copy=False)
        if spread:
            # Only wrappers such as EnsembleUpscaler have it (checked by predict_tiles).
            mean, std = cast(Any, model).predict_with_spread(batch)
            pred = np.asarray(mean, dtype=np.float32)
        else:
            pred = np.asarray(model(batch), dtype=np.float32)
        if pred.shape != (len(chunk), batch.shape[1], h * s, w * s):
            raise GeosrError(
                f"model {model.name!r} returned shape {pred.shape} for input {batch.shape}"
            )
        if spread:
            pred = np.concatenate([pred, np.asarray(std, dtype=np.float32)], axis=1)
        for j, x in enumerate(chunk):
            outs.append(pred[j, :, : x.shape[-2] * s, : x.shape[-1] * s])
    return outs


@dataclass(frozen=True)
class ModelWork:
    """What a model call needs besides the pixels and the model (small, picklable).

    Attributes:
        scale: Upscaling factor.
        groups: Band groups of the run (``geosr.bands.band_groups``).
        batch_size: Model inputs per call.
        spread: Also return the model's per-pixel spread (``predict_with_spread``): each
            tile's output then has 2C channels, the prediction's then the spread's, so
            the spread travels with the prediction through any executor.
    """

    scale: int
    groups: tuple[BandGroup, ...]
    batch_size: int
    spread: bool = False


def predict_tiles(model: Upscaler, work: ModelWork, xs: Sequence[np.ndarray],
                  has_data: Sequence[bool]) -> tuple[list[np.ndarray | None], float]:
    """Model outputs (C, h*s, w*s) float32 for a chunk of tiles: the one tile computation.

    Pure in its inputs (the model aside): the local loop, the Dask workers and the
    xarray accessor all call it with the same chunks, so they produce the same pixels.

    Args:
        model: The upscaler.
        work: Scale, band groups and batch size.
        xs: Model values (C, h, w) of each tile (``prepare_tile``).
        has_data: Whether each tile has any valid pixel; tiles without are not run.

    Returns:
        ``(outputs, seconds)``: one output per tile (``None`` for tiles without data)
        and the time spent inside model calls. With ``work.spread`` an output is
        (2C, h*s, w*s): prediction, then spread (0 for bands upsampled by nearest).

    Raises:
        GeosrError: ``work.spread`` with a model that has no ``predict_with_spread``.
    """
    if work.spread and not hasattr(model, "predict_with_spread"):
        raise GeosrError(f"model {model.name!r} has no spread (run it as an ensemble)")
    s = work.scale
    items: list[np.ndarray] = []
    owners: list[tuple[int, BandGroup]] = []
    for k, x in enumerate(xs):
        if not has_data[k]:
            continue
        for g in work.groups:
            if g.mode != "nearest":
                items.append(x[list(g.inputs)])
                owners.append((k, g))
    t0 = time.perf_counter()
    preds = run_model(model, items, work.batch_size, work.spread) if items else []
    seconds = time.perf_counter() - t0
    outs: list[np.ndarray | None] = []
    for k, x in enumerate(xs):
        if not has_data[k]:
            outs.append(None)
            continue
        c, h, w = x.shape
        outs.append(np.zeros(((2 if work.spread else 1) * c, h * s, w * s),
                             dtype=np.float32))
    for (k, g), pred in zip(owners, preds, strict=True):
        out = outs[k]
        assert out is not None
        c, n = xs[k].shape[0], len(g.inputs)
        if g.mode == "replicate":
            out[g.outputs[0][1]] = pred[:n].mean(axis=0)
            if work.spread:  # the views' spread averaged like the prediction
                out[c + g.outputs[0][1]] = pred[n:].mean(axis=0)
        else:
            for ch, pos in g.outputs:
                out[pos] = pred[ch]
                if work.spread:
                    out[c + pos] = pred[n + ch]
    for k, x in enumerate(xs):
        out = outs[k]
        if out is None:
            continue
        for g in work.groups:
            if g.mode == "nearest":
                for ch, pos in g.outputs:
                    out[pos] = upsample_nearest(x[g.inputs[ch]], s)
    return outs, seconds


#: A chunk of tiles to run: ``(key, model values per tile, has-data per tile)``.
Job = tuple[Any, list[np.ndarray], list[bool]]
#: Its result: ``(key, outputs per tile or None, model seconds)``.
JobResult = tuple[Any, list[np.ndarray | None], float]


class TileExecutor(Protocol):
    """Runs ``predict_tiles`` over a stream of tile chunks, returning them in order.

    ``key`` is carried through untouched (the caller keeps what the writer needs).
    """

    def map(self, work: ModelWork, jobs: Iterable[Job]) -> Iterator[JobResult]: ...


@dataclass
class LocalExecutor:
    """Runs every chunk in this process, one after the other."""

    model: Upscaler

    def map(self, work: ModelWork, jobs: Iterable[Job]) -> Iterator[JobResult]:
        for key, xs, has_data in jobs:
            outs, seconds = predict_tiles(self.model, work, xs, has_data)
            yield key, outs, seconds


def finish_unit_fused(unit: np.ndarray, valid: np.ndarray, lr: np.ndarray, *,
                      mappings: Sequence[BandMapping], dtype: str, scale: int,
                      nodata: float | None, consistency: str = "none",
                      categorical: tuple[int, ...] = (),
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int]:
    """``finish_unit`` bit for bit, by row chunks; ``valid_hr`` is ``None`` when all valid.

    Per chunk: ``float64(u) * (hi - lo) + lo``, ``rint`` (integer types), the clip count
    and ``clip`` (only for a band with a value out of range), then the cast: the
    operations of ``from_unit`` and ``to_dtype`` in their order, on a scratch buffer
    that stays in cache.
    """
    if consistency == "exact":
        unit = _enforce_consistency(unit, lr, valid, scale, categorical)
    c, hh, ww = unit.shape
    all_valid = bool(valid.all())
    valid_hr = None if all_valid else upsample_nearest(valid, scale)
    lo_d, hi_d = dtype_range(dtype)
    integer = np.issubdtype(np.dtype(dtype), np.integer)
    data = np.empty((c, hh, ww), dtype=dtype)
    clipped = np.zeros(c, dtype=np.int64)
    scratch = np.empty(_CHUNK_ELEMENTS + ww, dtype=np.float64)
    for b, m in enumerate(mappings):
        span = m.hi - m.lo
        # The conversion is monotonic, so the band's extremes convert to the extremes of
        # its values: one check per band says whether anything clips (NaN: the full path).
        ends = np.array([unit[b].min(), unit[b].max()])
        ends = ends.astype(np.float64) * span + m.lo
        ends = np.rint(ends) if integer else ends
        in_range = bool(ends[0] >= lo_d and ends[1] <= hi_d)
        for rows in _row_chunks(hh, ww):
            v = scratch[: (rows.stop - rows.start) * ww].reshape(-1, ww)
            np.multiply(unit[b, rows], span, out=v, dtype=np.float64)
            v += m.lo
            if integer:
                np.rint(v, out=v)
            if not in_range:
                with np.errstate(invalid="ignore"):
                    over = (v < lo_d) | (v > hi_d)
                if valid_hr is not None:
                    over &= valid_hr[b, rows]
                clipped[b] += int(np.count_nonzero(over))
                np.clip(v, lo_d, hi_d, out=v)
            np.copyto(data[b, rows], v, casting="unsafe")
    moved = 0
    if nodata is not None:
        moved = avoid_nodata(data, np.True_ if valid_hr is None else valid_hr, nodata)
        fill: float = nodata
    elif np.issubdtype(data.dtype, np.floating):
        fill = np.nan
    else:
        fill = 0
    if valid_hr is not None:
        data[~valid_hr] = np.asarray(fill).astype(data.dtype)
    return data, valid_hr, clipped, moved


def _enforce_consistency(u: np.ndarray, lr: np.ndarray, valid: np.ndarray, scale: int,
                         skip: tuple[int, ...]) -> np.ndarray:
    """Shift every s x s block of ``u`` so that its mean equals the LR pixel (valid only)."""
    c, h, w = lr.shape
    blocks = u.reshape(c, h, scale, w, scale).mean(axis=(2, 4))
    delta = np.where(valid, lr - blocks, 0.0).astype(np.float32)
    for p in skip:
        delta[p] = 0.0
    return u + upsample_nearest(delta, scale)


def finish_unit(unit: np.ndarray, valid: np.ndarray, lr: np.ndarray, *,
                mappings: Sequence[BandMapping], dtype: str, scale: int,
                nodata: float | None, consistency: str = "none",
                categorical: tuple[int, ...] = (),
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Turn a blended unit (model values) into stored values, masked as the input was.

    Args:
        unit: (C, uh*s, uw*s) blended model values.
        valid: (C, uh, uw) validity of the unit's input pixels.
        lr: (C, uh, uw) model values of the unit's input pixels (for ``consistency``).
        mappings: Radiometric mapping per band.
        dtype: Stored dtype.
        scale: Upscaling factor.
        nodata: Nodata value when the input marks invalid pixels by value, else ``None``.
        consistency: ``exact`` shifts each s x s block to the mean of its input pixel.
        categorical: Band positions left untouched by ``consistency``.

    Returns:
        ``(data, valid_hr, clipped, nodata_moved)``: values in ``dtype`` (invalid pixels
        set to nodata, NaN for floats, else 0), the upsampled validity, clipped valid
        pixels per band, valid pixels moved off the nodata value.
    """
    if consistency == "exact":
        unit = _enforce_consistency(unit, lr, valid, scale, categorical)
    values = np.stack([m.from_unit(unit[c]) for c, m in enumerate(mappings)])
    valid_hr = upsample_nearest(valid, scale)
    data, clipped = to_dtype(values, dtype, valid_hr)
    moved = 0
    if nodata is not None:
        moved = avoid_nodata(data, valid_hr, nodata)
        fill: float = nodata
    elif np.issubdtype(data.dtype, np.floating):
        fill = np.nan
    else:
        fill = 0
    if not valid_hr.all():
        data[~valid_hr] = np.asarray(fill).astype(data.dtype)
    return data, valid_hr, clipped, moved
