"""Running the tile computation on a Dask cluster (``dask.distributed``).

The client (this process) keeps the roles that need the files: it plans the run,
reads and prepares the input windows, blends the returned tiles and is the one
writer. Workers only run ``geosr.engine.predict_tiles`` on chunks of tiles they
receive, so no shared filesystem is assumed and the output is the same as the
local loop's (same function, same chunks). (Whole scenes run on workers, with shared
paths, in ``geosr.scenes``; it reuses ``connect``, ``model_ref`` and ``plugin_installed``.)

* The model is loaded once per worker process, never pickled per task: a task
  carries a small ``ModelRef``; models named by a string (``bicubic``,
  ``lgun-x4``, a ``.safetensors`` path) are loaded from it on first use and kept
  in a per-process cache, after checking that the weights' digest is the client's
  (the one the provenance tags record); ``Upscaler`` objects are shipped once through a
  ``WorkerPlugin``, which the scheduler also installs on workers that join or
  restart later.
* Backpressure: at most ``max_in_flight`` chunks are submitted and not yet
  consumed (default two per worker thread), so the client's memory is bounded
  whatever the scene size. Results are consumed in submission order, which the
  streaming blender needs.
* A worker that dies mid-task is replaced by its nanny and its tasks are rerun
  elsewhere (the task's inputs are held by the scheduler); an error inside a task
  is raised in the client with its original type.
* GPU workers (``gpu=True``): a ``dask_cuda.LocalCUDACluster`` (one worker per
  GPU) whose workers advertise the resource ``{"GPU": 1}``; model tasks then
  request that resource, so they only land on GPU workers. **Untested here** (no
  GPU, no dask-cuda on the development machine).

``distributed`` is imported by this module; ``import geosr`` does not import it.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from distributed import Client, KilledWorker, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.security import Security

from geosr.engine import Job, JobResult, ModelWork, predict_tiles
from geosr.errors import GeosrError, OptionError, one_line
from geosr.model_cache import ModelRef, forget_model, install_model, worker_model
from geosr.models import Upscaler

#: Resource that GPU workers advertise and model tasks request in GPU mode.
GPU_RESOURCE = {"GPU": 1}
#: A scheduler address: ``[protocol://]host:port``.
_ADDRESS_RE = re.compile(r"^(?:(?P<proto>tcp|tls|ucx|ws|wss)://)?(?P<host>\[[0-9a-fA-F:.]+\]|"
                         r"[A-Za-z0-9_.-]+):(?P<port>\d{1,5})/?$")


def check_scheduler_address(address: str) -> str:
    """Validate ``[tcp|tls|ucx|ws|wss://]HOST:PORT`` and return it.

    Raises:
        OptionError: anything else.
    """
    m = _ADDRESS_RE.match(address.strip())
    if m is None or not 0 < int(m["port"]) < 65536:
        raise OptionError(f"--scheduler must be [tcp|tls://]HOST:PORT, got {address!r}")
    return address.strip()


def local_security() -> Security:
    """TLS with a fresh, temporary CA and certificate for a local cluster: only this
    process (and the workers it starts) hold the key, so another local process that
    finds the scheduler's port cannot submit work to it."""
    return Security.temporary()


@dataclass
class DaskCluster:
    """A client and how geosr submits work to it.

    Attributes:
        client: A connected ``distributed.Client``.
        resources: Worker resources each model task requests (``{"GPU": 1}`` in GPU
            mode), or ``None``.
        max_in_flight: Chunks submitted but not yet consumed; ``None`` means two per
            worker thread.
    """

    client: Any
    resources: dict[str, float] | None = None
    max_in_flight: int | None = None

    def in_flight_limit(self) -> int:
        """The backpressure bound actually used."""
        if self.max_in_flight is not None:
            return max(1, int(self.max_in_flight))
        threads = sum(self.client.nthreads().values())
        return max(2, 2 * threads)


def as_cluster(cluster: Any) -> DaskCluster:
    """``cluster`` (a ``distributed.Client`` or a ``DaskCluster``) as a ``DaskCluster``.

    Raises:
        OptionError: anything else.
    """
    if isinstance(cluster, DaskCluster):
        return cluster
    if isinstance(cluster, Client):
        return DaskCluster(cluster)
    raise OptionError(f"cluster must be a distributed.Client or a DaskCluster, got {cluster!r}")


@contextmanager
def connect(*, workers: int | None = None, scheduler: str | None = None, gpu: bool = False,
            threads_per_worker: int = 1, max_in_flight: int | None = None,
            processes: bool = True) -> Iterator[DaskCluster]:
    """Start a local cluster or connect to a running scheduler, for one ``with`` block.

    Args:
        workers: Start a ``LocalCluster`` of this many worker processes, TLS with
            temporary credentials on the loopback interface (``local_security``; with
            ``gpu``: that many GPU workers; default one per GPU).
        scheduler: Address of a running scheduler (``tcp://HOST:PORT`` or
            ``tls://HOST:PORT``) instead; TLS credentials come from the dask config.
        gpu: Model tasks request the ``GPU`` resource; without ``scheduler`` a
            ``dask_cuda.LocalCUDACluster`` is started (needs dask-cuda; untested here).
            Workers of an external cluster must be started with ``--resources GPU=1``.
        threads_per_worker: Threads per local worker (1: the model uses the cores).
        max_in_flight: Backpressure bound (see ``DaskCluster``).
        processes: Local workers are processes (default) or threads of this process.

    Yields:
        A ``DaskCluster``; the local cluster is shut down on exit, also on errors and
        Ctrl-C.

    Raises:
        OptionError: bad combination, dask-cuda missing, scheduler unreachable.
    """
    if workers is not None and scheduler is not None:
        raise OptionError("give either --workers or --scheduler, not both")
    if workers is not None and workers < 1:
        raise OptionError(f"--workers must be >= 1, got {workers}")
    if workers is None and scheduler is None and not gpu:
        raise OptionError("give --workers N or --scheduler tcp://HOST:PORT")
    resources = dict(GPU_RESOURCE) if gpu else None
    if scheduler is not None:
        scheduler = check_scheduler_address(scheduler)
        try:  # security: the user's dask config (distributed.comm.tls.*), see docs/geosr.md
            client = Client(scheduler, timeout="10s")
        except Exception as e:  # noqa: BLE001 - comm errors come in many types
            raise OptionError(
                f"cannot reach the Dask scheduler at {scheduler}: {one_line(e)}") from e
        try:
            yield DaskCluster(client, resources, max_in_flight)
        finally:
            client.close()
        return
    common: dict[str, Any] = {
        "n_workers": workers, "threads_per_worker": threads_per_worker,
        "dashboard_address": None, "silence_logs": logging.CRITICAL,
    }
    if gpu:
        if importlib.util.find_spec("dask_cuda") is None:
            raise OptionError("--gpu-workers needs dask-cuda, which is not installed "
                              "(pip install dask-cuda)")
        from dask_cuda import LocalCUDACluster  # pragma: no cover - needs a GPU

        local = LocalCUDACluster(protocol="tls", host="127.0.0.1", resources=resources,
                                 security=local_security(), **common)  # pragma: no cover
    else:
        with dask.config.set(_WORKER_ENV):
            if processes:
                local = LocalCluster(processes=True, protocol="tls", host="127.0.0.1",
                                     security=local_security(), **common)
            else:  # threads of this process: nothing listens on a port
                local = LocalCluster(processes=False, protocol="inproc", **common)
    try:
        with Client(local) as client:
            yield DaskCluster(client, resources, max_in_flight)
    finally:
        local.close()


#: Dask sets ``MALLOC_TRIM_THRESHOLD_`` (64 KiB) in new worker processes to hand memory
#: back to the OS sooner. Setting it disables glibc's adaptive mmap threshold, so every
#: large temporary tensor becomes a fresh mmap with page faults: LGUN tiles ran markedly
#: slower in such workers. ``None`` unsets it (dask's documented override).
_WORKER_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


# --- worker side ---------------------------------------------------------------


class ModelPlugin(WorkerPlugin):
    """Ships an ``Upscaler`` object to every worker once (also to later ones)."""

    def __init__(self, key: str, model: Upscaler) -> None:
        self.name = key
        self.key = key
        self.model = model

    def setup(self, worker: Any) -> None:
        install_model(self.key, self.model)

    def teardown(self, worker: Any) -> None:
        forget_model(self.key)


def _predict_task(ref: ModelRef, work: ModelWork, xs: list[np.ndarray],
                  has_data: list[bool]) -> tuple[list[np.ndarray | None], float]:
    return predict_tiles(worker_model(ref), work, xs, has_data)


# --- client side ---------------------------------------------------------------


def model_ref(spec: str | Upscaler, model: Upscaler, *, scale: int, device: str,
              ensemble: bool = False) -> tuple[ModelRef, ModelPlugin | None]:
    """How workers find the model of a run: by name, or through a plugin.

    Args:
        spec: What workers load: a name or path (loaded by each worker, its digest
            checked against ``model``'s), or a model object (shipped once per worker by
            the returned plugin, as given: pass it already wrapped in its ensemble).
        model: The client's descriptor of the model (the one the output's tags name).
        scale: Upscaling factor.
        device: Device for neural models on the workers.
        ensemble: Workers wrap what they load by name in its self-ensemble.

    Returns:
        The ``ModelRef`` tasks carry, and the plugin to install for the run (``None``
        for a name).
    """
    if isinstance(spec, str):
        return ModelRef.for_spec(spec, scale, device, model.sha256, ensemble), None
    key = f"geosr-model-{uuid.uuid4().hex}"
    return ModelRef(key, None, scale, device), ModelPlugin(key, model)


@contextmanager
def plugin_installed(client: Any, plugin: ModelPlugin | None) -> Iterator[None]:
    """Within the block, ``plugin`` (if any) is installed on every worker, also on those
    that join or restart meanwhile; it is removed at the end."""
    if plugin is not None:
        client.register_plugin(plugin)
    try:
        yield
    finally:
        if plugin is not None:
            try:
                client.unregister_worker_plugin(plugin.name)
            except Exception:  # noqa: BLE001 - cleanup must not mask the real error
                pass


@dataclass
class DaskExecutor:
    """``geosr.engine.TileExecutor`` that runs chunks on a Dask cluster.

    Build it with ``DaskExecutor.create``.
    """

    cluster: DaskCluster
    ref: ModelRef
    plugin: ModelPlugin | None = None

    @classmethod
    def create(cls, cluster: Any, spec: str | Upscaler, model: Upscaler, *, scale: int,
               device: str, ensemble: bool = False) -> DaskExecutor:
        """An executor for ``spec`` (what workers load) whose descriptor is ``model``.

        ``ensemble``: workers wrap what they load by name in its self-ensemble; a model
        object is shipped as given, so pass it already wrapped.
        """
        ref, plugin = model_ref(spec, model, scale=scale, device=device, ensemble=ensemble)
        return cls(as_cluster(cluster), ref, plugin)

    def map(self, work: ModelWork, jobs: Iterable[Job]) -> Iterator[JobResult]:
        """Submit chunks with bounded look-ahead and yield their results in order."""
        client = self.cluster.client
        limit = self.cluster.in_flight_limit()
        run = uuid.uuid4().hex[:8]
        pending: deque[tuple[Any, Any]] = deque()
        with plugin_installed(client, self.plugin):
            try:
                for i, (key, xs, has_data) in enumerate(jobs):
                    fut = client.submit(_predict_task, self.ref, work, xs, has_data,
                                        pure=False, key=f"geosr-tiles-{run}-{i}",
                                        resources=self.cluster.resources)
                    pending.append((key, fut))
                    if len(pending) >= limit:
                        yield self._result(*pending.popleft())
                while pending:
                    yield self._result(*pending.popleft())
            finally:
                if pending:
                    client.cancel([f for _, f in pending])

    @staticmethod
    def _result(key: Any, fut: Any) -> JobResult:
        try:
            outs, seconds = fut.result()
        except KilledWorker as e:
            raise GeosrError(f"Dask workers kept dying while running tiles: {e}") from e
        return key, outs, seconds
