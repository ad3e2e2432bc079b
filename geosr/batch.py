"""Batch super-resolution of many scenes into one folder: idempotent, resumable, recorded.

``run_batch(sources, out_dir, scale=...)`` writes ``OUT/<stem>_x<scale>.tif`` for
every scene through ``geosr.api.upscale``: locally, one scene after the other; or on a
Dask cluster (started once for the whole batch, only if some scene needs work), where
``placement`` says what a task is (``geosr.scenes``): a whole scene, run on a worker
that reads its source and writes its output itself (``scenes``), or the tiles of one
scene at a time, the client reading and writing (``tiles``); ``auto`` picks. Sources
that are this batch's own outputs (OUT inside the globbed folder) are left out.

* Idempotent: a scene whose output exists, is not older than the scene and whose
  provenance tags match the request (model and weights digest, scale, tiling,
  consistency, bands, geosr version, source name) is *skipped*. A geosr output made
  with other settings is replaced; any other file at that name is a failure. The
  client decides this for every scene before any work.
* Resumable: outputs are renamed into place only when complete, so a crash (of the
  client or of a worker) leaves finished scenes (skipped on the next run) and hidden
  temporary files, which later writers and the end of the batch remove. A lock file
  keeps two batches out of the same folder.
* Recorded: ``OUT/manifest.json`` lists each scene (in the order of the scenes) with
  its status (``ok``, ``skipped``, ``failed``), seconds, output megapixels, error and,
  for scene placement, the worker that wrote it; it is rewritten atomically as scenes
  complete (at most once per ``MANIFEST_INTERVAL_S``) and at the end, so after a crash it
  lacks at most the last second's scenes, whose outputs the next run skips anyway.
* A failing scene is recorded and the others still run.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import rasterio

from geosr.api import upscale
from geosr.ensemble import with_ensemble
from geosr.errors import GeosrWarning, OptionError, error_summary
from geosr.io import check_source, default_destination, is_local, remove_stale_temporaries
from geosr.manifest import (
    MANIFEST_INTERVAL_S,
    MANIFEST_NAME,
    STATUSES,
    BatchReport,
    SceneRecord,
    write_manifest,
)
from geosr.models import Upscaler, default_model_spec, load_model
from geosr.options import RunOptions
from geosr.scenes import check_placement, choose_placement, run_scenes, scene_task

#: Lock file held in the output folder while a batch runs.
LOCK_NAME = ".geosr-batch.lock"


def expand_sources(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
                   ) -> list[Path]:
    """Expand glob patterns (sorted) and keep plain paths, without duplicates.

    Glob matches that are not regular files (folders, pipes) are left out; a plain
    path that exists but is not a regular file is an error.

    Raises:
        OptionError: a pattern or path matches nothing, or nothing at all is left.
        InputError: a plain path is a folder, a pipe or a device.
    """
    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    out: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if glob.has_magic(text):
            matches = [m for m in sorted(glob.glob(text)) if Path(m).is_file()]
            if not matches:
                raise OptionError(f"no file matches {text!r}")
            out.extend(Path(m) for m in matches)
        else:
            if is_local(text) and os.path.exists(text):
                check_source(text)
            out.append(Path(text))
    unique = list(dict.fromkeys(out))
    if not unique:
        raise OptionError("no scenes given")
    return unique


def output_state(src: Path, dst: Path, request: dict[str, str]) -> str:
    """``missing``, ``current`` (skip), ``stale`` (a geosr output to redo) or ``foreign``."""
    if not dst.exists():
        return "missing"
    try:
        with rasterio.open(dst) as ds:
            tags = ds.tags()
    except rasterio.errors.RasterioError:
        return "foreign"
    if "GEOSR_MODEL" not in tags:
        return "foreign"
    want = dict(request, GEOSR_SOURCE=src.name)
    if any(tags.get(k) != v for k, v in want.items()):
        return "stale"
    with contextlib.suppress(OSError):
        if src.stat().st_mtime > dst.stat().st_mtime:
            return "stale"
    return "current"


@contextmanager
def _folder_lock(out_dir: Path) -> Iterator[str]:
    """Hold an exclusive lock on ``OUT/.geosr-batch.lock`` (released at exit or death).

    Yields:
        A fresh token written into the lock file: a worker that reads it there sees
        this batch's folder (``geosr.scenes.workers_reach``).
    """
    fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise OptionError(f"another geosr batch is writing to {out_dir}") from e
        token = uuid.uuid4().hex
        os.ftruncate(fd, 0)
        os.pwrite(fd, token.encode(), 0)
        yield token
    finally:
        os.close(fd)


def run_batch(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
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
    consistency: str = "none",
    aoi: str | os.PathLike[str] | None = None,
    value_range: str | Sequence[tuple[float, float]] | None = None,
    force: bool = False,
    cluster: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    gpu: bool = False,
    placement: str = "auto",
    progress: bool | None = None,
    options: RunOptions | None = None,
) -> BatchReport:
    """Super-resolve every scene of ``sources`` into ``out_dir``; see the module docstring.

    Args:
        sources: Paths and/or glob patterns (``"scenes/*.tif"``), expanded sorted.
        out_dir: Output folder (created if missing); outputs are
            ``<stem>_x<scale>.tif``, the manifest is ``manifest.json``.
        scale: 2, 3 or 4.
        model: As ``geosr.api.upscale``; loaded once for the whole batch (once per
            worker process on a cluster).
        bands, tile_size, overlap, batch_size, device, creation_options, cog,
            consistency, aoi, value_range: As ``geosr.api.upscale``, for every scene.
        force: Recompute scenes even when their output is up to date.
        cluster: A ``distributed.Client`` or ``geosr.distributed.DaskCluster`` to run
            on; or give ``workers``/``scheduler``/``gpu`` to start/connect one for the
            batch (``geosr.distributed.connect``).
        workers: Local Dask worker processes.
        scheduler: Address of a running Dask scheduler.
        gpu: GPU workers (dask-cuda; untested).
        placement: With a cluster, what one task is: ``scenes`` (a whole scene on a
            worker, which must reach the source and OUT by the same paths), ``tiles``
            (tiles of one scene at a time, the client reads and writes) or ``auto``
            (``geosr.scenes.choose_placement``). ``scenes`` needs a cluster.
        progress: Progress bar over scenes on stderr (default: when stderr is a tty).
        options: A ``RunOptions`` instead of the option arguments (``scale`` through
            ``consistency``).

    Returns:
        A ``BatchReport``; scenes that failed have ``status == "failed"`` (no exception).

    Raises:
        GeosrError: bad options, no scenes, two scenes with the same output name, the
            folder locked by another batch, or the cluster cannot be started.
        KeyboardInterrupt: on Ctrl-C/SIGTERM, after the manifest is written.
    """
    distributed = cluster is not None or workers is not None or scheduler is not None or gpu
    check_placement(placement, cluster=distributed)
    opts = options or RunOptions.from_kwargs(
        scale=scale, model=model, bands=bands, tile_size=tile_size, overlap=overlap,
        batch_size=batch_size, device=device, creation_options=creation_options, cog=cog,
        consistency=consistency, aoi=aoi, value_range=value_range)
    if opts.uncertainty is not None:
        # One path cannot serve every scene; a batch writes only the predictions.
        raise OptionError("geosr batch does not write --uncertainty maps (use geosr upscale)")
    scale = opts.scale
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out-dir {out} exists and is not a folder")
    scenes = expand_sources(sources)
    # With OUT among the scene folders, a glob also matches this batch's own outputs.
    own = {default_destination(out / s.name, scale).resolve() for s in scenes}
    scenes = [s for s in scenes if s.resolve() not in own]
    outputs = [default_destination(out / s.name, scale) for s in scenes]
    seen: dict[Path, Path] = {}
    for s, o in zip(scenes, outputs, strict=True):
        if o in seen:
            raise OptionError(f"{seen[o]} and {s} would both be written to {o}")
        seen[o] = s
    model = opts.model
    if model is None:
        model, fallback = default_model_spec(scale)
        if fallback:
            warnings.warn(fallback, GeosrWarning, stacklevel=2)
    # Loaded once: locally it runs every scene; with a cluster it is the descriptor
    # (name, digest) the outputs are checked against, and workers load their own.
    upscaler = with_ensemble(load_model(model, scale,
                                        device="cpu" if distributed else opts.device),
                             opts.ensemble)
    run_model: str | Upscaler = model if distributed and isinstance(model, str) else upscaler
    opts = opts.with_model(run_model)
    request = opts.request_tags(upscaler)
    out.mkdir(parents=True, exist_ok=True)
    report = BatchReport(out, out / MANIFEST_NAME, request=request,
                         placement=placement if distributed else "local")
    if progress is None:
        progress = sys.stderr.isatty()
    slots: list[SceneRecord | None] = [None] * len(scenes)
    with ExitStack() as stack:
        token = stack.enter_context(_folder_lock(out))
        remove_stale_temporaries(out)
        # Registered before the cluster starts, so it runs once the cluster is closed:
        # workers killed mid-scene leave temporaries of dead processes behind.
        stack.callback(remove_stale_temporaries, out)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = stack.enter_context(tqdm(total=len(scenes), unit="scene", file=sys.stderr,
                                           dynamic_ncols=True))

        last = [0.0, 0.0]  # when the manifest was last written, and how long it took

        def record(i: int, rec: SceneRecord, write: bool = True) -> None:
            slots[i] = rec
            report.records = [r for r in slots if r is not None]
            # At most one rewrite per MANIFEST_INTERVAL_S (or 20 times its own duration):
            # with many workers, rewriting after every scene made the client the bottleneck.
            if write and time.monotonic() - last[0] >= max(MANIFEST_INTERVAL_S, 20 * last[1]):
                last[1] = write_manifest(report)
                last[0] = time.monotonic()
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(", ".join(f"{report.count(s)} {s}" for s in STATUSES))

        try:
            todo: list[tuple[int, bool]] = []  # (scene, overwrite) of the scenes to compute
            for i, (src, dst) in enumerate(zip(scenes, outputs, strict=True)):
                decided = _decided(src, dst, request, force=force)
                if isinstance(decided, SceneRecord):
                    record(i, decided, write=False)
                else:
                    todo.append((i, decided))
            write_manifest(report)
            # A cluster started here runs on this host, in this environment: it sees
            # the paths this process sees.
            started_here = cluster is None and scheduler is None
            if todo and distributed and cluster is None:
                from geosr.distributed import connect

                cluster = stack.enter_context(
                    connect(workers=workers, scheduler=scheduler, gpu=gpu))
            if todo and distributed:
                report.placement = choose_placement(
                    placement, cluster, pending=len(todo), started_here=started_here,
                    probe_src=str(scenes[todo[0][0]]), lock=out / LOCK_NAME, token=token)
            if todo and report.placement == "scenes":
                tasks = [scene_task(i, scenes[i], outputs[i], overwrite=ow) for i, ow in todo]
                for done in run_scenes(cluster, tasks, opts, upscaler):
                    i = done.index
                    for message in done.warnings:  # said here, as a local run says it
                        warnings.warn(message, GeosrWarning, stacklevel=2)
                    record(i, SceneRecord(str(scenes[i]), str(outputs[i]),
                                          "failed" if done.error else "ok", done.seconds,
                                          done.mpix, done.error, done.worker,
                                          done.warnings))
            else:
                for i, ow in todo:
                    record(i, _upscale_here(scenes[i], outputs[i], opts, overwrite=ow,
                                            cluster=cluster))
        finally:
            write_manifest(report)
    return report


def _decided(src: Path, dst: Path, request: dict[str, str], *,
             force: bool) -> SceneRecord | bool:
    """The record of a scene that needs no work (skipped, or a foreign file in the way),
    else whether computing it replaces an output."""
    t0 = time.perf_counter()
    state = output_state(src, dst, request)
    if state == "current" and not force:
        with rasterio.open(dst) as ds:
            mpix = ds.width * ds.height / 1e6
        return SceneRecord(str(src), str(dst), "skipped", time.perf_counter() - t0, mpix)
    if state == "foreign":
        return SceneRecord(str(src), str(dst), "failed", time.perf_counter() - t0, 0.0,
                           f"{dst} exists and is not a geosr output")
    return state != "missing"


def _upscale_here(src: Path, dst: Path, options: RunOptions, *, overwrite: bool,
                  cluster: Any) -> SceneRecord:
    """One scene read and written by this process (its tiles on ``cluster`` if any)."""
    t0 = time.perf_counter()
    try:
        result = upscale(src, dst, options=options, overwrite=overwrite, progress=False,
                         cluster=cluster)
        with rasterio.open(result.dst) as ds:
            mpix = ds.width * ds.height / 1e6
    except Exception as e:  # noqa: BLE001 - one scene's failure must not stop the batch
        return SceneRecord(str(src), str(dst), "failed", time.perf_counter() - t0, 0.0,
                           error_summary(e))
    return SceneRecord(str(src), str(dst), "ok", time.perf_counter() - t0, mpix,
                       warnings=tuple(result.warnings))
