"""Batch super-resolution of many scenes into one folder: idempotent, resumable, recorded.

``run_batch(sources, out_dir, scale=...)`` writes ``OUT/<stem>_x<scale>.tif`` for
every scene, one after the other, each through ``geosr.api.upscale`` (locally
or with its tiles on a Dask cluster, started once for the whole batch). Sources
that are this batch's own outputs (OUT inside the globbed folder) are left out.

* Idempotent: a scene whose output exists, is not older than the scene and whose
  provenance tags match the request (model and weights digest, scale, tiling,
  consistency, bands, geosr version, source name) is *skipped*. A geosr output made
  with other settings is replaced; any other file at that name is a failure.
* Resumable: outputs are renamed into place only when complete, so a crash leaves
  finished scenes (skipped on the next run) and hidden temporary files, which the
  next run removes. A lock file keeps two batches out of the same folder.
* Recorded: ``OUT/manifest.json`` lists each scene with its status (``ok``,
  ``skipped``, ``failed``), seconds, output megapixels and error; it is rewritten
  atomically after every scene, so it is current even after a crash.
* A failing scene is recorded and the others still run.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import rasterio

from geosr import __version__
from geosr.api import upscale
from geosr.ensemble import with_ensemble
from geosr.errors import GeosrWarning, OptionError, error_summary
from geosr.io import check_source, default_destination, is_local, remove_stale_temporaries
from geosr.models import Upscaler, default_model_spec, load_model
from geosr.options import RunOptions

#: Name of the manifest written in the output folder.
MANIFEST_NAME = "manifest.json"
#: Lock file held in the output folder while a batch runs.
LOCK_NAME = ".geosr-batch.lock"
STATUSES = ("ok", "skipped", "failed")


@dataclass
class SceneRecord:
    """One line of the manifest.

    Attributes:
        scene: Source path as given (after glob expansion).
        output: Output path.
        status: ``ok`` (written now), ``skipped`` (up to date) or ``failed``.
        seconds: Wall time spent on the scene.
        mpix: Output size in megapixels (0 when failed).
        error: One-line reason of a failure, else ``None``.
    """

    scene: str
    output: str
    status: str
    seconds: float
    mpix: float
    error: str | None = None


@dataclass
class BatchReport:
    """What ``run_batch`` did.

    Attributes:
        out_dir: The output folder.
        manifest: Path of the manifest.
        records: One record per scene, in processing order.
        request: The settings the outputs were checked against.
    """

    out_dir: Path
    manifest: Path
    records: list[SceneRecord] = field(default_factory=list)
    request: dict[str, str] = field(default_factory=dict)

    def count(self, status: str) -> int:
        """Number of scenes with ``status``."""
        return sum(r.status == status for r in self.records)

    @property
    def failed(self) -> list[SceneRecord]:
        return [r for r in self.records if r.status == "failed"]

    def summary(self) -> str:
        """``N scenes: a ok, b skipped, c failed``."""
        counts = ", ".join(f"{self.count(s)} {s}" for s in STATUSES)
        return f"{len(self.records)} scenes: {counts}"


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
def _folder_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``OUT/.geosr-batch.lock`` (released at exit or death)."""
    fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise OptionError(f"another geosr batch is writing to {out_dir}") from e
        yield
    finally:
        os.close(fd)


def write_manifest(report: BatchReport) -> None:
    """Write the manifest atomically (a crash never leaves a truncated one)."""
    doc = {
        "geosr_version": __version__,
        "request": report.request,
        "summary": {s: report.count(s) for s in STATUSES},
        "scenes": [asdict(r) for r in report.records],
    }
    tmp = report.manifest.with_name(f".{report.manifest.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, report.manifest)


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
    progress: bool | None = None,
    options: RunOptions | None = None,
) -> BatchReport:
    """Super-resolve every scene of ``sources`` into ``out_dir``; see the module docstring.

    Args:
        sources: Paths and/or glob patterns (``"scenes/*.tif"``), expanded sorted.
        out_dir: Output folder (created if missing); outputs are
            ``<stem>_x<scale>.tif``, the manifest is ``manifest.json``.
        scale: 2, 3 or 4.
        model: As ``geosr.api.upscale``; loaded once for the whole batch.
        bands, tile_size, overlap, batch_size, device, creation_options, cog,
            consistency, aoi, value_range: As ``geosr.api.upscale``, for every scene.
        force: Recompute scenes even when their output is up to date.
        cluster: A ``distributed.Client`` or ``geosr.distributed.DaskCluster`` to run
            tiles on; or give ``workers``/``scheduler``/``gpu`` to start/connect one
            for the batch (``geosr.distributed.connect``).
        workers: Local Dask worker processes.
        scheduler: Address of a running Dask scheduler.
        gpu: GPU workers (dask-cuda; untested).
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
    distributed = cluster is not None or workers is not None or scheduler is not None or gpu
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
    report = BatchReport(out, out / MANIFEST_NAME, request=request)
    if progress is None:
        progress = sys.stderr.isatty()
    with ExitStack() as stack:
        stack.enter_context(_folder_lock(out))
        remove_stale_temporaries(out)
        started: list[Any] = [cluster]

        def get_cluster() -> Any:
            """The cluster, started on first need (a batch of skips starts none)."""
            if started[0] is None and distributed:
                from geosr.distributed import connect

                started[0] = stack.enter_context(
                    connect(workers=workers, scheduler=scheduler, gpu=gpu))
            return started[0]

        bar = None
        if progress:
            from tqdm import tqdm

            bar = stack.enter_context(tqdm(total=len(scenes), unit="scene", file=sys.stderr,
                                           dynamic_ncols=True))
        try:
            for src, dst in zip(scenes, outputs, strict=True):
                report.records.append(_one_scene(
                    src, dst, request, opts, force=force, get_cluster=get_cluster))
                write_manifest(report)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(", ".join(f"{report.count(s)} {s}" for s in STATUSES))
        finally:
            write_manifest(report)
    return report


def _one_scene(src: Path, dst: Path, request: dict[str, str], options: RunOptions, *,
               force: bool, get_cluster: Any) -> SceneRecord:
    t0 = time.perf_counter()
    state = output_state(src, dst, request)
    if state == "current" and not force:
        with rasterio.open(dst) as ds:
            mpix = ds.width * ds.height / 1e6
        return SceneRecord(str(src), str(dst), "skipped", time.perf_counter() - t0, mpix)
    if state == "foreign":
        return SceneRecord(str(src), str(dst), "failed", time.perf_counter() - t0, 0.0,
                           f"{dst} exists and is not a geosr output")
    cluster = get_cluster()  # outside the try: a cluster that cannot start stops the batch
    try:
        result = upscale(src, dst, options=options, overwrite=state != "missing",
                         progress=False, cluster=cluster)
        with rasterio.open(result.dst) as ds:
            mpix = ds.width * ds.height / 1e6
    except Exception as e:  # noqa: BLE001 - one scene's failure must not stop the batch
        return SceneRecord(str(src), str(dst), "failed", time.perf_counter() - t0, 0.0,
                           error_summary(e))
    return SceneRecord(str(src), str(dst), "ok", time.perf_counter() - t0, mpix)
