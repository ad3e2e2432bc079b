"""Everything that touches a dataset or the destination: opening and reading the
source, safe destinations, GDAL settings, the COG copy, signals.

Output goes to a hidden temporary file in the destination's folder, which is
renamed onto the destination only when everything succeeded; any error or
interruption removes it, so a failed run leaves nothing at DST (and leaves an
existing DST untouched when ``--overwrite`` was given). A run killed without a
chance to clean up leaves its temporary file; the next run writing into that folder
removes it (``remove_stale_temporaries``: only names carrying geosr's check digest,
only once their process is gone). Source failures become one-line ``InputError``s;
sources must be regular files (or URLs, ``/vsi`` paths); GDAL runs with VRT
restrictions (``gdal_env_options``), and the CLI keeps what C libraries print on
file descriptor 2 off the terminal (``native_stderr_captured``).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import stat
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geosr.errors import InputError, OutputError, one_line

#: GDAL block cache for a run (MB) unless GDAL_CACHEMAX is set: written blocks are
#: flushed once the cache is full, so memory does not grow with the output size.
DEFAULT_GDAL_CACHEMAX_MB = 8


#: Extensions of the files geosr writes (GeoTIFF, also with ``--cog``).
OUTPUT_SUFFIXES = (".tif", ".tiff")


def is_local(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a local file (not a URL or a GDAL ``/vsi`` path)."""
    p = os.fspath(path)
    return "://" not in p and not p.startswith("/vsi")


def check_source(path: str | os.PathLike[str]) -> None:
    """Fail early when a local source is missing or not a regular file.

    A FIFO or a device would block or stream forever, and a folder is not a raster.

    Raises:
        InputError: the source is missing, a folder, or not a regular file.
    """
    p = os.fspath(path)
    if not is_local(p):
        return
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"source {p}: no such file") from None
    except OSError as e:
        raise InputError(f"source {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"source {p} is a folder, not a raster file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"source {p} is not a regular file (a pipe, socket or device)")


@contextmanager
def open_source(path: str | Path) -> Iterator[Any]:
    """Open a raster for reading, turning GDAL failures into one-line ``InputError``."""
    p = str(path)
    check_source(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(p)
    except (RasterioError, OSError, ValueError) as e:
        raise InputError(f"cannot open {p}: {one_line(e)}") from e
    with ds:
        yield ds


def read_window(ds: Any, bands: tuple[int, ...] | int, window: Window) -> np.ndarray:
    """``ds.read`` of a window; a GDAL failure is a one-line ``InputError``."""
    try:
        return ds.read(bands, window=window)
    except RasterioError as e:
        raise InputError(f"cannot read {ds.name}: {one_line(e)}") from e


def default_destination(src: str | os.PathLike[str], scale: int) -> Path:
    """``<stem>_x<scale>.tif`` beside ``src``."""
    p = Path(src)
    return p.with_name(f"{p.stem}_x{scale}.tif")


def check_destination(dst: Path, *, overwrite: bool, src: str | None = None) -> None:
    """Fail early when ``dst`` cannot or must not be written.

    Raises:
        OutputError: DST is the source, a directory, not a ``.tif``/``.tiff`` name, exists
            (also as a dangling link) without ``overwrite``, or its folder is missing or
            not writable.
    """
    if src is not None and Path(src).exists() and dst.exists() and dst.samefile(src):
        raise OutputError(f"destination {dst} is the source file")
    if dst.is_dir():
        raise OutputError(f"destination {dst} is a directory")
    if dst.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(f"destination {dst}: geosr writes GeoTIFF, name it .tif or .tiff")
    if os.path.lexists(dst) and not overwrite:
        what = "exists" if dst.exists() else "is a dangling link"
        raise OutputError(f"destination {dst} {what} (use --overwrite to replace it)")
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
    remove_stale_temporaries(dst.parent if str(dst.parent) else Path("."))
    tmp = temporary_name(dst)
    try:
        yield tmp
        if os.path.lexists(dst) and not overwrite:  # appeared while we were working
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


#: Hidden temporary outputs: ``.<dst name>.geosr-<pid>-<nonce>.<check>.tmp.tif`` and the
#: sidecars GDAL may add. ``check`` is a digest of this host, the name, the pid and the
#: nonce, so a file that merely looks like one is never taken for geosr's.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.geosr-(?P<pid>\d+)-(?P<nonce>[0-9a-f]{8})"
                      r"\.(?P<check>[0-9a-f]{8})\.tmp\.tif"
                      r"(?:\.stage\.tif)?(?:\.aux\.xml|\.msk)?$")


def _temp_check(name: str, pid: int, nonce: str) -> str:
    text = f"geosr-temporary\0{socket.gethostname()}\0{name}\0{pid}\0{nonce}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def temporary_name(dst: Path) -> Path:
    """A hidden temporary path beside ``dst`` that only this process makes."""
    pid, nonce = os.getpid(), uuid.uuid4().hex[:8]
    check = _temp_check(dst.name, pid, nonce)
    return dst.with_name(f".{dst.name}.geosr-{pid}-{nonce}.{check}.tmp.tif")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary outputs that killed geosr runs on this host left in ``folder``.

    Only files whose name carries a valid geosr check and whose process is gone are
    removed: a running geosr's temporary file and any user file are left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(m["pid"])
        if m["check"] != _temp_check(m["name"], pid, m["nonce"]) or _alive(pid):
            continue
        with suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return sorted(removed)


#: GDAL settings that keep a (possibly untrusted) VRT from running code or reading raw
#: bytes of arbitrary files; the same variables set in the environment win (a trusted
#: VRT with raw bands: ``GDAL_VRT_ENABLE_RAWRASTERBAND=YES``; docs/geosr.md, "Security").
_VRT_SAFETY = {"GDAL_VRT_ENABLE_PYTHON": "NO", "GDAL_VRT_ENABLE_RAWRASTERBAND": "NO"}


def gdal_env_options() -> dict[str, Any]:
    """GDAL configuration for a run: a bounded block cache, internal masks, VRT limits."""
    opts: dict[str, Any] = {"GDAL_TIFF_INTERNAL_MASK": True}
    opts.update({k: v for k, v in _VRT_SAFETY.items() if k not in os.environ})
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


@contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Within the block, what C libraries write straight to file descriptor 2 (libtiff
    and GDAL messages, logs of worker processes started here) is kept out of the
    terminal and handed back as lines when the block ends; Python's ``sys.stderr``
    (geosr's own lines, the progress bar) still reaches the terminal.
    """
    lines: list[str] = []
    try:
        python_on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        python_on_fd2 = False
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield lines
        return
    sink = tempfile.TemporaryFile()
    previous = sys.stderr
    replacement = None
    os.dup2(sink.fileno(), 2)
    if python_on_fd2:
        replacement = os.fdopen(os.dup(saved), "w", buffering=1,
                                encoding=getattr(previous, "encoding", None) or "utf-8",
                                errors="backslashreplace")
        sys.stderr = replacement
    try:
        yield lines
    finally:
        with suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = previous
        if replacement is not None:
            replacement.close()
        sink.seek(0)
        lines.extend(ln.strip() for ln in sink.read().decode(errors="replace").splitlines()
                     if ln.strip())
        sink.close()


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
