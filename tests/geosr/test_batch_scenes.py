"""``geosr batch --placement scenes|tiles|auto``: whole scenes as tasks on Dask workers.

One ``LocalCluster`` of two worker processes (``geosr.distributed.connect``) serves the
module; ``--workers 2`` on the command line is routed to it. Scene outputs are compared
with a local batch (pixels, profile, tags); ``auto`` is checked both ways; sources are
read from a local S3 stand-in (``moto``, skipped without it); a worker is SIGKILLed in
the middle of a scene (kept last: its nanny restarts it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

pytest.importorskip("distributed")

from geosr.batch import LOCK_NAME, MANIFEST_NAME, BatchReport, run_batch  # noqa: E402
from geosr.cli import run  # noqa: E402
from geosr.distributed import DaskCluster, connect  # noqa: E402
from geosr.errors import GeosrWarning  # noqa: E402
from geosr.options import RunOptions  # noqa: E402
from geosr.scenes import workers_reach  # noqa: E402
from geosr.testing import (  # noqa: E402
    SlowNearest,
    assert_nearest_upscaled,
    reuse_cluster,
    write_raster,
)

TILING = {"tile_size": 24, "overlap": 4, "batch_size": 2}
CLI_OPTS = ["--scale", "2", "-m", "bicubic", "--tile-size", "24", "--overlap", "4",
            "--batch-size", "2"]
Scenes = Callable[..., list[Path]]


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskCluster]:
    with connect(workers=2) as c:
        yield c


@pytest.fixture
def cli_cluster(cluster: DaskCluster, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``--workers N`` is handed to ``connect``: hand back the module's cluster instead."""
    return reuse_cluster(monkeypatch, cluster)


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / MANIFEST_NAME).read_text())


def _same_file(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        np.testing.assert_array_equal(x.read(), y.read())
        np.testing.assert_array_equal(x.read_masks(), y.read_masks())
        assert x.profile == y.profile
        assert x.tags() == y.tags()
        assert [x.tags(i + 1) for i in range(x.count)] == [y.tags(i + 1) for i in range(y.count)]


@pytest.mark.cluster
def test_scenes_on_two_workers_equal_a_local_batch_and_rerun_skips(
        tmp_path: Path, make_scenes: Scenes, cli_cluster: list[dict[str, Any]]) -> None:
    scenes = make_scenes("in", n=4)
    pattern = str(tmp_path / "in" / "*.tif")
    local = run_batch(pattern, tmp_path / "local", scale=2, model="bicubic", **TILING)
    assert local.placement == "local"
    out = tmp_path / "out"
    argv = ["batch", pattern, "--out-dir", str(out), *CLI_OPTS, "--workers", "2",
            "--placement", "scenes"]
    assert run(argv) == 0
    assert cli_cluster == [{"workers": 2, "scheduler": None, "gpu": False}]
    doc = _manifest(out)
    assert doc["placement"] == "scenes"
    assert [r["status"] for r in doc["scenes"]] == ["ok"] * 4
    assert [Path(r["scene"]).name for r in doc["scenes"]] == [s.name for s in scenes]
    assert len({r["worker"] for r in doc["scenes"]}) == 2  # both workers made outputs
    assert all(r["seconds"] > 0 and r["mpix"] == pytest.approx(80 * 100 / 1e6)
               for r in doc["scenes"])
    for s in scenes:
        _same_file(tmp_path / "local" / f"{s.stem}_x2.tif", out / f"{s.stem}_x2.tif")

    # Up-to-date outputs are skipped by the client: no cluster for a batch of skips.
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.tif")}
    assert run(argv) == 0
    assert [r["status"] for r in _manifest(out)["scenes"]] == ["skipped"] * 4
    assert len(cli_cluster) == 1
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.tif")} == mtimes
    # A newer source makes its own output stale: only that scene goes to a worker.
    future = time.time() + 10
    os.utime(scenes[2], (future, future))
    assert run(argv) == 0
    recs = _manifest(out)["scenes"]
    assert [r["status"] for r in recs] == ["skipped", "skipped", "ok", "skipped"]
    assert recs[2]["worker"] and recs[0]["worker"] is None
    _same_file(tmp_path / "local" / "s2_x2.tif", out / "s2_x2.tif")


@pytest.mark.cluster
def test_auto_placement(tmp_path: Path, make_scenes: Scenes, cluster: DaskCluster,
                        cli_cluster: list[dict[str, Any]],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    scenes = make_scenes("in", n=3)
    pattern = str(tmp_path / "in" / "*.tif")
    broken = tmp_path / "in" / "s1b.tif"
    broken.write_text("not a GeoTIFF")
    ens = RunOptions(scale=2, model="bicubic", ensemble=True, **TILING)
    # An external cluster: a worker is asked once whether it reaches the paths.
    first = run_batch(pattern, tmp_path / "out", options=ens, cluster=cluster)
    assert first.placement == "scenes"
    assert [(Path(r.scene).name, r.status) for r in first.records] == [
        ("s0.tif", "ok"), ("s1.tif", "ok"), ("s1b.tif", "failed"), ("s2.tif", "ok")]
    assert all(r.worker for r in first.records)
    assert "cannot open" in (first.records[2].error or "")  # the worker's one line
    broken.unlink()
    run_batch(scenes[0], tmp_path / "local", options=ens)
    _same_file(tmp_path / "local" / "s0_x2.tif", tmp_path / "out" / "s0_x2.tif")
    # Fewer scenes to compute (one stale) than workers: tiles, the client writes.
    future = time.time() + 10
    os.utime(scenes[1], (future, future))
    second = run_batch(pattern, tmp_path / "out", options=ens, cluster=cluster)
    assert second.placement == "tiles"
    assert [(r.status, r.worker) for r in second.records] == [
        ("skipped", None), ("ok", None), ("skipped", None)]

    # The probe: the batch's lock token in a writable folder, and the source.
    lock = tmp_path / "out" / LOCK_NAME
    lock.write_text("token-1")
    assert workers_reach(cluster, str(scenes[0]), lock, "token-1")
    assert not workers_reach(cluster, str(scenes[0]), lock, "token-2")
    assert not workers_reach(cluster, str(tmp_path / "in" / "none.tif"), lock, "token-1")

    # A cluster started here (--workers) sees this host's paths: no probe.
    def no_probe(*args: Any) -> bool:
        raise AssertionError("probed a cluster started here")

    monkeypatch.setattr("geosr.scenes.workers_reach", no_probe)
    assert run(["batch", pattern, "--out-dir", str(tmp_path / "cli"), *CLI_OPTS,
                "--workers", "2"]) == 0
    assert _manifest(tmp_path / "cli")["placement"] == "scenes"


def test_placement_scenes_without_a_cluster_is_one_error_line(
        tmp_path: Path, make_scenes: Scenes, capsys: pytest.CaptureFixture) -> None:
    make_scenes("in", n=1)
    out = tmp_path / "out"
    rc = run(["batch", str(tmp_path / "in" / "*.tif"), "--out-dir", str(out), *CLI_OPTS,
              "--placement", "scenes"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.splitlines() == ["geosr: error: --placement scenes needs a cluster "
                                "(--workers N or --scheduler ADDR); without one every scene "
                                "runs here"]
    assert not out.exists()


_S3_ENV = {"AWS_ACCESS_KEY_ID": "geosr-test", "AWS_SECRET_ACCESS_KEY": "geosr-test",
           "AWS_REGION": "us-east-1", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}


def _set_env(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.cluster
def test_worker_warnings_reach_the_client_and_the_manifest(
        tmp_path: Path, make_scenes: Scenes, cluster: DaskCluster) -> None:
    """Dask does not forward a task's warnings: a scene's warning on a worker is issued again
    by the client and recorded in the manifest, as for a scene computed here."""
    make_scenes("in", n=2)
    write_raster(tmp_path / "in" / "s9_empty.tif", np.zeros((3, 30, 30), np.uint8), nodata=0)
    pattern = str(tmp_path / "in" / "*.tif")
    for where, kwargs in (("scenes", {"cluster": cluster, "placement": "scenes"}),
                          ("local", {})):
        with pytest.warns(GeosrWarning, match="no valid pixel") as caught:
            report = run_batch(pattern, tmp_path / where, scale=2, model="bicubic",
                               **TILING, **kwargs)
        assert report.placement == where
        assert len([w for w in caught if "no valid pixel" in str(w.message)]) == 1
        recs = {Path(r["scene"]).name: r for r in _manifest(tmp_path / where)["scenes"]}
        assert [r["status"] for r in recs.values()] == ["ok"] * 3
        assert recs["s0.tif"]["warnings"] == recs["s1.tif"]["warnings"] == []
        (message,) = recs["s9_empty.tif"]["warnings"]
        assert "s9_empty.tif has no valid pixel" in message and "all nodata" in message


@pytest.mark.cluster
def test_scene_sources_on_object_storage(tmp_path: Path, make_scenes: Scenes,
                                         cluster: DaskCluster) -> None:
    """Sources as ``/vsis3/`` paths (a local S3 stand-in), read by the workers themselves."""
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    scenes = make_scenes("in", n=2)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    client = cluster.client
    host, port = server.get_host_and_port()
    env = {**_S3_ENV, "AWS_S3_ENDPOINT": f"{host}:{port}"}
    saved = client.run(lambda: {k: os.environ.get(k) for k in env})
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="geosr-test", aws_secret_access_key="geosr-test")
        s3.create_bucket(Bucket="geosr-test")
        for s in scenes:
            s3.upload_file(str(s), "geosr-test", f"in/{s.name}")
        client.run(_set_env, env)  # only the workers: this process never reads a source
        remote = [f"/vsis3/geosr-test/in/{s.name}" for s in scenes]
        # An external cluster: the probe asks a worker to find the first /vsis3 source.
        report = run_batch(remote, tmp_path / "out", scale=2, model="bicubic",
                           cluster=cluster, **TILING)
        assert report.placement == "scenes"
        assert [r.status for r in report.records] == ["ok", "ok"], report.records
        run_batch(str(tmp_path / "in" / "*.tif"), tmp_path / "local", scale=2,
                  model="bicubic", **TILING)
        for s in scenes:
            _same_file(tmp_path / "local" / f"{s.stem}_x2.tif",
                       tmp_path / "out" / f"{s.stem}_x2.tif")
    finally:
        for addr, values in saved.items():
            client.run(_set_env, values, workers=[addr])
        server.stop()


_TEMP = re.compile(r"^\.s\d_x2\.tif\.geosr-(\d+)-")


@pytest.mark.cluster
@pytest.mark.signals
def test_worker_killed_mid_scene_is_rerun_elsewhere(tmp_path: Path, make_scenes: Scenes,
                                                    cluster: DaskCluster) -> None:
    """SIGKILL the worker writing a scene: the scene is rerun, nothing partial is left."""
    scenes = make_scenes("in", n=4)
    out = tmp_path / "out"
    pids = {pid: addr for addr, pid in cluster.client.run(os.getpid).items()}
    outcome: dict[str, Any] = {}

    def job() -> None:
        try:
            outcome["report"] = run_batch(
                str(tmp_path / "in" / "*.tif"), out, scale=2, model=SlowNearest(2, delay=0.05),
                tile_size=24, overlap=4, batch_size=1, cluster=cluster, placement="scenes")
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e

    th = threading.Thread(target=job)
    th.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and th.is_alive():
        # The temporary output's name carries the writer's process id.
        for p in out.glob(".s*_x2.tif.geosr-*") if out.is_dir() else ():
            m = _TEMP.match(p.name)
            if m and int(m[1]) in pids:
                victim = int(m[1])
                break
        time.sleep(0.01)
    assert victim is not None, "no worker ever wrote a scene"
    os.kill(victim, signal.SIGKILL)
    th.join(timeout=120)
    assert not th.is_alive() and "error" not in outcome, outcome.get("error")
    report: BatchReport = outcome["report"]
    assert report.placement == "scenes"
    assert [r.status for r in report.records] == ["ok"] * 4, report.records
    assert pids[victim] not in {r.worker for r in report.records}
    assert [r["status"] for r in _manifest(out)["scenes"]] == ["ok"] * 4
    assert not list(out.glob(".*.geosr-*"))  # no partial output left
    for s in scenes:
        assert_nearest_upscaled(s, out / f"{s.stem}_x2.tif")
    assert victim not in cluster.client.run(os.getpid).values()  # it really died
