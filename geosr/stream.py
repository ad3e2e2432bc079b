"""Streaming a plan through an executor into an open output file.

Tiles are taken in row-major chunks of ``batch_size`` (the jobs), run by a
``TileExecutor``, blended into units (``geosr.blend.UnitBlender``), finished
(``geosr.engine``) and written whole, one unit per output block. Memory is bounded by
the tile and batch sizes, one row of blend-zone patches and the source rows of one tile
row, never by the scene's height.

The streamed path (the default) reads the source rows once, top to bottom, in whole
source blocks (``SourceRows``), and with more than one thread (``pipeline_threads``)
overlaps reading, computing and writing: a reader thread with its own dataset handle
(GDAL handles are not thread-safe) reads, this thread prepares, runs the executor,
blends and finishes (the numpy work, fused where ``geosr.engine`` allows), and a
writer thread writes, bounded queues between them; GDAL decodes and compresses blocks
on its own ``NUM_THREADS`` threads. The I/O threads hold the GIL only briefly.
``GEOSR_PIPELINE=reference`` selects the reference path instead: one thread, one read
per tile, plain ``finish_unit``; the benchmark (``pipelines.bench_ceiling``) and the
tests compare the two, which write the same pixels, masks and tags.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geosr.blend import UnitBlender
from geosr.engine import (
    ModelWork,
    TileExecutor,
    finish_unit,
    finish_unit_fused,
    prepare_tile,
    prepare_tile_fused,
)
from geosr.errors import OptionError, OutputError, one_line
from geosr.io import read_window
from geosr.masks import read_valid, upsample_nearest, valid_from_data
from geosr.plan import Plan
from geosr.profile import output_profile, write_metadata
from geosr.radiometry import BandMapping
from geosr.stages import Sink, SourceRows, in_background, reopen_source
from geosr.tiling import Tile

#: ``GEOSR_PIPELINE=reference`` selects the reference path (benchmarks and tests).
PIPELINE_ENV = "GEOSR_PIPELINE"
#: Where ``UpscaleResult.stage_seconds`` puts the time: busy seconds of each stage,
#: summed over the threads that run it (they overlap on the streamed path).
STAGES = ("read", "prepare", "model", "blend", "finish", "write")


def pipeline_threads() -> int:
    """Threads of a streamed run: GDAL's ``GDAL_NUM_THREADS`` (a count or ``ALL_CPUS``,
    the default), read from the environment. 1 runs every stage in this thread."""
    value = os.environ.get("GDAL_NUM_THREADS", "ALL_CPUS").strip()
    if value.upper() == "ALL_CPUS":
        affinity = getattr(os, "sched_getaffinity", None)
        return max(1, len(affinity(0)) if affinity else os.cpu_count() or 1)
    try:
        return max(1, int(value))
    except ValueError:
        return 1


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
        pixels: Output pixels times output bands (the base of ``clipped_percent``).
        stage_seconds: Busy seconds per stage of ``write_plan`` (``STAGES``); a few clock
            reads per tile, so always on.
        pipeline: ``streamed`` or ``reference``.
        threads: Threads of the run (``pipeline_threads``).
        warnings: The ``GeosrWarning`` messages the run issued, in order (also recorded
            where the run is not watched: a batch manifest, a scene on a Dask worker).
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
    pixels: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pipeline: str = "streamed"
    threads: int = 1
    warnings: list[str] = field(default_factory=list)

    @property
    def clipped_total(self) -> int:
        return int(sum(self.clipped))

    @property
    def clipped_percent(self) -> float:
        """Clipped pixels as a percentage of the output's band pixels."""
        return 100.0 * self.clipped_total / self.pixels if self.pixels else 0.0


@dataclass
class TileData:
    """A tile as read: what the model sees, and what the writer needs afterwards."""

    tile: Tile
    x: np.ndarray  # (C, h, w) float32 model values, invalid pixels filled
    valid: np.ndarray  # (C, h, w) bool
    alpha: np.ndarray | None  # (h, w) source alpha values


def _tick(stages: dict[str, float], name: str, t0: float) -> float:
    now = time.perf_counter()
    stages[name] += now - t0
    return now


def load_tile(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], tile: Tile,
              stages: dict[str, float]) -> TileData:
    """Read a tile's window (overlap included) and prepare it for the model (reference)."""
    t0 = time.perf_counter()
    w = tile.read_window
    win = Window(plan.window.col_off + w.col_off, plan.window.row_off + w.row_off,
                 w.width, w.height)
    data = read_window(ds, plan.bands, win)
    alpha = None
    if plan.mask.kind == "alpha" and plan.mask.alpha_band:
        alpha = read_window(ds, plan.mask.alpha_band, win)
    t0 = _tick(stages, "read", t0)
    valid = read_valid(ds, plan.bands, win, data, plan.mask)
    x = prepare_tile(data, valid, mappings)
    _tick(stages, "prepare", t0)
    return TileData(tile, x, valid, alpha)


Job = tuple[list[TileData], list[np.ndarray], list[bool]]


def _chunks(tds: Iterator[TileData], batch_size: int) -> Iterator[Job]:
    """Chunks of ``batch_size`` tiles in row-major order, loaded lazily (bounded memory)."""
    while datas := list(itertools.islice(tds, batch_size)):
        yield datas, [td.x for td in datas], [bool(td.valid.any()) for td in datas]


def jobs(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], batch_size: int,
         stages: dict[str, float] | None = None) -> Iterator[Job]:
    """The reference path's chunks: one read per tile."""
    st = stages if stages is not None else dict.fromkeys(STAGES, 0.0)
    return _chunks((load_tile(ds, plan, mappings, t, st) for t in plan.grid), batch_size)


def _prepared(plan: Plan, mappings: tuple[BandMapping, ...], stages: dict[str, float],
              tile: Tile, raw: tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
              ) -> TileData:
    """``load_tile``'s values from a tile's data, mask and alpha (``SourceRows.tile``)."""
    t0 = time.perf_counter()
    data, mask, alpha = raw
    valid = valid_from_data(data, plan.mask)
    if mask is not None:
        valid &= (mask > 0)[None]
    x = prepare_tile_fused(data, valid, mappings)
    _tick(stages, "prepare", t0)
    return TileData(tile, x, valid, alpha)


def streamed_jobs(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], batch_size: int,
                  stages: dict[str, float], threads: int) -> Iterator[Job]:
    """The streamed path's chunks from ``SourceRows``: read on a reader thread with its
    own handle when ``threads > 1`` (closing the generator joins it), prepared here."""
    handle = reopen_source(ds, threads) if threads > 1 else None

    def produce(src: Any) -> Iterator[tuple[Tile, Any]]:
        rows = SourceRows(src, plan, stages)
        return ((t, rows.tile(t)) for t in plan.grid)

    raws = produce(ds) if handle is None else in_background(lambda: produce(handle),
                                                             "geosr-reader")
    try:
        yield from _chunks((_prepared(plan, mappings, stages, t, raw) for t, raw in raws),
                           batch_size)
    finally:
        if handle is not None:
            raws.close()  # type: ignore[attr-defined]  # the generator: joins the reader
            handle.close()


class UnitWriter:
    """Converts completed units to the output dtype, applies masks and writes them.

    Args:
        fused: Finish with ``finish_unit_fused`` (same values as ``finish_unit``).
    """

    def __init__(self, out: Any, plan: Plan, mappings: tuple[BandMapping, ...],
                 consistency: str, *, fused: bool = False,
                 stages: dict[str, float] | None = None) -> None:
        self.out = out
        self.plan = plan
        self.mappings = mappings
        self.consistency = consistency
        self.finish_unit = finish_unit_fused if fused else finish_unit
        self.stages = stages if stages is not None else dict.fromkeys(STAGES, 0.0)
        self.clipped = np.zeros(len(plan.bands), dtype=np.int64)
        self.nodata_moved = 0

    def finish(self, tile: Tile, unit: np.ndarray, td: TileData
               ) -> tuple[Window, list[tuple[Any, np.ndarray]]]:
        """A unit in stored values, masked: its output window and ``(indexes, array)``
        writes (``None`` indexes: the dataset mask)."""
        plan, s = self.plan, self.plan.scale
        t0 = time.perf_counter()
        uh, uw = tile.rows.unit_size, tile.cols.unit_size
        ly, lx = tile.lead
        kind = plan.mask.kind
        data, valid_hr, clipped, moved = self.finish_unit(
            unit, td.valid[:, ly : ly + uh, lx : lx + uw], td.x[:, ly : ly + uh, lx : lx + uw],
            mappings=self.mappings, dtype=plan.dtype, scale=s, nodata=plan.nodata,
            consistency=self.consistency, categorical=plan.categorical,
        )
        self.clipped += clipped
        self.nodata_moved += moved
        n = len(plan.bands)
        writes: list[tuple[Any, np.ndarray]] = [(list(range(1, n + 1)), data)]
        if kind == "alpha" and td.alpha is not None:
            writes.append((n + 1, upsample_nearest(td.alpha[ly : ly + uh, lx : lx + uw], s)))
        elif kind == "mask":
            writes.append((None, np.full(data.shape[1:], 255, dtype=np.uint8)
                           if valid_hr is None
                           else np.where(valid_hr.any(axis=0), 255, 0).astype(np.uint8)))
        _tick(self.stages, "finish", t0)
        return Window(tile.cols.unit_start * s, tile.rows.unit_start * s, uw * s, uh * s), writes

    def emit(self, win: Window, writes: list[tuple[Any, np.ndarray]]) -> None:
        """Write a finished unit (the only use of the output handle while streaming)."""
        t0 = time.perf_counter()
        try:
            for indexes, arr in writes:
                if indexes is None:
                    self.out.write_mask(arr, window=win)
                else:
                    self.out.write(arr, indexes=indexes, window=win)
        except RasterioError as e:
            raise OutputError(f"cannot write the output: {one_line(e)}") from e
        _tick(self.stages, "write", t0)


def write_plan(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], path: Path, *,
               model_name: str, tags: dict[str, Any], creation_options: dict[str, str],
               batch_size: int, consistency: str,
               progress: bool, executor: TileExecutor,
               spread_path: Path | None = None, pipeline: str | None = None,
               threads: int | None = None) -> UpscaleResult:
    """Create ``path``, stream every tile of ``plan`` through ``executor`` into it.

    Args:
        ds: The open source.
        plan: The run's plan.
        mappings: Radiometric mapping per band.
        path: The (temporary) file to create.
        model_name: Recorded in the result.
        tags: Provenance tags written to the output.
        creation_options: GTiff creation options overriding the defaults.
        batch_size, consistency: The run's options (the tiling is ``plan.grid``).
        progress: Show a progress bar on stderr.
        executor: Runs the model on chunks of tiles.
        spread_path: Also write the model's spread there (``geosr.spread``; the model
            must have ``predict_with_spread``), blended with the prediction's weights.
        pipeline: ``streamed`` or ``reference`` (default: ``$GEOSR_PIPELINE``, else
            streamed); both write the same file contents.
        threads: Threads of the streamed path (default ``pipeline_threads()``); also
            GDAL's ``NUM_THREADS`` for compression unless the creation options set it.
    """
    name = (pipeline or os.environ.get(PIPELINE_ENV) or "streamed").strip().lower()
    if name not in ("streamed", "reference"):
        raise OptionError(f"{PIPELINE_ENV}={name}: give streamed or reference")
    reference = name == "reference"
    n_threads = 1 if reference else max(1, threads or pipeline_threads())
    out_h, out_w = plan.out_shape
    block = plan.grid.output_blocks(plan.scale)
    profile = output_profile(width=out_w, height=out_h, count=plan.out_count, dtype=plan.dtype,
                             georef=plan.georef, nodata=plan.nodata,
                             creation_options=creation_options,
                             block=block, threads=n_threads)
    stages = dict.fromkeys(STAGES, 0.0)
    skipped = 0
    bar = _progress_bar(len(plan.grid), progress)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            out = rasterio.open(path, "w", **profile)
    except (RasterioError, ValueError, TypeError) as e:
        raise OutputError(f"cannot create the output: {one_line(e)}") from e
    spread_out = None
    try:
        with out:
            if spread_path is not None:
                from geosr.spread import SpreadWriter

                spread_out = SpreadWriter(spread_path, plan, mappings, tags=tags,
                                          creation_options=creation_options,
                                          block=block)
            write_metadata(out, dataset_tags=plan.dataset_tags, bands=list(plan.meta),
                           provenance=tags, georef=plan.georef)
            writer = UnitWriter(out, plan, mappings, consistency, fused=not reference,
                                stages=stages)
            blender = UnitBlender(plan.scale)
            work = ModelWork(plan.scale, plan.groups, batch_size,
                             spread=spread_out is not None)
            n = len(plan.bands)
            done_px = 0
            source = (jobs(ds, plan, mappings, batch_size, stages) if reference else
                      streamed_jobs(ds, plan, mappings, batch_size, stages, n_threads))
            # The output handle is the writer thread's until it is joined (GDAL handles
            # are not thread-safe): every exit below goes through close() or abort().
            sink = Sink(writer.emit, threaded=n_threads > 1, name="geosr-writer")
            try:
                # closing(): an error or Ctrl-C here cancels the executor's pending work.
                with closing(source), closing(executor.map(work, source)) as results:
                    for datas, preds, seconds in results:
                        stages["model"] += seconds
                        tb = time.perf_counter()
                        for td, pred in zip(datas, preds, strict=True):
                            if pred is None:
                                skipped += 1
                                c, h, w = td.x.shape
                                pred = np.zeros(((2 if work.spread else 1) * c,
                                                 h * plan.scale, w * plan.scale),
                                                dtype=np.float32)
                            # One blender for both: the spread gets the prediction's weights.
                            unit = blender.add(td.tile, pred, consume=not reference)
                            if spread_out is not None:
                                spread_out.write(td.tile, unit[n:], td.valid)
                                unit = unit[:n]
                            tb = _tick(stages, "blend", tb)
                            sink.put(*writer.finish(td.tile, unit, td))
                            tb = time.perf_counter()
                            done_px += unit.shape[1] * unit.shape[2]
                        if bar is not None:
                            bar.update(len(datas))
                            rate = done_px / max(time.perf_counter() - t0, 1e-9) / 1e6
                            bar.set_postfix_str(f"{rate:.2f} MPix/s")
                sink.close()
            finally:
                sink.abort()
            out.update_tags(GEOSR_CLIPPED=",".join(str(int(v)) for v in writer.clipped),
                            GEOSR_NODATA_MOVED=str(writer.nodata_moved))
    finally:
        if spread_out is not None:
            spread_out.close()
        if bar is not None:
            bar.close()
    return UpscaleResult(
        dst=path, model=model_name, scale=plan.scale, tiles=len(plan.grid),
        skipped_tiles=skipped, clipped=[int(v) for v in writer.clipped],
        nodata_moved=writer.nodata_moved, seconds=0.0, model_seconds=stages["model"],
        mappings=mappings,
        pixels=plan.out_shape[0] * plan.out_shape[1] * len(plan.bands),
        stage_seconds={k: round(v, 3) for k, v in stages.items()},
        pipeline="reference" if reference else "streamed", threads=n_threads,
    )


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tile", file=sys.stderr, dynamic_ncols=True, leave=False,
                desc="geosr upscale")
