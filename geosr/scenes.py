"""Whole scenes as Dask tasks: where a batch runs its scenes, and the scene task.

``geosr batch`` places its work on a cluster in one of two ways (``PLACEMENTS``):

* ``tiles``: scenes one after the other in the client, each scene's tiles on the
  workers (``geosr.distributed``); no path needs to be reachable from the workers.
* ``scenes``: each scene is one task (``run_scene``): the worker runs the same local
  ``geosr.api.upscale`` the client would, reading the source and writing the output
  itself, so the source and the output folder must be reachable from the workers (a
  shared filesystem, or GDAL virtual paths such as ``/vsis3/...`` for sources). The
  client only submits, collects and records; no pixel passes through it.

``choose_placement`` is the one place that decides (``auto``: scenes when there are at
least as many scenes to compute as workers and the workers reach the paths). A worker
loads the model once per process (``geosr.model_cache``, a ``ModelRef`` by name with its
digest checked, or a model object shipped by a plugin), as on the tile path, so the
outputs are the same files as a local batch's.

Faults: a scene on a worker that dies is rerun elsewhere by the scheduler (its
temporary output is left behind with a dead process id and removed by the next writer
in the folder); any other exception than a ``GeosrError`` is retried once
(``SCENE_RETRIES``, a transient I/O failure); a ``GeosrError`` is the scene's failure.

Importing this module imports neither dask nor rasterio (``geosr --help`` reads
``PLACEMENTS``); they are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosr.errors import GeosrError, OptionError, error_summary

if TYPE_CHECKING:
    from geosr.model_cache import ModelRef
    from geosr.models import Upscaler
    from geosr.options import RunOptions

#: ``--placement`` values: ``auto`` chooses ``scenes`` or ``tiles`` (``choose_placement``).
PLACEMENTS = ("auto", "scenes", "tiles")
#: Reruns of a scene task that raised something other than a ``GeosrError``.
SCENE_RETRIES = 1
#: Seconds the reachability probe of ``auto`` may take before tiles are chosen.
PROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SceneTask:
    """One scene to compute on a worker.

    Attributes:
        index: Position of the scene in the batch.
        src: Source path as the workers see it.
        dst: Output path as the workers see it.
        overwrite: Replace an existing (stale) output.
    """

    index: int
    src: str
    dst: str
    overwrite: bool


@dataclass(frozen=True)
class SceneDone:
    """What became of a ``SceneTask``.

    Attributes:
        index: ``SceneTask.index``.
        seconds: Time spent on the scene on its worker (0 when it never ran to the end).
        mpix: Output size in megapixels (0 when failed).
        worker: Address of the worker that wrote the output, else ``None``.
        error: One-line reason of a failure, else ``None``.
        warnings: The ``GeosrWarning`` messages of the run on the worker (Dask does not
            forward a task's warnings; the client issues them again).
    """

    index: int
    seconds: float
    mpix: float
    worker: str | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()


def check_placement(placement: str, *, cluster: bool) -> None:
    """Validate ``placement`` before any work.

    Raises:
        OptionError: not one of ``PLACEMENTS``, or ``scenes`` without a cluster.
    """
    if placement not in PLACEMENTS:
        raise OptionError(f"--placement must be one of {', '.join(PLACEMENTS)}, got "
                          f"{placement!r}")
    if placement == "scenes" and not cluster:
        raise OptionError("--placement scenes needs a cluster (--workers N or --scheduler "
                          "ADDR); without one every scene runs here")


def choose_placement(placement: str, cluster: Any, *, pending: int, started_here: bool,
                     probe_src: str, lock: Path, token: str) -> str:
    """``scenes`` or ``tiles`` for a batch with ``pending`` scenes to compute.

    ``auto`` is ``scenes`` when ``pending`` is at least the number of workers and the
    workers reach the paths: always for a cluster started by this process (same host,
    same environment), else when one worker finds ``probe_src`` and the batch's
    ``lock`` file holding ``token`` in a writable folder (``workers_reach``).

    Args:
        placement: One of ``PLACEMENTS`` (``check_placement``).
        cluster: A ``distributed.Client`` or ``geosr.distributed.DaskCluster``.
        pending: Scenes to compute (skipped ones left out).
        started_here: The cluster was started by this process.
        probe_src: The source a worker is asked about.
        lock: The batch's lock file in OUT.
        token: What the lock file holds for this batch.
    """
    if placement != "auto":
        return placement
    from geosr.distributed import as_cluster

    workers = len(as_cluster(cluster).client.nthreads())
    if workers == 0 or pending < workers:
        return "tiles"
    if started_here or workers_reach(cluster, probe_src, lock, token):
        return "scenes"
    return "tiles"


def workers_reach(cluster: Any, src: str, lock: Path, token: str) -> bool:
    """Whether a worker reads ``src`` and writes the folder of ``lock`` (one task).

    The lock file must hold ``token``: a folder of the same name on another machine
    is not the batch's folder.
    """
    from geosr.distributed import as_cluster

    dc = as_cluster(cluster)
    fut = dc.client.submit(_probe, _worker_path(src), _worker_path(lock), token, pure=False,
                           key=f"geosr-probe-{uuid.uuid4().hex[:8]}", resources=dc.resources)
    try:
        return bool(fut.result(timeout=PROBE_TIMEOUT_S))
    except Exception:  # noqa: BLE001 - a worker that cannot answer does not reach the paths
        return False
    finally:
        fut.cancel()


def run_scenes(cluster: Any, tasks: Sequence[SceneTask], options: RunOptions,
               model: Upscaler) -> Iterator[SceneDone]:
    """Run ``tasks`` on the cluster's workers; yield each outcome as it completes.

    Args:
        cluster: A ``distributed.Client`` or ``geosr.distributed.DaskCluster``.
        tasks: The scenes, with paths the workers see (``scene_task``).
        options: The run's options; ``options.model`` is what workers load (a name,
            or a model object shipped once per worker).
        model: The client's descriptor of the model (its digest is checked on workers).

    Yields:
        One ``SceneDone`` per task, in completion order. A scene whose workers kept
        dying or whose task raised is a failed ``SceneDone``; the others still run.
    """
    from distributed import as_completed

    from geosr.distributed import as_cluster, model_ref, plugin_installed

    assert options.model is not None, "the client resolves the model before planning"
    dc = as_cluster(cluster)
    client = dc.client
    ref, plugin = model_ref(options.model, model, scale=options.scale, device=options.device,
                            ensemble=options.ensemble)
    # The model travels in the ref (or plugin), never in every task.
    shipped = replace(options, model=None,
                      aoi=None if options.aoi is None else _worker_path(options.aoi))
    run = uuid.uuid4().hex[:8]
    with plugin_installed(client, plugin):
        futures = {
            client.submit(run_scene, ref, shipped, t, pure=False, retries=SCENE_RETRIES,
                          key=f"geosr-scene-{run}-{t.index}", resources=dc.resources): t
            for t in tasks
        }
        try:
            for fut in as_completed(futures):
                task = futures[fut]
                try:
                    yield fut.result()
                except Exception as e:  # noqa: BLE001 - one scene's failure is recorded
                    yield SceneDone(task.index, 0.0, 0.0, error=_task_error(e))
        finally:
            client.cancel(list(futures))


def scene_task(index: int, src: Path, dst: Path, *, overwrite: bool) -> SceneTask:
    """A ``SceneTask`` with local paths made absolute (workers may run elsewhere)."""
    return SceneTask(index, _worker_path(src), _worker_path(dst), overwrite)


def _worker_path(path: str | os.PathLike[str]) -> str:
    from geosr.io import is_local

    return os.path.abspath(path) if is_local(path) else os.fspath(path)


def _task_error(e: BaseException) -> str:
    from distributed import KilledWorker

    if isinstance(e, KilledWorker):
        return f"Dask workers kept dying while running this scene: {e}"
    return error_summary(e)


# --- worker side ---------------------------------------------------------------


def run_scene(ref: ModelRef, options: RunOptions, task: SceneTask) -> SceneDone:
    """Compute one scene in this worker with the local ``geosr.api.upscale``.

    A ``GeosrError`` (bad input, unusable destination) is returned as the scene's
    failure; anything else is raised, so that Dask retries the task.
    """
    import rasterio
    from distributed import get_worker

    from geosr.api import upscale
    from geosr.model_cache import worker_model

    t0 = time.perf_counter()
    worker = get_worker().address
    try:
        opts = options.with_model(worker_model(ref))
        result = upscale(task.src, task.dst, options=opts, overwrite=task.overwrite,
                         progress=False)
        with rasterio.open(result.dst) as ds:
            mpix = ds.width * ds.height / 1e6
    except GeosrError as e:
        return SceneDone(task.index, time.perf_counter() - t0, 0.0, worker, error_summary(e))
    return SceneDone(task.index, time.perf_counter() - t0, mpix, worker,
                     warnings=tuple(result.warnings))


def _probe(src: str, lock: str, token: str) -> bool:
    """Worker side of ``workers_reach``."""
    from geosr.io import is_local

    folder = os.path.dirname(lock)
    try:
        with open(lock, encoding="utf-8") as f:
            if f.read().strip() != token:
                return False
    except OSError:
        return False
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    if is_local(src):
        return os.path.isfile(src)
    import rasterio
    import rasterio.shutil

    from geosr.io import gdal_env_options

    with rasterio.Env(**gdal_env_options()):
        return bool(rasterio.shutil.exists(src))
