"""Scale-out on a real Dask cluster: worker processes, TLS on loopback.

One ``LocalCluster`` of two worker processes (started by ``geosr.distributed.connect``,
as ``geosr upscale --workers 2`` does) serves the module. Outputs are compared with
the local path bit for bit; a worker is SIGKILLed mid-job; client processes get
SIGINT/SIGTERM mid-write; a batch with a broken scene runs through the cluster.
Tests that use the cluster are marked ``cluster`` (those that signal processes also
``signals``); the option checks start no process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

pytest.importorskip("distributed")

from distributed import get_task_stream  # noqa: E402

from geosr.api import upscale  # noqa: E402
from geosr.batch import run_batch  # noqa: E402
from geosr.cli import run  # noqa: E402
from geosr.distributed import DaskCluster, connect  # noqa: E402
from geosr.errors import OptionError  # noqa: E402
from geosr.models import NearestUpscaler  # noqa: E402
from geosr.testing import (  # noqa: E402
    REPO_ROOT,
    SlowNearest,
    default_sigint,
    reuse_cluster,
    tiny_lgun,
    wait_while_running,
)

TILING = {"tile_size": 24, "overlap": 4, "batch_size": 2}


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskCluster]:
    with connect(workers=2) as c:
        yield c


@pytest.fixture
def scene(make_raster: Callable[..., Path]) -> Path:
    # nodata in the hole: the first tile (24 x 24) has no valid pixel
    return make_raster("scene.tif", (3, 100, 110), seed=4, nodata=0,
                       hole=(slice(0, 24), slice(0, 24)))


def _read(path: Path) -> tuple[np.ndarray, dict[str, str], Any]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.tags(), ds.transform


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")


@pytest.mark.cluster
def test_cluster_is_processes_on_loopback(cluster: DaskCluster) -> None:
    info = cluster.client.scheduler_info()
    assert info["address"].startswith("tls://127.0.0.1:")
    assert len(info["workers"]) == 2
    pids = cluster.client.run(os.getpid)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()


@pytest.mark.cluster
@pytest.mark.parametrize("model", [
    "bicubic",
    # Slow only because each worker process imports torch (~15 s on 2 busy cores).
    pytest.param("tiny-lgun", marks=pytest.mark.slow),
])
def test_cluster_output_equals_local(cluster: DaskCluster, scene: Path, tmp_path: Path,
                                     model: str) -> None:
    m: Any = tiny_lgun(2) if model == "tiny-lgun" else model  # an object goes by plugin
    local = upscale(scene, tmp_path / "local.tif", scale=2, model=m, **TILING)
    with get_task_stream(cluster.client) as ts:
        dist = upscale(scene, tmp_path / "dask.tif", scale=2, model=m, cluster=cluster,
                       **TILING)
    a, tags_a, tr_a = _read(local.dst)
    b, tags_b, tr_b = _read(dist.dst)
    np.testing.assert_array_equal(a, b)  # bit for bit, LGUN included
    assert tags_a == tags_b and tr_a == tr_b
    assert dist.skipped_tiles == local.skipped_tiles == 1
    workers = {t["worker"] for t in ts.data if "geosr-tiles" in str(t["key"])}
    assert len(workers) == 2  # both workers did tiles


@pytest.mark.cluster
def test_cluster_ensemble_and_uncertainty_equal_local(cluster: DaskCluster, scene: Path,
                                                      tmp_path: Path) -> None:
    """Workers wrap a named model in the same ensemble; the spread travels back with it."""
    outs = {}
    for name, c in (("local", None), ("dask", cluster)):
        upscale(scene, tmp_path / f"{name}.tif", scale=2, model="bicubic", cluster=c,
                ensemble=True, uncertainty=tmp_path / f"{name}_u.tif", **TILING)
        outs[name] = (_read(tmp_path / f"{name}.tif"), _read(tmp_path / f"{name}_u.tif"))
    for (a, tags_a, _), (b, tags_b, _) in zip(outs["local"], outs["dask"], strict=True):
        np.testing.assert_array_equal(a, b)
        assert tags_a == tags_b and tags_a["GEOSR_MODEL"] == "bicubic+ensemble"


@pytest.mark.cluster
def test_backpressure_reads_at_most_max_in_flight_ahead(cluster: DaskCluster) -> None:
    """The client pulls (reads) a chunk only when fewer than max_in_flight are pending."""
    from geosr.bands import band_groups
    from geosr.distributed import DaskExecutor
    from geosr.engine import ModelWork

    limit = 3
    ex = DaskExecutor.create(DaskCluster(cluster.client, max_in_flight=limit), "nearest",
                             NearestUpscaler(2), scale=2, device="cpu")
    pulled = 0

    def jobs() -> Iterator[tuple[int, list[np.ndarray], list[bool]]]:
        nonlocal pulled
        for i in range(12):
            pulled += 1
            yield i, [np.full((1, 4, 4), i / 12, np.float32)], [True]

    ahead = []
    work = ModelWork(2, band_groups(1, None), 1)
    for consumed, (key, outs, _) in enumerate(ex.map(work, jobs()), start=1):
        assert key == consumed - 1  # results come back in submission order
        np.testing.assert_array_equal(outs[0], np.full((1, 8, 8), key / 12, np.float32))
        ahead.append(pulled - consumed)
    assert len(ahead) == 12 and max(ahead) == limit - 1


@pytest.mark.cluster
def test_cli_scheduler_and_workers_flags(cluster: DaskCluster, scene: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ref = upscale(scene, tmp_path / "ref.tif", scale=2, model="bicubic", **TILING).dst
    address = cluster.client.scheduler.address
    opts = ["--scale", "2", "-m", "bicubic", "--tile-size", "24", "--overlap", "4"]
    # The cluster's temporary credentials, handed over as a user hands theirs: TLS files
    # named in the dask config (here through its environment variables).
    res = subprocess.run(
        [sys.executable, "-m", "geosr.cli", "upscale", str(scene), "-o",
         str(tmp_path / "cli.tif"), *opts, "--scheduler", address],
        capture_output=True, text=True, timeout=120,
        env={**_env(), **_tls_env(cluster, tmp_path)}, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(_read(ref)[0], _read(tmp_path / "cli.tif")[0])

    # --workers N goes to connect(workers=N); reuse this cluster instead of a new one.
    calls = reuse_cluster(monkeypatch, cluster)
    assert run(["upscale", str(scene), "-o", str(tmp_path / "w.tif"), *opts,
                "--workers", "2"]) == 0
    assert calls == [{"workers": 2, "scheduler": None, "gpu": False}]
    np.testing.assert_array_equal(_read(ref)[0], _read(tmp_path / "w.tif")[0])


def _tls_env(cluster: DaskCluster, folder: Path) -> dict[str, str]:
    """Dask config variables naming files that hold ``cluster``'s client credentials."""
    sec = cluster.client.security
    env = {}
    for name, pem in (("CA_FILE", sec.tls_ca_file), ("CLIENT__CERT", sec.tls_client_cert),
                      ("CLIENT__KEY", sec.tls_client_key)):
        path = folder / f"{name.lower()}.pem"
        path.write_text(pem)
        env[f"DASK_DISTRIBUTED__COMM__TLS__{name}"] = str(path)
    return env


@pytest.mark.cluster
def test_local_cluster_refuses_clients_without_its_credentials(cluster: DaskCluster) -> None:
    """Another local process that finds the port cannot run work on geosr's workers."""
    from distributed import Client
    from distributed.security import Security

    address = cluster.client.scheduler.address
    assert address.startswith("tls://127.0.0.1:")
    attempts = [
        (address, None),  # no credentials at all
        (address, Security.temporary()),  # credentials of another authority
        (address.replace("tls://", "tcp://"), None),  # plain TCP to the TLS port
    ]
    for addr, security in attempts:
        with pytest.raises(Exception):  # noqa: B017, PT011 - comm errors vary
            client = Client(addr, security=security, timeout="3s")
            client.close()


@pytest.mark.cluster
def test_gpu_resource_routes_model_tasks(cluster: DaskCluster, scene: Path,
                                         tmp_path: Path) -> None:
    """Model tasks request {"GPU": 1}: only a worker advertising it runs them (CPU here)."""
    from distributed import Worker
    from distributed.utils import sync

    client = cluster.client

    async def start() -> Any:
        return await Worker(client.scheduler.address, nthreads=1, resources={"GPU": 1},
                            name="gpu-like", dashboard=False, security=client.security)

    worker = sync(client.loop, start)  # a third worker, in this process, with the resource
    try:
        client.wait_for_workers(3, timeout=30)
        gpu = DaskCluster(client, resources={"GPU": 1})
        with get_task_stream(client) as ts:
            upscale(scene, tmp_path / "g.tif", scale=2, model="nearest", cluster=gpu, **TILING)
        used = {t["worker"] for t in ts.data if "geosr-tiles" in str(t["key"])}
        assert used == {worker.address}
    finally:
        sync(client.loop, worker.close)


def test_gpu_workers_without_dask_cuda_is_one_error_line(
        scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "dask_cuda" else real(name, *a))
    rc = run(["upscale", str(scene), "-o", str(tmp_path / "o.tif"), "--scale", "2",
              "--gpu-workers"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("geosr: error: --gpu-workers needs dask-cuda")
    assert len(err.splitlines()) == 1 and not (tmp_path / "o.tif").exists()


def test_connect_rejects_bad_combinations() -> None:
    with pytest.raises(OptionError, match="either"), connect(workers=1, scheduler="tcp://x:1"):
        pass
    with pytest.raises(OptionError, match="--workers N"), connect():
        pass


@pytest.mark.cluster
def test_batch_through_the_cluster(cluster: DaskCluster, tmp_path: Path,
                                   make_scenes: Callable[..., list[Path]]) -> None:
    scenes = tmp_path / "scenes"
    make_scenes(scenes, n=3, size=(50, 60), gain=255, offset=0)
    (scenes / "s1b.tif").write_text("not a GeoTIFF")
    # Tile placement (auto would run these four scenes as whole-scene tasks:
    # tests/geosr/test_batch_scenes.py).
    report = run_batch(str(scenes / "*.tif"), tmp_path / "out", scale=2, model="bicubic",
                       cluster=cluster, placement="tiles", **TILING)
    assert report.placement == "tiles"
    status = {Path(r.scene).name: r.status for r in report.records}
    assert status == {"s0.tif": "ok", "s1.tif": "ok", "s1b.tif": "failed", "s2.tif": "ok"}
    for i in range(3):
        ref = upscale(scenes / f"s{i}.tif", tmp_path / f"ref{i}.tif", scale=2,
                      model="bicubic", **TILING)
        np.testing.assert_array_equal(_read(ref.dst)[0], _read(tmp_path / "out" /
                                                              f"s{i}_x2.tif")[0])


_CLIENT_SCRIPT = """
import sys
from distributed import Client
from geosr.testing import SlowNearest
from geosr.io import Terminated, sigterm_as_interrupt
from geosr.api import upscale

try:
    with sigterm_as_interrupt(), Client({address!r}) as client:
        upscale({src!r}, {dst!r}, scale=2, model=SlowNearest(2, delay=0.1), cluster=client,
                tile_size=24, overlap=4, batch_size=1)
except KeyboardInterrupt as e:
    sys.exit(143 if isinstance(e, Terminated) else 130)
"""


@pytest.mark.cluster
@pytest.mark.signals
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_client_mid_write_leaves_nothing(cluster: DaskCluster, scene: Path,
                                                   tmp_path: Path, sig: int,
                                                   code: int) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = out_dir / "x2.tif"
    script = textwrap.dedent(_CLIENT_SCRIPT).format(
        address=cluster.client.scheduler.address, src=str(scene), dst=str(dst))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT,
                            env={**_env(), **_tls_env(cluster, tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        # Generous: beside a training run on the 2-core CI machine the client did not start
        # writing within 60 s.
        wait_while_running(proc, lambda: bool(list(out_dir.glob(".x2.tif.geosr-*"))),
                           timeout=240, what="the client never started writing", poll=0.05)
        time.sleep(0.5)  # some tiles written
        assert proc.poll() is None
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert not dst.exists()
    assert list(out_dir.iterdir()) == []  # no temporary file either


@pytest.mark.cluster
@pytest.mark.signals
def test_worker_killed_mid_job_still_gives_the_reference(cluster: DaskCluster, scene: Path,
                                                          tmp_path: Path) -> None:
    """SIGKILL a worker while it runs tiles: its tasks are rerun, the output is exact."""
    client = cluster.client
    ref = upscale(scene, tmp_path / "ref.tif", scale=2, model="nearest", **TILING).dst
    pids = client.run(os.getpid)
    outcome: dict[str, Any] = {}

    def job() -> None:
        try:
            outcome["result"] = upscale(scene, tmp_path / "dask.tif", scale=2,
                                        model=SlowNearest(2, delay=0.1), cluster=cluster,
                                        **TILING)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e

    th = threading.Thread(target=job)
    th.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and th.is_alive():
        for addr, keys in client.processing().items():
            if addr in pids and any("geosr-tiles" in str(k) for k in keys):
                victim = addr
                break
        time.sleep(0.02)
    assert victim is not None, "no worker ever ran a tile"
    os.kill(pids[victim], signal.SIGKILL)
    th.join(timeout=120)
    assert not th.is_alive() and "error" not in outcome, outcome.get("error")
    np.testing.assert_array_equal(_read(ref)[0], _read(tmp_path / "dask.tif")[0])
    assert pids[victim] not in client.run(os.getpid).values()  # it really died


def test_workers_refuse_weights_other_than_the_clients(tmp_path: Path) -> None:
    """A model loaded by name on a worker must be the one the provenance tags record."""
    import lgun
    from geosr.model_cache import ModelRef, worker_model
    from geosr.models import load_model

    w = tmp_path / "w.safetensors"
    lgun.save_weights(lgun.LGUN(scale=2, channels=16, num_blocks=2, num_heads=4), w)
    digest = load_model(str(w), 2, device="cpu").sha256
    assert digest and worker_model(ModelRef.for_spec(str(w), 2, "cpu", digest)).sha256 == digest
    with pytest.raises(OptionError, match="same weights on every worker"):
        worker_model(ModelRef.for_spec(str(w), 2, "cpu", "0" * 64))
