"""Safe destinations: checks before any work, a temporary file, an atomic rename.

Output goes to a hidden temporary file in the destination's folder, which is
renamed onto the destination only when everything succeeded; any error or
interruption removes it, so a failed run leaves nothing at DST (and leaves an
existing DST untouched when ``--overwrite`` was given).
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from geosr.errors import OutputError

#: GDAL block cache for a run (MB) unless GDAL_CACHEMAX is set: written blocks are
#: flushed once the cache is full, so memory does not grow with the output size.
DEFAULT_GDAL_CACHEMAX_MB = 8


def default_destination(src: str | os.PathLike[str], scale: int) -> Path:
    """``<stem>_x<scale>.tif`` beside ``src``."""
    p = Path(src)
    return p.with_name(f"{p.stem}_x{scale}.tif")


def check_destination(dst: Path, *, overwrite: bool, src: str | None = None) -> None:
    """Fail early when ``dst`` cannot or must not be written.

    Raises:
        OutputError: DST is the source, a directory, exists without ``overwrite``, or
            its folder is missing or not writable.
    """
    if src is not None and Path(src).exists() and dst.exists() and dst.samefile(src):
        raise OutputError(f"destination {dst} is the source file")
    if dst.is_dir():
        raise OutputError(f"destination {dst} is a directory")
    if dst.exists() and not overwrite:
        raise OutputError(f"destination {dst} exists (use --overwrite to replace it)")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"destination folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"destination folder {parent} is not writable")


def _remove(path: Path) -> None:
    for p in (path, Path(str(path) + ".aux.xml"), Path(str(path) + ".msk")):
        with suppress(FileNotFoundError):
            p.unlink()


@contextmanager
def atomic_destination(dst: Path, *, overwrite: bool, src: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it onto ``dst`` on success.

    Raises:
        OutputError: see ``check_destination``; or the rename failed.
    """
    check_destination(dst, overwrite=overwrite, src=src)
    tmp = dst.with_name(f".{dst.name}.geosr-{uuid.uuid4().hex[:8]}.tmp.tif")
    try:
        yield tmp
        if dst.exists() and not overwrite:  # appeared while we were working
            raise OutputError(f"destination {dst} exists (use --overwrite to replace it)")
        try:
            os.replace(tmp, dst)
        except OSError as e:
            raise OutputError(f"cannot move the result to {dst}: {e.strerror or e}") from e
        side = Path(str(tmp) + ".aux.xml")
        if side.exists():
            os.replace(side, Path(str(dst) + ".aux.xml"))
    finally:
        _remove(tmp)


def gdal_env_options() -> dict[str, Any]:
    """GDAL configuration for a run: a bounded block cache and internal masks."""
    opts: dict[str, Any] = {"GDAL_TIFF_INTERNAL_MASK": True}
    if "GDAL_CACHEMAX" not in os.environ:
        # rasterio hands this value to GDALSetCacheMax64, which takes bytes (the "< 100000
        # means MB" rule applies only to the environment variable): 8 here would be 8 bytes.
        opts["GDAL_CACHEMAX"] = DEFAULT_GDAL_CACHEMAX_MB << 20
    return opts


#: Creation options of the GTiff driver that the COG driver also understands.
_COG_KEYS = {"compress", "level", "predictor", "quality", "bigtiff", "blocksize",
             "num_threads", "zlevel", "jpeg_quality", "zstd_level", "max_z_error",
             "overview_compress", "overview_quality", "overview_predictor", "sparse_ok"}


def translate_to_cog(src_path: Path, dst_path: Path, *, creation_options: dict[str, str],
                     resampling: str = "average") -> None:
    """Copy a GeoTIFF to a Cloud Optimized GeoTIFF with GDAL's COG driver.

    Overviews are built with ``resampling`` (``average`` for continuous data,
    ``nearest`` for class maps); masks, alpha, tags and colour maps are kept.
    """
    import rasterio.shutil

    co: dict[str, str] = {"compress": "deflate", "bigtiff": "IF_SAFER", "blocksize": "512"}
    for k, v in creation_options.items():
        if k in ("zlevel",):
            co["level"] = v
        elif k in _COG_KEYS:
            co[k] = v
    co["overview_resampling"] = resampling
    co["resampling"] = resampling
    rasterio.shutil.copy(str(src_path), str(dst_path), driver="COG",
                         **{k.upper(): v for k, v in co.items()})


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` in the main thread.

    Python's default SIGTERM action kills the process without unwinding, which would
    leave the temporary output behind; as an exception, ``atomic_destination`` and
    the cluster shutdown run. Outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
