"""Size guards: a run that cannot fit is refused before the first pixel is written.

Checked up front, from the plan: the output's pixel count, its uncompressed size
against the free space of the destination's folder, and the peak memory of a tile
batch against the machine's memory. A VRT that claims millions of pixels a side, or a
``--tile-size`` no machine can hold, fails in a moment with one line instead of after
minutes with a full disk or an allocation error. ``RunOptions.ignore_limits``
(``--ignore-limits``) skips these checks.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geosr.errors import OptionError, OutputError

if TYPE_CHECKING:
    from geosr.options import RunOptions
    from geosr.plan import Plan

#: Largest output, in pixels per band (100 gigapixels: a 316,000-pixel square).
MAX_OUTPUT_PIXELS = 100_000_000_000
#: Share of the machine's memory one tile batch may use.
MEMORY_SHARE = 0.8


def physical_memory() -> int | None:
    """Bytes of memory of this machine, when the platform says."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _check_free(folder: Path, size: int, what: str) -> None:
    """Refuse ``size`` bytes (uncompressed) for ``what`` in ``folder`` when it has less free."""
    try:
        free = shutil.disk_usage(folder if str(folder) else Path(".")).free
    except OSError:
        return
    if size > free:
        raise OutputError(f"{what} needs up to {_gib(size)} (uncompressed), but {folder} "
                          f"has {_gib(free)} free (use --ignore-limits to run anyway)")


def check_limits(plan: Plan, options: RunOptions, *, in_channels: int | None,
                 folder: Path) -> None:
    """Refuse a run whose output or tiles cannot fit (see the module docstring).

    Raises:
        OutputError: the output is too large, or larger than the free disk space.
        OptionError: a tile batch needs more memory than the machine has.
    """
    if options.ignore_limits:
        return
    from geosr.plan import memory_estimate

    out_h, out_w = plan.out_shape
    pixels = out_h * out_w
    if pixels > MAX_OUTPUT_PIXELS:
        raise OutputError(f"the output would be {out_w:,} x {out_h:,} pixels, more than the "
                          f"limit of {MAX_OUTPUT_PIXELS:,} (use --ignore-limits to run anyway)")
    size = pixels * plan.out_count * np.dtype(plan.dtype).itemsize
    # The uncertainty map: float32, one band per output band (alpha excluded).
    spread = pixels * len(plan.bands) * 4 if options.uncertainty is not None else 0
    spread_folder = Path(options.uncertainty).parent if options.uncertainty else folder
    if spread and _same_folder(spread_folder, folder):
        size, spread = size + spread, 0
    _check_free(folder, size, "the output")
    if spread:
        _check_free(spread_folder, spread, "the uncertainty output")
    h, w = int(plan.window.height), int(plan.window.width)
    # A tile is never larger than the window (plus its context), nor smaller than allowed.
    tile = min(options.tile_size, max(h, w, 16, 6 * options.overlap) + 2 * options.overlap)
    need = memory_estimate(plan, replace(options, tile_size=tile), in_channels)["total"]
    ram = physical_memory()
    if ram is not None and need > MEMORY_SHARE * ram:
        raise OptionError(f"a batch of {options.batch_size} tiles of {tile} pixels needs about "
                          f"{_gib(need)}, more than this machine's {_gib(ram)} allows; lower "
                          "--tile-size or --batch-size (or use --ignore-limits)")
