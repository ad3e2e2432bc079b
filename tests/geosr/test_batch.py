"""``geosr batch`` / ``geosr.batch.run_batch``, on the local path.

Failures are recorded and the others complete; reruns skip up-to-date outputs and
redo stale ones; a batch killed mid-scene resumes, and its leftovers are removed.
(The same batch through a Dask cluster is in tests/geosr/test_distributed.py; the
TOML job ``python -m pipelines.batch`` in tests/pipelines/test_batch_job.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from geosr.batch import MANIFEST_NAME, _folder_lock, run_batch
from geosr.cli import run
from geosr.errors import OptionError
from geosr.testing import REPO_ROOT, assert_nearest_upscaled, wait_while_running, write_raster

TILING = {"tile_size": 24, "overlap": 4, "batch_size": 2}
Scenes = Callable[..., list[Path]]


def _status(out: Path) -> dict[str, str]:
    doc = json.loads((out / MANIFEST_NAME).read_text())
    return {Path(r["scene"]).name: r["status"] for r in doc["scenes"]}


def test_failing_scene_is_recorded_and_the_others_complete(
        tmp_path: Path, make_scenes: Scenes, capsys: pytest.CaptureFixture) -> None:
    scenes = make_scenes("in")
    (tmp_path / "in" / "s1_broken.tif").write_text("not a GeoTIFF")
    out = tmp_path / "out"
    rc = run(["batch", str(tmp_path / "in" / "*.tif"), "--out-dir", str(out), "--scale", "2",
              "-m", "nearest", "--tile-size", "24", "--overlap", "4"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "4 scenes: 3 ok, 0 skipped, 1 failed" in err
    assert "geosr: error: " in err and "s1_broken.tif" in err and "Traceback" not in err
    doc = json.loads((out / MANIFEST_NAME).read_text())
    assert doc["summary"] == {"ok": 3, "skipped": 0, "failed": 1}
    rec = {Path(r["scene"]).name: r for r in doc["scenes"]}
    assert rec["s1_broken.tif"]["status"] == "failed"
    assert "cannot open" in rec["s1_broken.tif"]["error"]
    assert rec["s0.tif"]["mpix"] == pytest.approx(80 * 100 / 1e6)
    assert rec["s0.tif"]["seconds"] > 0 and rec["s0.tif"]["error"] is None
    for s in scenes:
        assert_nearest_upscaled(s, out / f"{s.stem}_x2.tif")


def test_rerun_skips_current_outputs_and_redoes_stale_ones(tmp_path: Path,
                                                           make_scenes: Scenes) -> None:
    scenes = make_scenes("in")
    out = tmp_path / "out"
    pattern = str(tmp_path / "in" / "*.tif")
    first = run_batch(pattern, out, scale=2, model="nearest", **TILING)
    assert [r.status for r in first.records] == ["ok"] * 3
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.tif")}
    again = run_batch(pattern, out, scale=2, model="nearest", **TILING)
    assert [r.status for r in again.records] == ["skipped"] * 3
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.tif")} == mtimes  # untouched
    # Another request (tiling) makes every output stale; a newer source only its own.
    other = run_batch(pattern, out, scale=2, model="nearest", tile_size=32, overlap=4)
    assert [r.status for r in other.records] == ["ok"] * 3
    future = time.time() + 10
    os.utime(scenes[1], (future, future))
    third = run_batch(pattern, out, scale=2, model="nearest", tile_size=32, overlap=4)
    assert [r.status for r in third.records] == ["skipped", "ok", "skipped"]
    # A file that geosr did not write is never replaced.
    foreign = out / "s2_x2.tif"
    foreign.unlink()
    write_raster(foreign, np.zeros((1, 4, 4), np.uint8))
    fourth = run_batch(pattern, out, scale=2, model="nearest", tile_size=32, overlap=4)
    assert fourth.records[2].status == "failed"
    assert "not a geosr output" in (fourth.records[2].error or "")


_CRASH_SCRIPT = """
from geosr.batch import run_batch
from geosr.testing import SlowNearest
run_batch({pattern!r}, {out!r}, scale=2, model=SlowNearest(2), tile_size=24, overlap=4,
          batch_size=1)
"""


@pytest.mark.signals
def test_batch_killed_mid_scene_resumes(tmp_path: Path, make_scenes: Scenes) -> None:
    scenes = make_scenes("in", n=3, size=(60, 70))
    out = tmp_path / "out"
    pattern = str(tmp_path / "in" / "*.tif")
    script = textwrap.dedent(_CRASH_SCRIPT).format(pattern=pattern, out=str(out))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO_ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        # Wait for the first output and the second scene's temporary file, then crash.
        def mid_second_scene() -> bool:
            return (out / "s0_x2.tif").exists() and bool(list(out.glob(".s1_x2.tif.geosr-*")))

        wait_while_running(proc, mid_second_scene, timeout=60,
                           what="the batch never reached the second scene")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(out.glob(".s1_x2.tif.geosr-*"))  # the crash left a temporary file
    assert _status(out) == {"s0.tif": "ok"}  # the manifest is current and valid JSON
    resumed = run_batch(pattern, out, scale=2, model="nearest", **TILING)
    assert [r.status for r in resumed.records] == ["skipped", "ok", "ok"]
    assert not list(out.glob(".*.geosr-*"))  # leftovers removed
    for s in scenes:
        assert_nearest_upscaled(s, out / f"{s.stem}_x2.tif")


def test_bad_batches_fail_before_writing(tmp_path: Path, make_scenes: Scenes) -> None:
    make_scenes("a", n=1)
    make_scenes("b", n=1)
    out = tmp_path / "out"
    with pytest.raises(OptionError, match="both be written"):
        run_batch([tmp_path / "a" / "s0.tif", tmp_path / "b" / "s0.tif"], out, scale=2,
                  model="nearest")
    with pytest.raises(OptionError, match="no file matches"):
        run_batch(str(tmp_path / "none" / "*.tif"), out, scale=2, model="nearest")
    with pytest.raises(OptionError, match="scale"):
        run_batch(str(tmp_path / "a" / "*.tif"), out, scale=5, model="nearest")
    assert not out.exists()
    out.mkdir()
    with _folder_lock(out), pytest.raises(OptionError, match="another geosr batch"):
        run_batch(str(tmp_path / "a" / "*.tif"), out, scale=2, model="nearest")


def test_outputs_beside_the_scenes_are_not_taken_for_scenes(tmp_path: Path,
                                                            make_scenes: Scenes) -> None:
    make_scenes("in", n=2)
    pattern = str(tmp_path / "in" / "*.tif")
    first = run_batch(pattern, tmp_path / "in", scale=2, model="nearest", **TILING)
    again = run_batch(pattern, tmp_path / "in", scale=2, model="nearest", **TILING)
    assert [r.status for r in first.records] == ["ok", "ok"]
    assert [r.status for r in again.records] == ["skipped", "skipped"]
    assert sorted(p.name for p in (tmp_path / "in").glob("*.tif")) == [
        "s0.tif", "s0_x2.tif", "s1.tif", "s1_x2.tif"]


def test_manifest_is_json_with_one_line_per_scene(tmp_path: Path) -> None:
    from geosr.manifest import BatchReport, SceneRecord, write_manifest

    report = BatchReport(tmp_path, tmp_path / MANIFEST_NAME, request={"GEOSR_SCALE": "2"})
    write_manifest(report)
    assert json.loads(report.manifest.read_text())["scenes"] == []
    report.records = [SceneRecord(f"s{i}.tif", f"o{i}.tif", "ok", 1.5, 2.0, None, "w")
                      for i in range(3)] + [SceneRecord('q"\n.tif', "o.tif", "failed", 0, 0, "x")]
    assert write_manifest(report) >= 0
    text = report.manifest.read_text()
    doc = json.loads(text)
    assert doc["summary"] == {"ok": 3, "skipped": 0, "failed": 1}
    assert doc["scenes"][3]["scene"] == 'q"\n.tif' and doc["scenes"][0]["worker"] == "w"
    assert sum(line.lstrip().startswith('{"scene"') for line in text.splitlines()) == 4
    assert not list(tmp_path.glob(".*.tmp"))
