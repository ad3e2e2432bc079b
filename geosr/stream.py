"""Streaming a plan through an executor into an open output file.

Tiles are read lazily in row-major chunks of ``batch_size`` (``jobs``), run by a
``TileExecutor``, blended into units (``geosr.blend.UnitBlender``), finished
(``geosr.engine.finish_unit``) and written whole, one unit per output block. Memory
is bounded by the tile and batch sizes plus one row of blend-zone patches, never by
the scene.
"""

from __future__ import annotations

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
from geosr.engine import ModelWork, TileExecutor, finish_unit, prepare_tile
from geosr.errors import OutputError, one_line
from geosr.io import read_window
from geosr.masks import read_valid, upsample_nearest
from geosr.plan import Plan
from geosr.profile import output_profile, write_metadata
from geosr.radiometry import BandMapping
from geosr.tiling import Tile, output_block_size


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


def load_tile(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], tile: Tile) -> TileData:
    """Read a tile's window (overlap included) and prepare it for the model."""
    w = tile.read_window
    win = Window(plan.window.col_off + w.col_off, plan.window.row_off + w.row_off,
                 w.width, w.height)
    data = read_window(ds, plan.bands, win)
    valid = read_valid(ds, plan.bands, win, data, plan.mask)
    x = prepare_tile(data, valid, mappings)
    alpha = None
    if plan.mask.kind == "alpha" and plan.mask.alpha_band:
        alpha = read_window(ds, plan.mask.alpha_band, win)
    return TileData(tile, x, valid, alpha)


def jobs(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], batch_size: int
         ) -> Iterator[tuple[list[TileData], list[np.ndarray], list[bool]]]:
    """Chunks of ``batch_size`` tiles in row-major order, read lazily (bounded memory)."""
    tiles = iter(plan.grid)
    while True:
        chunk = [t for _, t in zip(range(batch_size), tiles, strict=False)]
        if not chunk:
            return
        datas = [load_tile(ds, plan, mappings, t) for t in chunk]
        yield datas, [td.x for td in datas], [bool(td.valid.any()) for td in datas]


class UnitWriter:
    """Converts completed units to the output dtype, applies masks and writes them."""

    def __init__(self, out: Any, plan: Plan, mappings: tuple[BandMapping, ...],
                 consistency: str) -> None:
        self.out = out
        self.plan = plan
        self.mappings = mappings
        self.consistency = consistency
        self.clipped = np.zeros(len(plan.bands), dtype=np.int64)
        self.nodata_moved = 0

    def write(self, tile: Tile, unit: np.ndarray, td: TileData) -> None:
        plan, s = self.plan, self.plan.scale
        uh, uw = tile.rows.unit_size, tile.cols.unit_size
        ly, lx = tile.lead
        kind = plan.mask.kind
        data, valid_hr, clipped, moved = finish_unit(
            unit, td.valid[:, ly : ly + uh, lx : lx + uw], td.x[:, ly : ly + uh, lx : lx + uw],
            mappings=self.mappings, dtype=plan.dtype, scale=s, nodata=plan.nodata,
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
            raise OutputError(f"cannot write the output: {one_line(e)}") from e


def write_plan(ds: Any, plan: Plan, mappings: tuple[BandMapping, ...], path: Path, *,
               model_name: str, tags: dict[str, Any], creation_options: dict[str, str],
               tile_size: int, overlap: int, batch_size: int, consistency: str,
               progress: bool, executor: TileExecutor,
               spread_path: Path | None = None) -> UpscaleResult:
    """Create ``path``, stream every tile of ``plan`` through ``executor`` into it.

    Args:
        ds: The open source.
        plan: The run's plan.
        mappings: Radiometric mapping per band.
        path: The (temporary) file to create.
        model_name: Recorded in the result.
        tags: Provenance tags written to the output.
        creation_options: GTiff creation options overriding the defaults.
        tile_size, overlap, batch_size, consistency: The run's options.
        progress: Show a progress bar on stderr.
        executor: Runs the model on chunks of tiles.
        spread_path: Also write the model's spread there (``geosr.spread``; the model
            must have ``predict_with_spread``), blended with the prediction's weights.
    """
    out_h, out_w = plan.out_shape
    block = output_block_size(tile_size, overlap, plan.scale)
    profile = output_profile(width=out_w, height=out_h, count=plan.out_count, dtype=plan.dtype,
                             georef=plan.georef, nodata=plan.nodata,
                             creation_options=creation_options,
                             block=block if len(plan.grid) > 1 else None)
    model_seconds = 0.0
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
                                          block=block if len(plan.grid) > 1 else None)
            write_metadata(out, dataset_tags=plan.dataset_tags, bands=list(plan.meta),
                           provenance=tags, georef=plan.georef)
            writer = UnitWriter(out, plan, mappings, consistency)
            blender = UnitBlender(plan.scale)
            work = ModelWork(plan.scale, plan.groups, batch_size,
                             spread=spread_out is not None)
            n = len(plan.bands)
            done_px = 0
            # closing(): an error or Ctrl-C here cancels the executor's pending work.
            with closing(executor.map(work, jobs(ds, plan, mappings, batch_size))) as results:
                for datas, preds, seconds in results:
                    model_seconds += seconds
                    for td, pred in zip(datas, preds, strict=True):
                        if pred is None:
                            skipped += 1
                            c, h, w = td.x.shape
                            pred = np.zeros(((2 if work.spread else 1) * c, h * plan.scale,
                                             w * plan.scale), dtype=np.float32)
                        # One blender for both: the spread gets the prediction's weights.
                        unit = blender.add(td.tile, pred)
                        if spread_out is not None:
                            spread_out.write(td.tile, unit[n:], td.valid)
                            unit = unit[:n]
                        writer.write(td.tile, unit, td)
                        done_px += unit.shape[1] * unit.shape[2]
                    if bar is not None:
                        bar.update(len(datas))
                        rate = done_px / max(time.perf_counter() - t0, 1e-9) / 1e6
                        bar.set_postfix_str(f"{rate:.2f} MPix/s")
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
        nodata_moved=writer.nodata_moved, seconds=0.0, model_seconds=model_seconds,
        mappings=mappings,
        pixels=plan.out_shape[0] * plan.out_shape[1] * len(plan.bands),
    )


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tile", file=sys.stderr, dynamic_ncols=True, leave=False,
                desc="geosr upscale")
