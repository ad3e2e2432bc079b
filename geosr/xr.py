"""xarray accessor: ``da.geosr.upscale(scale=4)`` on (rio)xarray DataArrays, lazily.

``import geosr.xr`` registers the ``geosr`` accessor on ``xarray.DataArray``. It is a
thin wrapper over ``upscale_dataarray``, which builds an *output-first* Dask graph
with the file pipeline's own pieces, so the result equals ``geosr.upscale`` on the
same raster, pixel for pixel:

* the same ``TileGrid`` over the array (tile size, overlap) and the same chunks
  of ``batch_size`` tiles in row-major order, each run through
  ``geosr.engine.predict_tiles``;
* one output block per tile *unit* (chunks of ``unit * scale`` pixels): a block
  depends on its own tile and on its upper, left and upper-left neighbours, blended
  by ``geosr.blend.UnitBlender`` in the same order as the streaming writer, then
  finished by ``geosr.engine.finish_unit`` (back to the dtype, masks re-applied).

Input windows are sliced from the (chunked) input array, so any input chunking
works; nothing runs until ``.compute()``, ``.rio.to_raster()`` or similar. A
numpy-backed DataArray gives a numpy-backed result (the same graph, run at once).

Validity comes from the values (the ``nodata`` of ``da.rio.nodata``, NaN and inf):
open rasters with ``masked=False`` (the default) to match the file pipeline, whose
internal masks and alpha bands xarray does not carry. Radiometry is the file
pipeline's (fixed range for 8-bit data, else the min/max of the valid pixels, a
lazy reduction). The result has x/y coordinates at the new resolution, the CRS,
transform (``input transform x Affine.scale(1/scale)``), nodata and attributes of
the input, plus the ``GEOSR_*`` provenance attributes.

``ensemble=True`` runs the model as its 8-view self-ensemble (as ``--ensemble``);
``uncertainty=True`` also carries the views' spread through the same graph (each
tile's prediction and spread blended together, as the file pipeline does for
``--uncertainty``) and returns an ``xarray.Dataset`` of two variables, ``sr`` and
``uncertainty``, on the same coordinates.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from geosr.bands import band_groups
from geosr.blend import UnitBlender
from geosr.engine import ModelWork, finish_unit, predict_tiles, prepare_tile
from geosr.ensemble import with_ensemble
from geosr.errors import InputError, OptionError
from geosr.masks import MaskInfo, valid_from_data
from geosr.model_cache import ModelRef, worker_model
from geosr.models import Upscaler, default_model_spec, describe_model, load_model
from geosr.options import SUPPORTED_DTYPES, RunOptions
from geosr.radiometry import FIXED_RANGE_DTYPES, BandMapping, choose_mappings
from geosr.spread import BAND_MEANING, spread_to_units
from geosr.tiling import Tile, make_grid

#: Stands in for ``RunOptions.uncertainty`` (a file for the CLI): the accessor returns
#: the spread as a Dataset variable, but the options still check it needs the ensemble.
_IN_MEMORY = "<xarray Dataset variable>"


def _mappings(dtype: str, scales: tuple[float, ...], offsets: tuple[float, ...],
              lows: np.ndarray, highs: np.ndarray) -> tuple[BandMapping, ...]:
    """``choose_mappings`` from per-band valid minima/maxima (NaN: no valid pixel)."""
    data = np.stack([lows, highs], axis=-1)[:, None, :]  # (C, 1, 2)
    valid = np.isfinite(data)
    return choose_mappings(dtype, scales, offsets, lambda: iter([(data, valid)]))


def _prepare(data: np.ndarray, mappings: tuple[BandMapping, ...],
             info: MaskInfo) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(data)
    valid = valid_from_data(data, info)
    return prepare_tile(data, valid, mappings), valid


def _predict_chunk(model: Upscaler | ModelRef, work: ModelWork,
                   prepared: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    m = worker_model(model) if isinstance(model, ModelRef) else model
    xs = [x for x, _ in prepared]
    outs, _ = predict_tiles(m, work, xs, [bool(v.any()) for _, v in prepared])
    s, k = work.scale, 2 if work.spread else 1
    return [o if o is not None else np.zeros((k * x.shape[0], x.shape[1] * s,
                                              x.shape[2] * s), dtype=np.float32)
            for o, x in zip(outs, xs, strict=True)]


def _unit(scale: int, tiles: list[Tile], preds: list[np.ndarray],
          prepared: tuple[np.ndarray, np.ndarray], mappings: tuple[BandMapping, ...],
          dtype: str, nodata: float | None, consistency: str
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Final values of the unit of ``tiles[-1]``, and its spread in stored units (NaN where
    invalid) when the predictions carry one; ``tiles`` are it and its earlier neighbours
    in row-major order, so the blender adds their patches in the same order as the
    streaming writer does (bit-identical sums)."""
    blender = UnitBlender(scale)
    unit = None
    for t, p in zip(tiles, preds, strict=True):
        unit = blender.add(t, p)
    assert unit is not None
    tile = tiles[-1]
    x, valid = prepared
    c = x.shape[0]
    uh, uw = tile.rows.unit_size, tile.cols.unit_size
    ly, lx = tile.lead
    data, valid_hr, _, _ = finish_unit(unit[:c], valid[:, ly : ly + uh, lx : lx + uw],
                                       x[:, ly : ly + uh, lx : lx + uw], mappings=mappings,
                                       dtype=dtype, scale=scale, nodata=nodata,
                                       consistency=consistency)
    spread = spread_to_units(unit[c:], valid_hr, mappings) if unit.shape[0] > c else None
    return data, spread


def _out_coords(coord: np.ndarray, step: float, scale: int) -> np.ndarray:
    """Pixel-centre coordinates of the upscaled axis (``step``: input pixel size)."""
    sub = (np.arange(scale) + 0.5) / scale - 0.5  # sub-pixel centres, in input pixels
    return (np.asarray(coord, dtype=np.float64)[:, None] + sub[None, :] * step).ravel()


def upscale_dataarray(da: xr.DataArray, *, scale: int, model: str | Upscaler | None = None,
                      tile_size: int | None = None, overlap: int | None = None,
                      batch_size: int | None = None, device: str = "auto",
                      consistency: str = "none", ensemble: bool = False,
                      uncertainty: bool = False) -> xr.DataArray | xr.Dataset:
    """Super-resolve a (band, y, x) or (y, x) DataArray by ``scale``, lazily.

    Args:
        da: A DataArray with rioxarray georeferencing (``rioxarray.open_rasterio``),
            dask- or numpy-backed.
        scale: 2, 3 or 4.
        model: As ``geosr.upscale``.
        tile_size, overlap, batch_size, device, consistency: As ``geosr.upscale``.
        ensemble: Run the model as its 8-view self-ensemble (``--ensemble``; ~8x the
            model time).
        uncertainty: Also return the ensemble's per-pixel spread (needs ``ensemble``):
            the same pixels as ``geosr upscale --ensemble --uncertainty U.tif``.

    Returns:
        Without ``uncertainty``: a DataArray ``scale`` times larger along y and x, same
        dtype, dask-backed if ``da`` is (chunks = tile units x scale), with CRS,
        transform, nodata and the ``GEOSR_*`` attributes. With ``uncertainty``: an
        ``xarray.Dataset`` holding that DataArray as ``sr`` and, as ``uncertainty``,
        the population std of the 8 views' predictions, float32 in the output's stored
        units (the model-range std times the mapping's ``hi - lo``), NaN where ``sr`` is
        nodata, with the same coordinates, CRS and transform, nodata NaN and the
        attribute ``GEOSR_BAND_MEANING``. It marks where the views disagree; it is not
        an error estimate (docs/ENSEMBLE.md).

    Raises:
        GeosrError: bad options, dimensions or dtype.
    """
    import dask
    import dask.array as dsa
    import rioxarray  # noqa: F401 - registers the .rio accessor

    if not isinstance(uncertainty, bool):
        raise OptionError(f"uncertainty must be true or false, got {uncertainty!r}")
    opts = RunOptions.from_kwargs(scale=scale, model=model, tile_size=tile_size,
                                  overlap=overlap, batch_size=batch_size, device=device,
                                  consistency=consistency, ensemble=ensemble,
                                  uncertainty=_IN_MEMORY if uncertainty else None)
    scale, tile_size, batch_size = opts.scale, opts.tile_size, opts.batch_size
    squeeze = da.ndim == 2
    if squeeze:
        da = da.expand_dims("band")
    ydim, xdim = da.rio.y_dim, da.rio.x_dim
    if da.ndim != 3 or da.dims[1:] != (ydim, xdim):
        raise InputError(f"expected dims (band, {ydim}, {xdim}), got {da.dims}")
    dtype = str(da.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(f"data type {dtype} is not supported")
    c, h, w = (int(n) for n in da.shape)
    nodata = da.rio.nodata
    nodata = None if nodata is None else float(nodata)
    info = MaskInfo("nodata", nodata=nodata) if nodata is not None else MaskInfo("none")
    if model is None:
        model, _ = default_model_spec(scale)
    upscaler = with_ensemble(load_model(model, scale, device=opts.device), opts.ensemble)
    # Tasks reach the model through a tiny reference when it has a name (each process
    # loads it once); an object is one node of the graph, shipped once per worker.
    ref: Any = (ModelRef.for_spec(model, scale, opts.device, upscaler.sha256,
                                  ensemble=opts.ensemble)
                if isinstance(model, str)
                else dask.delayed(upscaler, pure=False))
    lazy = da.chunks is not None
    arr = da.data if lazy else dsa.from_array(np.asarray(da.data), chunks=-1)

    scales = tuple(float(da.attrs.get("scale_factor", 1.0)) for _ in range(c))
    offsets = tuple(float(da.attrs.get("add_offset", 0.0)) for _ in range(c))
    mappings: Any
    if dtype in FIXED_RANGE_DTYPES:
        nan = np.full(c, np.nan)
        mappings = _mappings(dtype, scales, offsets, nan, nan)
    else:  # the valid minimum and maximum of each band: a lazy reduction
        masked = dsa.where(valid_from_data(arr, info), arr.astype(np.float64), np.nan)
        mappings = dask.delayed(_mappings)(dtype, scales, offsets,
                                           dsa.nanmin(masked, axis=(1, 2)),
                                           dsa.nanmax(masked, axis=(1, 2)))

    described = describe_model(upscaler, scale)  # the same grid as the file pipeline's
    grid = make_grid(h, w, tile_size, opts.overlap, neural=described.neural,
                     multiple=described.size_multiple, scale=scale)
    work = ModelWork(scale, band_groups(c, upscaler.in_channels, ()), batch_size,
                     spread=uncertainty)
    tiles = list(grid)
    prepared = {}
    for t in tiles:
        rs, cs = t.rows, t.cols
        window = arr[:, rs.read_start : rs.read_stop, cs.read_start : cs.read_stop]
        prepared[(t.row, t.col)] = dask.delayed(_prepare)(window, mappings, info)
    preds: dict[tuple[int, int], Any] = {}
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i : i + batch_size]
        out = dask.delayed(_predict_chunk, nout=len(chunk))(
            ref, work, [prepared[(t.row, t.col)] for t in chunk])
        for k, t in enumerate(chunk):
            preds[(t.row, t.col)] = out[k]
    rows, cols = grid.shape
    by_pos = {(t.row, t.col): t for t in tiles}
    blocks: list[list[Any]] = []
    spread_blocks: list[list[Any]] = []
    for r in range(rows):
        line, spread_line = [], []
        for q in range(cols):
            keys = [k for k in ((r - 1, q - 1), (r - 1, q), (r, q - 1), (r, q)) if k in by_pos]
            tile = by_pos[(r, q)]
            unit = dask.delayed(_unit, nout=2)(scale, [by_pos[k] for k in keys],
                                               [preds[k] for k in keys], prepared[(r, q)],
                                               mappings, dtype, nodata, opts.consistency)
            shape = (c, tile.rows.unit_size * scale, tile.cols.unit_size * scale)
            line.append(dsa.from_delayed(unit[0], shape=shape, dtype=dtype))
            spread_line.append(dsa.from_delayed(unit[1], shape=shape, dtype=np.float32))
        blocks.append(line)
        spread_blocks.append(spread_line)
    result = dsa.block(blocks)
    spread = dsa.block(spread_blocks) if uncertainty else None
    if not lazy:  # one run of the graph for both arrays
        result, spread = dask.compute(result, spread, scheduler="synchronous")

    transform = da.rio.transform()
    out_transform = transform @ Affine.scale(1 / scale)
    coords: dict[str, Any] = {
        "band": da.coords["band"].values if "band" in da.coords else np.arange(1, c + 1),
        ydim: _out_coords(da.coords[ydim].values, transform.e, scale),
        xdim: _out_coords(da.coords[xdim].values, transform.a, scale),
    }
    tags = opts.tags(upscaler)
    out = xr.DataArray(result, dims=da.dims, coords=coords, name=da.name)
    out.attrs = {k: v for k, v in da.attrs.items()
                 if not str(k).startswith("STATISTICS_") and k != "_FillValue"}
    out.attrs.update(tags)
    out = _georeferenced(out, da, out_transform, nodata)
    if spread is None:
        return out.squeeze("band", drop=True) if squeeze else out
    unc = xr.DataArray(spread, dims=da.dims, coords=coords, name="uncertainty",
                       attrs={**tags, "GEOSR_BAND_MEANING": BAND_MEANING})
    unc = _georeferenced(unc, da, out_transform, float("nan"))
    ds = xr.Dataset({"sr": out, "uncertainty": unc}, attrs=dict(tags))
    return ds.squeeze("band", drop=True) if squeeze else ds


def _georeferenced(out: xr.DataArray, da: xr.DataArray, transform: Affine,
                   nodata: float | None) -> xr.DataArray:
    """``out`` with ``da``'s CRS, ``transform`` and ``nodata`` written (rioxarray)."""
    if da.rio.crs is not None:
        out = out.rio.write_crs(da.rio.crs)
    out = out.rio.write_transform(transform)
    if nodata is not None:
        out = out.rio.write_nodata(nodata, encoded=False)
    return out


@xr.register_dataarray_accessor("geosr")
class GeosrAccessor:
    """``da.geosr``: geosr operations on a DataArray (stateless)."""

    def __init__(self, da: xr.DataArray) -> None:
        self._da = da

    @functools.wraps(upscale_dataarray)
    def upscale(self, **kwargs: Any) -> xr.DataArray | xr.Dataset:
        return upscale_dataarray(self._da, **kwargs)

    # help() and IDEs show the wrapped function's keywords, less ``da``.
    _sig = inspect.signature(upscale_dataarray)
    upscale.__signature__ = _sig.replace(  # type: ignore[attr-defined]
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                    *list(_sig.parameters.values())[1:]])
    del _sig

__all__ = ["GeosrAccessor", "upscale_dataarray"]
