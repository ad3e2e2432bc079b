"""``upscale``: super-resolve a raster window by window into a new GeoTIFF.

The run is planned first (``make_plan``: bands, radiometry, masks, tile grid,
georeferencing; all validated before anything is written), then streamed: tiles
are read, filled and mapped to [0, 1], batched through the model, blended into
units (``geosr.blend``), mapped back, masked and written. Memory is bounded by
the tile and batch sizes plus one row of blend-zone patches, never by the scene.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geosr import __version__
from geosr.bands import BandGroup, band_groups, parse_bands
from geosr.blend import UnitBlender
from geosr.errors import GeosrError, GeosrWarning, InputError, OptionError, OutputError
from geosr.io import (
    DEFAULT_GDAL_CACHEMAX_MB,
    atomic_destination,
    check_destination,
    default_destination,
    gdal_env_options,
    translate_to_cog,
)
from geosr.masks import MaskInfo, describe_masks, fill_invalid, read_valid, upsample_nearest
from geosr.models import Upscaler, default_model_spec, load_model
from geosr.profile import (
    AI_NOTE,
    BandMeta,
    Georef,
    band_meta,
    output_georef,
    output_profile,
    parse_creation_options,
    source_georef_kind,
    write_metadata,
)
from geosr.radiometry import BandMapping, avoid_nodata, choose_mappings, iter_windows, to_dtype
from geosr.tiling import Tile, TileGrid, output_block_size, validate_tiling

#: Scales the CLI accepts (LGUN's).
SCALES = (2, 3, 4)
#: Default tile side in input pixels (overlap included). See docs/geosr.md for the
#: tiled-vs-whole-image measurement behind these numbers.
DEFAULT_TILE_SIZE = 256
#: Default context shared with each neighbour, per side, in input pixels.
DEFAULT_OVERLAP = 16
#: Default number of model inputs per call.
DEFAULT_BATCH_SIZE = 4
CONSISTENCY = ("none", "exact")
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64",
                    "uint64", "float32", "float64")


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

    @property
    def out_shape(self) -> tuple[int, int]:
        return int(self.window.height) * self.scale, int(self.window.width) * self.scale

    @property
    def out_count(self) -> int:
        return len(self.bands) + (1 if self.mask.kind == "alpha" and self.mask.alpha_band else 0)


@dataclass
class UpscaleResult:
    """What a run did.

    Attributes:
        dst: The written file.
        model: Model name.
        scale: Upscaling factor.
        tiles: Number of tiles.
        skipped_tiles: Tiles without any valid pixel (not sent to the model).
        clipped: Clipped valid pixels per output band.
        nodata_moved: Valid pixels moved off the nodata value.
        seconds: Wall time of the run.
        model_seconds: Time spent inside model calls.
        mappings: The radiometric mapping of each band.
    """

    dst: Path
    model: str
    scale: int
    tiles: int
    skipped_tiles: int
    clipped: list[int]
    nodata_moved: int
    seconds: float
    model_seconds: float
    mappings: tuple[BandMapping, ...] = field(default_factory=tuple)

    @property
    def clipped_total(self) -> int:
        return int(sum(self.clipped))


@contextmanager
def open_source(path: str | Path) -> Iterator[Any]:
    """Open a raster for reading, turning GDAL failures into one-line ``InputError``."""
    p = str(path)
    if not Path(p).exists() and "://" not in p and not p.startswith("/vsi"):
        raise InputError(f"{p}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(p)
    except RasterioError as e:
        raise InputError(f"cannot open {p}: {_one_line(e)}") from e
    with ds:
        yield ds


def _one_line(e: BaseException) -> str:
    """The most specific message of ``e`` and its causes, on one line."""
    texts = []
    cur: BaseException | None = e
    while cur is not None and len(texts) < 4:
        t = " ".join(str(cur).split())
        if t and "previous exception" not in t:
            texts.append(t)
        cur = cur.__cause__ or cur.__context__
    return texts[-1] if texts else type(e).__name__


def make_plan(
    ds: Any,
    *,
    scale: int,
    in_channels: int | None,
    bands: str | Sequence[int] | None = None,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    aoi: str | Path | None = None,
) -> Plan:
    """Validate the options against an open dataset and decide the run.

    Raises:
        InputError: unsupported dtype or georeferencing.
        OptionError: bad scale, bands, tiling or AOI.
    """
    if not isinstance(scale, int) or isinstance(scale, bool) or scale not in SCALES:
        raise OptionError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
    validate_tiling(tile_size, overlap)
    alpha = None
    for i, ci in enumerate(ds.colorinterp, start=1):
        if ci == ColorInterp.alpha:
            alpha = i
    selected = parse_bands(bands, ds.count, alpha)
    dtypes = {ds.dtypes[b - 1] for b in selected}
    if len(dtypes) != 1:
        raise InputError(f"selected bands have different data types {sorted(dtypes)}")
    dtype = dtypes.pop()
    if dtype.startswith("complex"):
        raise InputError(f"complex data ({dtype}) is not supported; convert to amplitude first")
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(f"data type {dtype} is not supported")
    if aoi is not None:
        from geosr.aoi import aoi_window

        window = aoi_window(ds, aoi)
    else:
        window = Window(0, 0, ds.width, ds.height)
    mask = describe_masks(ds, selected)
    metas = [band_meta(ds, b) for b in selected]
    categorical = tuple(i for i, m in enumerate(metas) if m.colorinterp == ColorInterp.palette)
    if mask.kind == "alpha" and mask.alpha_band:
        metas.append(band_meta(ds, mask.alpha_band))
    groups = band_groups(len(selected), in_channels, categorical)
    grid = TileGrid(int(window.height), int(window.width), tile_size, overlap)
    georef = output_georef(ds, window, scale)
    return Plan(
        src=str(ds.name), window=window, scale=scale, bands=selected, dtype=dtype, mask=mask,
        categorical=categorical, groups=groups, grid=grid, georef=georef, meta=tuple(metas),
        dataset_tags=dict(ds.tags()),
    )


def compute_mappings(ds: Any, plan: Plan) -> tuple[BandMapping, ...]:
    """Choose the radiometric mapping of every selected band (streaming pass if needed)."""

    def valid_values() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for win in iter_windows(plan.window):
            data = _read(ds, plan.bands, win)
            yield data, read_valid(ds, plan.bands, win, data, plan.mask)

    return choose_mappings(
        plan.dtype,
        tuple(m.scale for m in plan.meta[: len(plan.bands)]),
        tuple(m.offset for m in plan.meta[: len(plan.bands)]),
        valid_values,
    )


def _read(ds: Any, bands: tuple[int, ...] | int, window: Window) -> np.ndarray:
    try:
        return ds.read(bands, window=window)
    except RasterioError as e:
        raise InputError(f"cannot read {ds.name}: {_one_line(e)}") from e


@dataclass
class _TileData:
    tile: Tile
    x: np.ndarray  # (C, h, w) float32 model values, invalid pixels filled
    valid: np.ndarray  # (C, h, w) bool
    alpha: np.ndarray | None  # (h, w) source alpha values


def prepare_tile(data: np.ndarray, valid: np.ndarray,
                 mappings: Sequence[BandMapping]) -> np.ndarray:
    """Map stored values (C, h, w) to model values in [0, 1], invalid pixels filled.

    Pure: the file pipeline and the xarray accessor both call it.
    """
    x = np.stack([m.to_unit(data[c]) for c, m in enumerate(mappings)])
    if not valid.all():
        x = fill_invalid(x, valid)
    return x


def _load_tile(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], tile: Tile) -> _TileData:
    w = tile.read_window
    win = Window(plan.window.col_off + w.col_off, plan.window.row_off + w.row_off,
                 w.width, w.height)
    data = _read(ds, plan.bands, win)
    valid = read_valid(ds, plan.bands, win, data, plan.mask)
    x = prepare_tile(data, valid, mappings)
    alpha = None
    if plan.mask.kind == "alpha" and plan.mask.alpha_band:
        alpha = _read(ds, plan.mask.alpha_band, win)
    return _TileData(tile, x, valid, alpha)


def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="symmetric")


def _run_model(model: Upscaler, items: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Run ``model`` on (C, h, w) items in batches padded to a common, valid size."""
    s, m = model.scale, max(1, model.size_multiple)
    outs: list[np.ndarray] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        h = max(x.shape[-2] for x in chunk)
        w = max(x.shape[-1] for x in chunk)
        h, w = -(-h // m) * m, -(-w // m) * m
        batch = np.stack([_pad_to(x, h, w) for x in chunk]).astype(np.float32, copy=False)
        pred = np.asarray(model(batch), dtype=np.float32)
        if pred.shape != (len(chunk), batch.shape[1], h * s, w * s):
            raise GeosrError(
                f"model {model.name!r} returned shape {pred.shape} for input {batch.shape}"
            )
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
    """

    scale: int
    groups: tuple[BandGroup, ...]
    batch_size: int


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
        and the time spent inside model calls.
    """
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
    preds = _run_model(model, items, work.batch_size) if items else []
    seconds = time.perf_counter() - t0
    outs: list[np.ndarray | None] = []
    for k, x in enumerate(xs):
        if not has_data[k]:
            outs.append(None)
            continue
        c, h, w = x.shape
        outs.append(np.zeros((c, h * s, w * s), dtype=np.float32))
    for (k, g), pred in zip(owners, preds, strict=True):
        out = outs[k]
        assert out is not None
        if g.mode == "replicate":
            out[g.outputs[0][1]] = pred.mean(axis=0)
        else:
            for ch, pos in g.outputs:
                out[pos] = pred[ch]
    for k, x in enumerate(xs):
        out = outs[k]
        if out is None:
            continue
        for g in work.groups:
            if g.mode == "nearest":
                for ch, pos in g.outputs:
                    out[pos] = upsample_nearest(x[g.inputs[ch]], s)
    return outs, seconds


class TileExecutor(Protocol):
    """Runs ``predict_tiles`` over a stream of tile chunks, returning them in order.

    Each job is ``(key, xs, has_data)``; each result ``(key, outputs, model_seconds)``.
    ``key`` is carried through untouched (the caller keeps what the writer needs).
    """

    def map(self, work: ModelWork,
            jobs: Iterable[tuple[Any, list[np.ndarray], list[bool]]]
            ) -> Iterator[tuple[Any, list[np.ndarray | None], float]]: ...


@dataclass
class LocalExecutor:
    """Runs every chunk in this process, one after the other."""

    model: Upscaler

    def map(self, work: ModelWork,
            jobs: Iterable[tuple[Any, list[np.ndarray], list[bool]]]
            ) -> Iterator[tuple[Any, list[np.ndarray | None], float]]:
        for key, xs, has_data in jobs:
            outs, seconds = predict_tiles(self.model, work, xs, has_data)
            yield key, outs, seconds


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

    Pure: the file writer and the xarray accessor both call it.

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


class _Writer:
    """Converts completed units to the output dtype, applies masks and writes them."""

    def __init__(self, out: Any, plan: Plan, mappings: tuple[BandMapping, ...],
                 consistency: str) -> None:
        self.out = out
        self.plan = plan
        self.mappings = mappings
        self.consistency = consistency
        self.clipped = np.zeros(len(plan.bands), dtype=np.int64)
        self.nodata_moved = 0

    def write(self, tile: Tile, unit: np.ndarray, td: _TileData) -> None:
        plan, s = self.plan, self.plan.scale
        uh, uw = tile.rows.unit_size, tile.cols.unit_size
        ly, lx = tile.lead
        kind = plan.mask.kind
        data, valid_hr, clipped, moved = finish_unit(
            unit, td.valid[:, ly : ly + uh, lx : lx + uw], td.x[:, ly : ly + uh, lx : lx + uw],
            mappings=self.mappings, dtype=plan.dtype, scale=s,
            nodata=plan.mask.nodata if kind == "nodata" else None,
            consistency=self.consistency, categorical=plan.categorical,
        )
        self.clipped += clipped
        self.nodata_moved += moved
        win = Window(tile.cols.unit_start * s, tile.rows.unit_start * s, uw * s, uh * s)
        n = len(plan.bands)
        try:
            self.out.write(data, indexes=list(range(1, n + 1)), window=win)
            if kind == "alpha" and td.alpha is not None:
                alpha = upsample_nearest(td.alpha[ly : ly + uh, lx : lx + uw], s)
                self.out.write(alpha, indexes=n + 1, window=win)
            elif kind == "mask":
                mask = np.where(valid_hr.any(axis=0), 255, 0).astype(np.uint8)
                self.out.write_mask(mask, window=win)
        except RasterioError as e:
            raise OutputError(f"cannot write the output: {_one_line(e)}") from e


def run_tags(model: Upscaler, scale: int, tile_size: int, overlap: int,
             consistency: str) -> dict[str, str]:
    """The provenance tags of a run that do not depend on the source file (also the
    xarray accessor's attributes)."""
    return {
        "GEOSR_VERSION": __version__,
        "GEOSR_NOTE": AI_NOTE,
        "GEOSR_MODEL": model.name,
        "GEOSR_MODEL_PROVENANCE": model.provenance,
        "GEOSR_WEIGHTS_SHA256": model.sha256 or "none",
        "GEOSR_SCALE": str(scale),
        "GEOSR_TILE_SIZE": str(tile_size),
        "GEOSR_OVERLAP": str(overlap),
        "GEOSR_CONSISTENCY": consistency,
    }


def _provenance(plan: Plan, model: Upscaler, tile_size: int, overlap: int, consistency: str,
                mappings: tuple[BandMapping, ...]) -> dict[str, Any]:
    w = plan.window
    return {
        **run_tags(model, plan.scale, tile_size, overlap, consistency),
        "GEOSR_SOURCE": Path(plan.src).name,
        "GEOSR_SOURCE_WINDOW": f"{int(w.col_off)},{int(w.row_off)},{int(w.width)},{int(w.height)}",
        "GEOSR_BANDS": ",".join(map(str, plan.bands)),
        "GEOSR_RADIOMETRY": [[m.lo, m.hi] for m in mappings],
    }


def upscale(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    scale: int,
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
    progress: bool = False,
    cluster: Any = None,
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
        progress: Show a progress bar on stderr.
        cluster: Run the model on a Dask cluster: a ``distributed.Client`` or a
            ``geosr.distributed.DaskCluster`` (``geosr.distributed.connect``). This
            process still reads the windows and is the one writer; the output is the
            same as without a cluster (see docs/geosr.md, "Scale-out").

    Returns:
        An ``UpscaleResult``.

    Raises:
        GeosrError: any problem with the input, options or destination; nothing is
            left at ``dst``.
    """
    t_start = time.perf_counter()
    tile_size = DEFAULT_TILE_SIZE if tile_size is None else int(tile_size)
    overlap = DEFAULT_OVERLAP if overlap is None else int(overlap)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise OptionError(f"batch size must be >= 1, got {batch_size}")
    if consistency not in CONSISTENCY:
        raise OptionError(f"consistency must be one of {CONSISTENCY}, got {consistency!r}")
    if scale not in SCALES:
        raise OptionError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
    co = parse_creation_options(creation_options)
    dst_path = Path(dst) if dst is not None else default_destination(src, scale)
    check_destination(dst_path, overwrite=overwrite, src=str(src))
    fallback_warning = None
    if model is None:
        model, fallback_warning = default_model_spec(scale)
    validate_tiling(tile_size, overlap)

    with rasterio.Env(**gdal_env_options()), open_source(src) as ds:
        if ds.count == 0:
            raise InputError(f"{src} has no bands")
        # Validate the input before loading a (possibly large) model.
        in_channels = getattr(model, "in_channels", None) if not isinstance(model, str) else (
            None if model in ("nearest", "bicubic", "lanczos") else 3)
        plan = make_plan(ds, scale=scale, in_channels=in_channels, bands=bands,
                         tile_size=tile_size, overlap=overlap, aoi=aoi)
        # With a cluster the workers load the model on their own device; this process
        # only needs its descriptor (name, digest, channels) for the plan and the tags.
        upscaler = load_model(model, scale, device=device if cluster is None else "cpu")
        if upscaler.in_channels != in_channels:
            plan = make_plan(ds, scale=scale, in_channels=upscaler.in_channels, bands=bands,
                             tile_size=tile_size, overlap=overlap, aoi=aoi)
        mappings = compute_mappings(ds, plan)
        executor: TileExecutor
        if cluster is None:
            executor = LocalExecutor(upscaler)
        else:
            from geosr.distributed import DaskExecutor

            executor = DaskExecutor.create(cluster, model, upscaler, scale=scale, device=device)
        if fallback_warning:  # said once the run is known to be valid
            warnings.warn(fallback_warning, GeosrWarning, stacklevel=2)
        with atomic_destination(dst_path, overwrite=overwrite, src=str(src)) as tmp:
            stage = tmp.with_name(tmp.name + ".stage.tif") if cog else tmp
            try:
                result = _run(ds, plan, mappings, upscaler, stage, co=co, tile_size=tile_size,
                              overlap=overlap, batch_size=batch_size, consistency=consistency,
                              progress=progress, executor=executor)
                if cog:
                    resampling = "nearest" if plan.categorical else "average"
                    try:
                        translate_to_cog(stage, tmp, creation_options=co, resampling=resampling)
                    except RasterioError as e:
                        raise OutputError(f"cannot write the COG: {_one_line(e)}") from e
            finally:
                if cog:
                    for p in (stage, Path(str(stage) + ".aux.xml")):
                        with suppress(FileNotFoundError):
                            p.unlink()
    result.dst = dst_path
    result.seconds = time.perf_counter() - t_start
    return result


def _jobs(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], batch_size: int
          ) -> Iterator[tuple[list[_TileData], list[np.ndarray], list[bool]]]:
    """Chunks of ``batch_size`` tiles in row-major order, read lazily (bounded memory)."""
    tiles = iter(plan.grid)
    while True:
        chunk = [t for _, t in zip(range(batch_size), tiles, strict=False)]
        if not chunk:
            return
        datas = [_load_tile(ds, plan, mappings, t) for t in chunk]
        yield datas, [td.x for td in datas], [bool(td.valid.any()) for td in datas]


def _run(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], model: Upscaler, path: Path, *,
         co: dict[str, str], tile_size: int, overlap: int, batch_size: int, consistency: str,
         progress: bool, executor: TileExecutor) -> UpscaleResult:
    out_h, out_w = plan.out_shape
    nodata = plan.mask.nodata if plan.mask.kind == "nodata" else None
    block = output_block_size(tile_size, overlap, plan.scale)
    profile = output_profile(width=out_w, height=out_h, count=plan.out_count, dtype=plan.dtype,
                             georef=plan.georef, nodata=nodata, creation_options=co,
                             block=block if len(plan.grid) > 1 else None)
    provenance = _provenance(plan, model, tile_size, overlap, consistency, mappings)
    grid = plan.grid
    timer = [0.0]
    skipped = 0
    bar = _progress_bar(len(grid), progress)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            out = rasterio.open(path, "w", **profile)
    except (RasterioError, ValueError, TypeError) as e:
        raise OutputError(f"cannot create the output: {_one_line(e)}") from e
    try:
        with out:
            write_metadata(out, dataset_tags=plan.dataset_tags, bands=list(plan.meta),
                           provenance=provenance, georef=plan.georef)
            writer = _Writer(out, plan, mappings, consistency)
            blender = UnitBlender(plan.scale)
            work = ModelWork(plan.scale, plan.groups, batch_size)
            done_px = 0
            # closing(): an error or Ctrl-C here cancels the executor's pending work.
            with closing(executor.map(work, _jobs(ds, plan, mappings, batch_size))) as results:
                for datas, preds, seconds in results:
                    timer[0] += seconds
                    for td, pred in zip(datas, preds, strict=True):
                        if pred is None:
                            skipped += 1
                            c, h, w = td.x.shape
                            pred = np.zeros((c, h * plan.scale, w * plan.scale),
                                            dtype=np.float32)
                        unit = blender.add(td.tile, pred)
                        writer.write(td.tile, unit, td)
                        done_px += unit.shape[1] * unit.shape[2]
                    if bar is not None:
                        bar.update(len(datas))
                        rate = done_px / max(time.perf_counter() - t0, 1e-9) / 1e6
                        bar.set_postfix_str(f"{rate:.2f} MPix/s")
            out.update_tags(GEOSR_CLIPPED=",".join(str(int(v)) for v in writer.clipped),
                            GEOSR_NODATA_MOVED=str(writer.nodata_moved))
    finally:
        if bar is not None:
            bar.close()
    return UpscaleResult(
        dst=path, model=model.name, scale=plan.scale, tiles=len(grid), skipped_tiles=skipped,
        clipped=[int(v) for v in writer.clipped], nodata_moved=writer.nodata_moved,
        seconds=0.0, model_seconds=timer[0], mappings=mappings,
    )


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tile", file=sys.stderr, dynamic_ncols=True, leave=False)


def describe(src: str | Path, *, scale: int, model: str | None = None,
             bands: str | Sequence[int] | None = None, tile_size: int | None = None,
             overlap: int | None = None, batch_size: int | None = None,
             aoi: str | Path | None = None) -> dict[str, Any]:
    """What ``upscale`` would do, without writing anything (``geosr info``).

    Returns:
        A JSON-serialisable dict: source, bands and mappings, masks, georeferencing,
        band groups, tile grid, output size and a memory estimate.
    """
    tile_size = DEFAULT_TILE_SIZE if tile_size is None else int(tile_size)
    overlap = DEFAULT_OVERLAP if overlap is None else int(overlap)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    fallback = None
    if model is None:
        model, fallback = default_model_spec(scale)
    in_channels = None if model in ("nearest", "bicubic", "lanczos") else 3
    with rasterio.Env(**gdal_env_options()), open_source(src) as ds:
        plan = make_plan(ds, scale=scale, in_channels=in_channels, bands=bands,
                         tile_size=tile_size, overlap=overlap, aoi=aoi)
        mappings = compute_mappings(ds, plan)
        georef_kind = source_georef_kind(ds)
        size = (ds.width, ds.height, ds.count)
    out_h, out_w = plan.out_shape
    itemsize = np.dtype(plan.dtype).itemsize
    c = len(plan.bands)
    n_items = batch_size
    ch = in_channels or c
    t = tile_size
    s = scale
    mem = {
        "tile_inputs": batch_size * c * t * t * 4 * 3,
        "model_batch": n_items * ch * t * t * 4 * (64 * 6 if in_channels else 2 + s * s),
        "tile_outputs": batch_size * c * (t * s) ** 2 * 4 * 3,
        "blend_patches": c * out_w * 2 * overlap * s * 4,
        "gdal_cache": DEFAULT_GDAL_CACHEMAX_MB << 20,
    }
    mem["total"] = sum(mem.values())
    rows, cols = plan.grid.shape
    return {
        "source": str(src),
        "size": {"width": size[0], "height": size[1], "bands": size[2]},
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
        "model_note": fallback,
        "band_groups": [
            {"bands": [plan.bands[p] for p in g.inputs], "mode": g.mode,
             "writes": [plan.bands[p] for _, p in g.outputs]}
            for g in plan.groups
        ],
        "scale": scale,
        "tile_size": tile_size,
        "overlap": overlap,
        "tiles": {"rows": rows, "cols": cols, "total": rows * cols},
        "output": {"width": out_w, "height": out_h, "count": plan.out_count,
                   "bytes_uncompressed": out_w * out_h * plan.out_count * itemsize},
        "memory_estimate_bytes": mem,
    }
