"""``Plan``: everything decided about a run before the first pixel is written.

``make_plan`` validates the options against the open source (bands, dtype, AOI,
masks, band groups, tile grid, output georeferencing); ``compute_mappings`` chooses
the radiometric mapping of each band; ``source_tags`` and ``info_report`` say what the
run will write and do (the provenance tags, ``geosr info``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from geosr.bands import BandGroup, band_groups, parse_bands
from geosr.errors import InputError, OptionError
from geosr.io import DEFAULT_GDAL_CACHEMAX_MB, read_window
from geosr.masks import MaskInfo, describe_masks, read_valid
from geosr.options import SUPPORTED_DTYPES, RunOptions
from geosr.profile import BandMeta, Georef, band_meta, output_dataset_tags, output_georef
from geosr.radiometry import BandMapping, choose_mappings, iter_windows
from geosr.tiling import TileGrid, make_grid


@dataclass(frozen=True)
class Plan:
    """Everything decided before the first pixel is written.

    Attributes:
        src: Source path.
        window: Processed window of the source (the whole raster, or the AOI extent).
        scale: Upscaling factor.
        bands: Selected 1-based bands.
        dtype: Stored dtype (input and output).
        mask: How validity is encoded.
        categorical: Positions (in ``bands``) of palette bands.
        groups: Model groups.
        grid: Tile grid over ``window``.
        georef: Output georeferencing.
        meta: Metadata of the output bands (alpha last, if any).
        dataset_tags: Source dataset tags.
        ranges: Fixed ``(lo, hi)`` per band (``--range``), or ``None``: chosen from data.
        dst_nodata: The output's nodata value (``--dst-nodata``), or ``None``: the source's.
    """

    src: str
    window: Window
    scale: int
    bands: tuple[int, ...]
    dtype: str
    mask: MaskInfo
    categorical: tuple[int, ...]
    groups: tuple[BandGroup, ...]
    grid: TileGrid
    georef: Georef
    meta: tuple[BandMeta, ...]
    dataset_tags: dict[str, str]
    ranges: tuple[tuple[float, float], ...] | None = None
    dst_nodata: float | None = None

    @property
    def out_shape(self) -> tuple[int, int]:
        return int(self.window.height) * self.scale, int(self.window.width) * self.scale

    @property
    def out_count(self) -> int:
        return len(self.bands) + (1 if self.mask.kind == "alpha" and self.mask.alpha_band else 0)

    @property
    def nodata(self) -> float | None:
        """The output's nodata value: ``--dst-nodata``, else the source's when the source
        marks invalid pixels by value."""
        if self.dst_nodata is not None:
            return self.dst_nodata
        return self.mask.nodata if self.mask.kind == "nodata" else None


def make_plan(ds: Any, options: RunOptions, *, in_channels: int | None, neural: bool,
              size_multiple: int = 1) -> Plan:
    """Validate the options against an open dataset and decide the run.

    Args:
        ds: The open source.
        options: The run's options.
        in_channels: Channels the model takes (``None``: any count), from its descriptor.
        neural: Whether the model is a network (its tiles grow: ``geosr.tiling.make_grid``).
        size_multiple: The model's size multiple, from its descriptor.

    Raises:
        InputError: unsupported dtype or georeferencing.
        OptionError: bad bands or AOI.
    """
    alpha = None
    for i, ci in enumerate(ds.colorinterp, start=1):
        if ci == ColorInterp.alpha:
            alpha = i
    selected = parse_bands(options.bands, ds.count, alpha)
    dtypes = {ds.dtypes[b - 1] for b in selected}
    if len(dtypes) != 1:
        raise InputError(f"selected bands have different data types {sorted(dtypes)}")
    dtype = dtypes.pop()
    if dtype.startswith("complex"):
        raise InputError(f"complex data ({dtype}) is not supported; convert to amplitude first")
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(f"data type {dtype} is not supported")
    if options.aoi is not None:
        from geosr.aoi import aoi_window

        window = aoi_window(ds, options.aoi)
    else:
        window = Window(0, 0, ds.width, ds.height)
    mask = describe_masks(ds, selected)
    if options.dst_nodata is not None:
        _check_dst_nodata(options.dst_nodata, dtype, mask.kind)
    metas = [band_meta(ds, b) for b in selected]
    categorical = tuple(i for i, m in enumerate(metas) if m.colorinterp == ColorInterp.palette)
    if mask.kind == "alpha" and mask.alpha_band:
        metas.append(band_meta(ds, mask.alpha_band))
    groups = band_groups(len(selected), in_channels, categorical)
    ranges = options.value_range
    if ranges is not None and len(ranges) == 1:
        ranges = ranges * len(selected)
    if ranges is not None and len(ranges) != len(selected):
        raise OptionError(f"--range gives {len(ranges)} ranges for {len(selected)} bands "
                          "(give one for all, or one per band)")
    grid = make_grid(int(window.height), int(window.width), options.tile_size, options.overlap,
                     neural=neural, multiple=size_multiple, scale=options.scale)
    georef = output_georef(ds, window, options.scale)
    return Plan(
        src=str(ds.name), window=window, scale=options.scale, bands=selected, dtype=dtype,
        mask=mask, categorical=categorical, groups=groups, grid=grid, georef=georef,
        meta=tuple(metas), dataset_tags=output_dataset_tags(ds.tags()), ranges=ranges,
        dst_nodata=options.dst_nodata,
    )


def _check_dst_nodata(value: float, dtype: str, mask_kind: str) -> None:
    """``--dst-nodata`` must fit the output type and a source that marks validity by value
    (or not at all): an alpha band or a mask band stays the output's validity."""
    if mask_kind in ("alpha", "mask"):
        raise OptionError(f"--dst-nodata: the source marks invalid pixels with "
                          f"{'an alpha band' if mask_kind == 'alpha' else 'a mask'}, which "
                          "the output keeps; --dst-nodata applies to nodata-value sources")
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not (math.isfinite(value) and value == int(value) and info.min <= value <= info.max):
            raise OptionError(f"--dst-nodata {value:g} is not a {dtype} value "
                              f"({info.min}..{info.max})")


def compute_mappings(ds: Any, plan: Plan) -> tuple[BandMapping, ...]:
    """Choose the radiometric mapping of every selected band (streaming pass if needed)."""

    def valid_values() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for win in iter_windows(plan.window):
            data = read_window(ds, plan.bands, win)
            yield data, read_valid(ds, plan.bands, win, data, plan.mask)

    return choose_mappings(
        plan.dtype,
        tuple(m.scale for m in plan.meta[: len(plan.bands)]),
        tuple(m.offset for m in plan.meta[: len(plan.bands)]),
        valid_values,
        plan.ranges,
    )


def source_tags(plan: Plan, mappings: tuple[BandMapping, ...]) -> dict[str, Any]:
    """The provenance tags that depend on the source (with ``RunOptions.tags``: all of
    them)."""
    w = plan.window
    return {
        "GEOSR_SOURCE": Path(plan.src).name,
        "GEOSR_SOURCE_WINDOW": f"{int(w.col_off)},{int(w.row_off)},{int(w.width)},{int(w.height)}",
        "GEOSR_BANDS": ",".join(map(str, plan.bands)),
        "GEOSR_RADIOMETRY": [[m.lo, m.hi] for m in mappings],
    }


def memory_estimate(plan: Plan, options: RunOptions, in_channels: int | None) -> dict[str, int]:
    """Peak memory of the run by part, in bytes (independent of the scene size).

    Tiles are the grid's own (``plan.grid.tile_shape``): at most ``GROWTH_LIMIT`` times
    the requested size, and no larger than the region.
    """
    out_w = plan.out_shape[1]
    c = len(plan.bands)
    ch = in_channels or c
    b, s, o = options.batch_size, options.scale, options.overlap
    th, tw = plan.grid.tile_shape
    # The self-ensemble calls its model on up to 8 views at a time (geosr.ensemble's
    # max_batch), holds the batch's 8 views and a running mean and spread; with an
    # uncertainty map every tile output carries the spread too (2C channels).
    rows = 8 if options.ensemble else b
    per_out = 2 if options.uncertainty is not None else 1
    mem = {
        "tile_inputs": b * c * th * tw * 4 * 3,
        "model_batch": rows * ch * th * tw * 4 * (64 * 6 if in_channels else 2 + s * s),
        "tile_outputs": per_out * b * c * th * tw * s * s * 4 * 3,
        "blend_patches": per_out * c * out_w * 2 * o * s * 4,
        "gdal_cache": DEFAULT_GDAL_CACHEMAX_MB << 20,
    }
    if options.ensemble:
        mem["ensemble_views"] = b * ch * (8 * th * tw + 3 * th * tw * s * s) * 4
    mem["total"] = sum(mem.values())
    return mem


def info_report(src: str, ds: Any, georef_kind: str, plan: Plan,
                mappings: tuple[BandMapping, ...], options: RunOptions, *, model: str,
                model_note: str | None, in_channels: int | None) -> dict[str, Any]:
    """The ``geosr info`` report (JSON-serialisable): source, bands and mappings, masks,
    georeferencing, band groups, tile grid, output size and a memory estimate."""
    out_h, out_w = plan.out_shape
    itemsize = np.dtype(plan.dtype).itemsize
    rows, cols = plan.grid.shape
    return {
        "source": str(src),
        "size": {"width": ds.width, "height": ds.height, "bands": ds.count},
        "dtype": plan.dtype,
        "georeferencing": georef_kind,
        "crs": plan.georef.crs.to_string() if plan.georef.crs else None,
        "window": [int(plan.window.col_off), int(plan.window.row_off),
                   int(plan.window.width), int(plan.window.height)],
        "bands": [
            {"band": b, "description": plan.meta[i].description,
             "colorinterp": plan.meta[i].colorinterp.name, "mapping": mappings[i].describe(),
             "method": "nearest (palette)" if i in plan.categorical else "model"}
            for i, b in enumerate(plan.bands)
        ],
        "mask": plan.mask.kind,
        "nodata": plan.mask.nodata,
        "alpha_band": plan.mask.alpha_band,
        "model": model,
        "model_note": model_note,
        "ensemble": options.ensemble,
        "band_groups": [
            {"bands": [plan.bands[p] for p in g.inputs], "mode": g.mode,
             "writes": [plan.bands[p] for _, p in g.outputs]}
            for g in plan.groups
        ],
        "scale": options.scale,
        "tile_size": options.tile_size,
        "overlap": options.overlap,
        "tiles": {"rows": rows, "cols": cols, "total": rows * cols,
                  "tile_height": plan.grid.tile_shape[0], "tile_width": plan.grid.tile_shape[1]},
        "output": {"width": out_w, "height": out_h, "count": plan.out_count,
                   "bytes_uncompressed": out_w * out_h * plan.out_count * itemsize},
        "memory_estimate_bytes": memory_estimate(plan, options, in_channels),
    }
