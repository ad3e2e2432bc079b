"""The streamed path's stages beside the main thread: source rows, reader, writer.

* ``SourceRows`` reads the processed window's rows once, top to bottom, and cuts the
  tiles of one tile row from them (the same values as reading each tile's window).
  The threads only read and write: GDAL works without the GIL, so they overlap with
  the numpy work of the main thread instead of competing with it for the GIL.
* ``in_background`` runs an iterator on a reader thread behind a bounded queue;
  ``Sink`` runs a function on a writer thread behind a bounded queue. Errors travel to
  the main thread; closing the iterator or aborting the sink stops and joins the
  thread promptly (every wait polls a stop flag), so a failed run leaves no thread.
* ``reopen_source``: the reader thread's own dataset handle, since GDAL handles are
  not thread-safe.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geosr.errors import InputError, one_line
from geosr.plan import Plan
from geosr.tiling import Tile

T = TypeVar("T")

#: Source rows are read in whole source blocks while the rows of one tile row plus one
#: block row stay below this; else exactly the rows needed.
READ_BUFFER_BYTES = 32 << 20
#: Items waiting between two threads.
QUEUE_DEPTH = 2
#: How often a blocked thread looks at its stop flag (seconds).
_POLL = 0.05


class SourceRows:
    """The processed window's rows, read once, top to bottom, one tile row at a time.

    Rows are read up to the end of a source block row when a tile row plus a block row
    fit in ``READ_BUFFER_BYTES`` (GDAL's capped block cache cannot hold a block row of a
    wide scene, so unaligned reads would decode its blocks again for the next tile
    row), else exactly the rows needed. They go into one buffer allocated up front, so
    memory is bounded by the budget or by one tile row, whichever is larger.

    Args:
        ds: The source (used by one thread only).
        plan: The run's plan.
        stages: Busy-seconds accumulator (``read``).
    """

    def __init__(self, ds: Any, plan: Plan, stages: dict[str, float]) -> None:
        self.ds, self.plan, self.stages = ds, plan, stages
        w = plan.window
        self.r0, self.c0 = int(w.row_off), int(w.col_off)
        self.height, self.width = int(w.height), int(w.width)
        block_h = int(ds.block_shapes[plan.bands[0] - 1][0])
        kind = plan.mask.kind
        row_bytes = self.width * (len(plan.bands) * np.dtype(plan.dtype).itemsize
                                  + (kind in ("mask", "alpha")) + 2 * (kind == "alpha"))
        tile_rows = min(self.height, plan.grid.tile_size)
        fits = (tile_rows + block_h) * row_bytes <= READ_BUFFER_BYTES
        self.step = block_h if fits else 1
        cap = min(self.height, tile_rows + self.step)
        alpha_dtype = (ds.dtypes[plan.mask.alpha_band - 1] if plan.mask.alpha_band
                       else "uint8")
        self.parts: list[np.ndarray | None] = [
            np.empty((len(plan.bands), cap, self.width), dtype=plan.dtype),
            np.empty((cap, self.width), dtype=np.uint8) if kind in ("mask", "alpha") else None,
            np.empty((cap, self.width), dtype=alpha_dtype)
            if kind == "alpha" and plan.mask.alpha_band else None]
        self.top = self.bottom = 0

    def _read(self, win: Window, into: int) -> None:
        plan = self.plan
        data, mask, alpha = (None if a is None else a[..., into : into + int(win.height), :]
                             for a in self.parts)
        assert data is not None
        try:
            self.ds.read(plan.bands, window=win, out=data)
            if mask is not None:
                self.ds.read_masks(plan.bands[0], window=win, out=mask)
            if alpha is not None:
                self.ds.read(plan.mask.alpha_band, window=win, out=alpha)
        except RasterioError as e:
            raise InputError(f"cannot read {self.ds.name}: {one_line(e)}") from e

    def rows(self, start: int, stop: int) -> list[np.ndarray | None]:
        """Data (C, n, W), mask (n, W) and alpha (n, W) of rows ``[start, stop)``, views
        valid until the next call; ``start`` never decreases from one call to the next."""
        if stop > self.bottom:
            t0 = time.perf_counter()
            aligned = -(-(self.r0 + stop) // self.step) * self.step - self.r0
            end = min(self.height, aligned)
            first = max(start, self.bottom)
            keep = first - start
            if keep:  # rows still needed move to the front (numpy handles the overlap)
                for a in self.parts:
                    if a is not None:
                        a[..., :keep, :] = a[..., start - self.top : first - self.top, :]
            self._read(Window(self.c0, self.r0 + first, self.width, end - first), keep)
            self.top, self.bottom = start, end
            self.stages["read"] += time.perf_counter() - t0
        o = start - self.top
        return [None if a is None else a[..., o : o + stop - start, :] for a in self.parts]

    def tile(self, tile: Tile) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Data (C, h, w), mask and alpha (h, w) of a tile's read window: the values a
        read of that window gives, copied out of the row buffer."""
        rs, cs = tile.rows, tile.cols
        data, mask, alpha = (None if a is None else np.array(a[..., cs.read_start : cs.read_stop])
                             for a in self.rows(rs.read_start, rs.read_stop))
        assert data is not None
        return data, mask, alpha


def reopen_source(ds: Any, threads: int) -> Any:
    """A second handle on ``ds`` (GTiff: decoding on ``threads`` GDAL threads), or
    ``None`` when it cannot be reopened by name."""
    opts = {"num_threads": str(threads)} if ds.driver == "GTiff" and threads > 1 else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            h = rasterio.open(ds.name, **opts)
    except (RasterioError, OSError, ValueError, TypeError):
        return None
    if (h.width, h.height, h.count, h.dtypes) != (ds.width, ds.height, ds.count, ds.dtypes):
        h.close()
        return None
    return h


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _offer(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first (the other side gave up)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def in_background(produce: Callable[[], Iterator[T]], name: str) -> Iterator[T]:
    """Iterate ``produce()`` on a thread, ``QUEUE_DEPTH`` items ahead; its errors are
    raised here. Closing this generator stops and joins the thread."""
    q: queue.Queue = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()

    def run() -> None:
        end: Any = None
        try:
            for item in produce():
                if not _offer(q, item, stop):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            end = _Failed(e)
        _offer(q, end, stop)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class Sink:
    """Calls ``fn(*item)`` for every item, in order: inline, or on a writer thread fed
    through a bounded queue, whose error the next ``put`` or ``close`` raises.

    Args:
        fn: The writing function.
        threaded: Run ``fn`` on its own thread.
        name: The thread's name.
    """

    def __init__(self, fn: Callable[..., None], *, threaded: bool, name: str) -> None:
        self.fn = fn
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.q: queue.Queue | None = queue.Queue(QUEUE_DEPTH) if threaded else None
        self.thread: threading.Thread | None = None
        if threaded:
            self.thread = threading.Thread(target=self._run, name=name, daemon=True)
            self.thread.start()

    def _run(self) -> None:
        assert self.q is not None
        while not self.stop.is_set():
            try:
                item = self.q.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is None:
                return
            try:
                self.fn(*item)
            except BaseException as e:  # noqa: BLE001 - raised in the producing thread
                self.error = e
                return

    def _put(self, item: tuple[Any, ...] | None) -> None:
        assert self.q is not None and self.thread is not None
        while True:
            alive = self.thread.is_alive()
            if self.error is not None:
                raise self.error
            if not alive:
                raise RuntimeError("the writer thread has stopped")
            try:
                self.q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def put(self, *item: Any) -> None:
        """Hand one item over (waits while the queue is full)."""
        if self.q is None:
            self.fn(*item)
        else:
            self._put(item)

    def close(self) -> None:
        """Wait until every item is written; raise the writer's error, if any."""
        if self.thread is not None:
            self._put(None)
            self.thread.join()
            if self.error is not None:
                raise self.error

    def abort(self) -> None:
        """Stop the writer after its current item and join it (also after ``close``)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
