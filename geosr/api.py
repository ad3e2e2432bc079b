"""``upscale`` and ``describe``: a run from top to bottom.

``upscale`` resolves the options, opens the source, plans the run (``geosr.plan``),
loads the model (``geosr.models``), picks an executor (local, or Dask:
``geosr.distributed``), then writes through a temporary file (``geosr.io``) that the
stream (``geosr.stream``) fills and an optional COG copy finishes; only a complete
result is renamed onto the destination. Every step is validated before the first
pixel is written, and the input before a (possibly large) model is loaded.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioError

from geosr.engine import LocalExecutor, TileExecutor
from geosr.ensemble import with_ensemble
from geosr.errors import GeosrError, GeosrWarning, InputError, OptionError, OutputError, one_line
from geosr.io import (
    atomic_destination,
    check_destination,
    check_source,
    default_destination,
    gdal_env_options,
    open_source,
    translate_to_cog,
)
from geosr.limits import check_limits
from geosr.models import (
    Upscaler,
    default_model_spec,
    describe_model,
    load_model,
    model_record,
)
from geosr.options import RunOptions
from geosr.plan import compute_mappings, info_report, make_plan, source_tags
from geosr.profile import source_georef_kind
from geosr.stream import UpscaleResult, write_plan


def upscale(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    scale: int | None = None,
    model: str | Upscaler | None = None,
    bands: str | Sequence[int] | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    creation_options: dict[str, str] | Sequence[str] | None = None,
    cog: bool = False,
    aoi: str | Path | None = None,
    overwrite: bool = False,
    consistency: str = "none",
    value_range: str | Sequence[tuple[float, float]] | None = None,
    dst_nodata: float | None = None,
    ensemble: bool = False,
    uncertainty: str | Path | None = None,
    progress: bool = False,
    cluster: Any = None,
    options: RunOptions | None = None,
) -> UpscaleResult:
    """Super-resolve ``src`` by ``scale`` into a georeferenced GeoTIFF.

    Args:
        src: Any raster rasterio opens (GeoTIFF, COG, VRT, JP2, ...).
        dst: Output path; default ``<stem>_x<scale>.tif`` beside ``src``.
        scale: 2, 3 or 4.
        model: An ``Upscaler``, ``nearest``/``bicubic``/``lanczos``, a shipped weights
            name, a ``.safetensors`` path, or ``None`` for ``default_model_spec(scale)``.
        bands: 1-based bands (``"4,3,2"`` or a sequence); default all but alpha.
        tile_size: Largest tile side in input pixels, overlap included.
        overlap: Context shared with each neighbouring tile, per side, in input pixels.
        batch_size: Model inputs per call.
        device: ``auto``, ``cpu`` or ``cuda`` (neural models).
        creation_options: GTiff creation options overriding the defaults (``KEY=VAL``).
        cog: Write a Cloud Optimized GeoTIFF with averaged overviews.
        aoi: Vector file; only the extent of its polygons is super-resolved.
        overwrite: Replace an existing ``dst``.
        consistency: ``exact`` shifts each s x s block so that its mean equals the input.
        value_range: Fixed stored-value range(s) mapped to [0, 1] (``RunOptions``).
        dst_nodata: The output's nodata value (default: the source's).
        ensemble: Run the model as its 8-view self-ensemble (~8x the model time).
        uncertainty: Also write the ensemble's per-pixel spread to this GeoTIFF (needs
            ``ensemble``; same grid and safety rules as ``dst``; docs/geosr.md).
        progress: Show a progress bar on stderr.
        cluster: Run the model on a Dask cluster: a ``distributed.Client`` or a
            ``geosr.distributed.DaskCluster`` (``geosr.distributed.connect``). This
            process still reads the windows and is the one writer; the output is the
            same as without a cluster (see docs/geosr.md, "Scale-out").
        options: A ``RunOptions`` instead of the option arguments (``scale`` through
            ``uncertainty``), which must then be left at their defaults.

    Returns:
        An ``UpscaleResult``.

    Raises:
        GeosrError: any problem with the input, options or destinations; nothing is
            left at ``dst`` nor at ``uncertainty``.
    """
    t_start = time.perf_counter()
    opts = options or RunOptions.from_kwargs(
        scale=scale, model=model, bands=bands, tile_size=tile_size, overlap=overlap,
        batch_size=batch_size, device=device, creation_options=creation_options, cog=cog,
        aoi=aoi, consistency=consistency, value_range=value_range, dst_nodata=dst_nodata,
        ensemble=ensemble, uncertainty=uncertainty)
    check_source(src)  # a missing source is reported before anything about DST
    dst_path = Path(dst) if dst is not None else default_destination(src, opts.scale)
    check_destination(dst_path, overwrite=overwrite, src=str(src))
    unc_path = Path(opts.uncertainty) if opts.uncertainty is not None else None
    if unc_path is not None:
        check_destination(unc_path, overwrite=overwrite, src=str(src))
        if unc_path.absolute() == dst_path.absolute():
            raise OptionError(f"--uncertainty {unc_path} is the output file")
    fallback_warning = None
    if opts.model is None:
        spec, fallback_warning = default_model_spec(opts.scale)
        opts = opts.with_model(spec)
    info = describe_model(opts.model, opts.scale)

    with rasterio.Env(**gdal_env_options()), open_source(src) as ds:
        if ds.count == 0:
            raise InputError(f"{src} has no bands")
        plan = make_plan(ds, opts, in_channels=info.in_channels, neural=info.neural,
                         size_multiple=info.size_multiple)
        check_limits(plan, opts, in_channels=info.in_channels,
                     folder=dst_path.parent if str(dst_path.parent) else Path("."))
        # With a cluster the workers load the model on their own device; this process
        # only needs its descriptor (name, digest, channels) for the tags.
        upscaler = with_ensemble(load_model(opts.model, opts.scale,
                                            device=opts.device if cluster is None else "cpu"),
                                 opts.ensemble)
        if upscaler.in_channels != info.in_channels:
            raise GeosrError(f"model {upscaler.name!r} takes {upscaler.in_channels} channels, "
                             f"but its descriptor says {info.in_channels}")
        mappings = compute_mappings(ds, plan)
        executor: TileExecutor
        if cluster is None:
            executor = LocalExecutor(upscaler)
        else:
            from geosr.distributed import DaskExecutor

            # A model object travels as given (wrapped); a name is wrapped by the workers.
            executor = DaskExecutor.create(
                cluster, opts.model if isinstance(opts.model, str) else upscaler, upscaler,
                scale=opts.scale, device=opts.device, ensemble=opts.ensemble)
        if fallback_warning:  # said once the run is known to be valid
            warnings.warn(fallback_warning, GeosrWarning, stacklevel=2)
        tags = {**opts.tags(upscaler), **source_tags(plan, mappings)}
        with ExitStack() as stack:
            tmp = stack.enter_context(
                atomic_destination(dst_path, overwrite=overwrite, src=str(src)))
            # Entered second, so renamed first: both only once the whole run succeeded.
            unc_tmp = None if unc_path is None else stack.enter_context(
                atomic_destination(unc_path, overwrite=overwrite, src=str(src)))
            stage = _stage(tmp, opts.cog)
            unc_stage = None if unc_tmp is None else _stage(unc_tmp, opts.cog)
            try:
                result = write_plan(
                    ds, plan, mappings, stage, model_name=upscaler.name, tags=tags,
                    creation_options=opts.co, batch_size=opts.batch_size,
                    consistency=opts.consistency, progress=progress, executor=executor,
                    spread_path=unc_stage)
                if opts.cog:
                    _to_cog(stage, tmp, opts.co, "nearest" if plan.categorical else "average")
                    if unc_stage is not None and unc_tmp is not None:
                        _to_cog(unc_stage, unc_tmp, opts.co, "average")
            finally:
                if opts.cog:
                    for st in (stage, unc_stage):
                        for p in (() if st is None else (st, Path(str(st) + ".aux.xml"))):
                            with suppress(FileNotFoundError):
                                p.unlink()
    result.dst = dst_path
    result.seconds = time.perf_counter() - t_start
    if fallback_warning:
        result.warnings.append(fallback_warning)
    if result.tiles and result.skipped_tiles == result.tiles:
        result.warnings.append(f"{src} has no valid pixel in the processed area: {dst_path} "
                               "is all nodata")
        warnings.warn(result.warnings[-1], GeosrWarning, stacklevel=2)
    return result


def _stage(tmp: Path, cog: bool) -> Path:
    """Where the stream writes: ``tmp`` itself, or a staging file the COG is copied from."""
    return tmp.with_name(tmp.name + ".stage.tif") if cog else tmp


def _to_cog(stage: Path, tmp: Path, co: dict[str, str], resampling: str) -> None:
    try:
        translate_to_cog(stage, tmp, creation_options=co, resampling=resampling)
    except (RasterioError, OSError, ValueError, TypeError) as e:
        raise OutputError(f"cannot write the COG: {one_line(e)}") from e


def describe(src: str | Path, *, scale: int | None = None, model: str | None = None,
             bands: str | Sequence[int] | None = None, tile_size: int | None = None,
             overlap: int | None = None, batch_size: int | None = None,
             aoi: str | Path | None = None, options: RunOptions | None = None
             ) -> dict[str, Any]:
    """What ``upscale`` would do, without writing anything (``geosr info``).

    Args:
        src: The source raster.
        scale, model, bands, tile_size, overlap, batch_size, aoi: As ``upscale``.
        options: A ``RunOptions`` instead of the option arguments.

    Returns:
        A JSON-serialisable dict: source, bands and mappings, masks, georeferencing,
        band groups, tile grid, output size, a memory estimate, and what the model was
        trained on and tested with (``model_training``: ``geosr.models.model_record``).
    """
    opts = options or RunOptions.from_kwargs(
        scale=scale, model=model, bands=bands, tile_size=tile_size, overlap=overlap,
        batch_size=batch_size, aoi=aoi)
    fallback = None
    if opts.model is None:
        spec, fallback = default_model_spec(opts.scale)
        opts = opts.with_model(spec)
    if not isinstance(opts.model, str):
        raise OptionError("describe takes a model name or path")
    info = describe_model(opts.model, opts.scale)
    with rasterio.Env(**gdal_env_options()), open_source(src) as ds:
        plan = make_plan(ds, opts, in_channels=info.in_channels, neural=info.neural,
                         size_multiple=info.size_multiple)
        mappings = compute_mappings(ds, plan)
        report = info_report(str(src), ds, source_georef_kind(ds), plan, mappings, opts,
                             model=opts.model, model_note=fallback,
                             in_channels=info.in_channels)
    report["model_training"] = model_record(opts.model)
    return report
