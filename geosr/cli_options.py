"""Click options shared by the ``geosr`` commands (as ``rasterio.rio.options``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from geosr.options import (
    CONSISTENCY,
    DEFAULT_BATCH_SIZE,
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    SCALES,
)
from geosr.scenes import PLACEMENTS

F = TypeVar("F", bound=Callable[..., Any])

scale_opt = click.option(
    "--scale", "-s", type=click.Choice(SCALES), required=True, help="Upscaling factor."
)
model_opt = click.option(
    "--model", "-m", default=None, metavar="NAME|PATH",
    help="bicubic, lanczos, nearest, a shipped LGUN name (lgun-aid-x4, lgun-x4, ...) or a "
    ".safetensors file. Default: the best shipped weights for the scale, else bicubic.",
)
bands_opt = click.option(
    "--bidx", "-b", "bands", default=None, metavar="LIST",
    help="1-based bands, comma-separated (e.g. 4,3,2). Default: all but alpha.",
)
tile_size_opt = click.option(
    "--tile-size", type=int, default=DEFAULT_TILE_SIZE, show_default=True,
    help="Largest tile side in input pixels, overlap included.",
)
overlap_opt = click.option(
    "--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True,
    help="Context shared with each neighbouring tile, per side, in input pixels.",
)
batch_size_opt = click.option(
    "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True,
    help="Model inputs per call.",
)
device_opt = click.option(
    "--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
    help="Device for neural models.",
)
creation_options_opt = click.option(
    "--co", "--profile", "creation_options", multiple=True, metavar="NAME=VALUE",
    help="Driver creation option, e.g. --co COMPRESS=ZSTD (repeatable).",
)
overwrite_opt = click.option(
    "--overwrite", is_flag=True, default=False, help="Replace an existing output file."
)
ignore_limits_opt = click.option(
    "--ignore-limits", is_flag=True, default=False,
    help="Run even when the output or a tile batch looks too large for the disk or memory.",
)
quiet_opt = click.option(
    "--quiet", "-q", is_flag=True, default=False,
    help="No progress bar and no summary line; errors and warnings are still printed.",
)
aoi_opt = click.option(
    "--aoi", type=click.Path(dir_okay=False), default=None,
    help="GeoJSON or Shapefile polygon; only its extent is super-resolved.",
)
workers_opt = click.option(
    "--workers", type=click.IntRange(min=1), default=None, metavar="N",
    help="Run the model on a local Dask cluster of N worker processes (TLS on loopback, "
    "with temporary credentials).",
)
scheduler_opt = click.option(
    "--scheduler", default=None, metavar="tls://HOST:PORT",
    help="Run the model on the workers of a running Dask scheduler (TLS credentials from "
    "the dask config, distributed.comm.tls.*).",
)
gpu_workers_opt = click.option(
    "--gpu-workers", "gpu", is_flag=True, default=False,
    help="Model tasks need the GPU worker resource; without --scheduler, start a "
    "dask-cuda LocalCUDACluster (needs dask-cuda; one worker per GPU unless --workers).",
)
placement_opt = click.option(
    "--placement", type=click.Choice(PLACEMENTS), default="auto", show_default=True,
    help="With --workers/--scheduler: scenes runs each whole scene on a worker, which reads "
    "the source and writes the output itself (paths must be reachable from the workers); "
    "tiles runs one scene at a time with its tiles on the workers; auto picks scenes when "
    "there are at least as many scenes to compute as workers and they reach the paths.",
)
range_opt = click.option(
    "--range", "value_range", default=None, metavar="LO,HI|PRESET",
    help="Fixed stored-value range mapped to the model's [0, 1]: LO,HI for all bands, "
    "LO,HI;LO,HI;... per band, or a preset (sentinel2-l2a, sentinel2-l2a-offset, "
    "landsat-c2-sr, 8bit). Default: the dtype's range for uint8, else the data's.",
)
dst_nodata_opt = click.option(
    "--dst-nodata", "dst_nodata", default=None, metavar="VALUE",
    help="Nodata value of the output (default: the source's). Invalid pixels get it; valid "
    "pixels equal to it move to the next value.",
)
ensemble_opt = click.option(
    "--ensemble", is_flag=True, default=False,
    help="Run the model as its 8-view self-ensemble (mean over flips and quarter turns): "
    "slightly more accurate (+0.03 to +0.19 dB PSNR measured), at ~8x the model time.",
)
uncertainty_opt = click.option(
    "--uncertainty", default=None, metavar="U.tif",
    help="With --ensemble: also write a float32 GeoTIFF on the output grid with the "
    "per-pixel std of the 8 views in output units (where they disagree; not an error "
    "estimate). Same safety rules as the output; works with --workers/--scheduler too.",
)
cog_opt = click.option(
    "--cog", is_flag=True, default=False,
    help="Write Cloud Optimized GeoTIFF output (GDAL's COG driver, averaged overviews).",
)
consistency_opt = click.option(
    "--consistency", type=click.Choice(CONSISTENCY), default="none", show_default=True,
    help="exact: shift each s x s block so its mean equals the input pixel.",
)


def _stack(*options: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``options`` in order (the first is listed first in --help)."""

    def apply(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


#: The options that make a ``RunOptions`` (``geosr upscale`` and ``geosr batch``).
run_options = _stack(scale_opt, model_opt, bands_opt, tile_size_opt, overlap_opt,
                     batch_size_opt, device_opt, creation_options_opt, cog_opt, aoi_opt,
                     consistency_opt, range_opt, dst_nodata_opt, ensemble_opt,
                     ignore_limits_opt)
#: Where the model runs and what the command prints.
process_options = _stack(quiet_opt, workers_opt, scheduler_opt, gpu_workers_opt)

