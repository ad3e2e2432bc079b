"""Faults during a run: a killed run's leftovers, write failures, links at DST, qa verdicts.

* A ``geosr upscale`` killed with SIGKILL cannot clean up; the next run in that folder
  removes the temporary file, and only files whose names carry geosr's check and whose
  process is gone (never a user's file that merely looks like one, nor a live run's).
* A write failure (file-size limit) is one ``geosr: error:`` line naming the cause.
* ``geosr qa`` exits 0 on a good pair, 1 on a pair that does not belong together and
  on a broken output; the upscale summary gives the clipped percentage.
* Conventions: ``--dst-nodata``, source tags that no longer describe the output are
  dropped, an all-nodata source warns; the API raises ``geosr.WeightsError`` for bad
  weights before building modules.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geosr.cli import run
from geosr.io import remove_stale_temporaries, temporary_name
from geosr.testing import REPO_ROOT, make_raster, wait_while_running, write_raster


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geosr: error: "), err
    return lines[0]


@pytest.mark.signals
def test_sigkilled_upscale_leftover_is_removed_by_the_next_run(tmp_path: Path) -> None:
    src = write_raster(tmp_path / "big.tif", np.full((3, 600, 600), 7, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(f"""
        from geosr.api import upscale
        from geosr.testing import SlowNearest
        upscale({str(src)!r}, {str(out / "a.tif")!r}, scale=2, model=SlowNearest(2, delay=0.2),
                tile_size=64, overlap=8, batch_size=1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(), cwd=REPO_ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_while_running(proc, lambda: bool(list(out.glob(".a.tif.geosr-*"))), timeout=120,
                           what="the run never started writing")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = list(out.glob(".a.tif.geosr-*"))
    assert leftovers  # SIGKILL leaves the temporary file
    # Files that only look like geosr's, and a live run's temporary file, are kept.
    user = [out / ".a.tif.geosr-1234abcd.tmp.tif", out / ".b.tif.geosr-1-deadbeef.00000000.tmp.tif"]
    for p in user:
        p.write_bytes(b"user data")
    live = temporary_name(out / "c.tif")
    live.write_bytes(b"a running geosr")
    small = make_raster(tmp_path / "s.tif", (1, 20, 20), seed=1)
    assert run(["upscale", str(small), "-o", str(out / "b.tif"), "-s", "2", "-m", "nearest",
                "-q"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert sorted([*(p.name for p in user), live.name, "b.tif"]) == names
    assert remove_stale_temporaries(out) == []


def test_write_failure_is_one_line_with_its_cause(tmp_path: Path) -> None:
    src = make_raster(tmp_path / "s.tif", (3, 300, 300), seed=1)
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000))
        from geosr.cli import run
        sys.exit(run(["upscale", {str(src)!r}, "-o", {str(out / "o.tif")!r}, "-s", "2",
                      "-m", "nearest", "--co", "COMPRESS=NONE"]))
    """)
    res = subprocess.run([sys.executable, "-c", script], env=_env(), cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "File too large" in _one_error_line(res.stderr)
    assert list(out.iterdir()) == []


def test_dangling_link_at_dst_is_replaced_only_with_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = make_raster(tmp_path / "s.tif", (1, 20, 20), seed=1)
    dst = tmp_path / "o.tif"
    dst.symlink_to(tmp_path / "nowhere.tif")
    assert run(["upscale", str(src), "-o", str(dst), "-s", "2", "-m", "nearest"]) == 1
    assert "dangling link" in _one_error_line(capsys.readouterr().err)
    assert dst.is_symlink()
    assert run(["upscale", str(src), "-o", str(dst), "-s", "2", "-m", "nearest", "--overwrite",
                "-q"]) == 0
    assert not dst.is_symlink() and not (tmp_path / "nowhere.tif").exists()
    assert capsys.readouterr().err == ""


def test_qa_verdicts_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = make_raster(tmp_path / "s.tif", (3, 40, 50), seed=1, gain=250, offset=1, nodata=0)
    dst = tmp_path / "o.tif"
    assert run(["upscale", str(src), "-o", str(dst), "-s", "2", "-m", "bicubic", "-q"]) == 0
    assert run(["qa", str(src), str(dst), "--json"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["verdict"] == "pass" and q["reasons"] == [] and q["mismatches"] == []
    assert 0 <= q["clipped_percent"] < 1 and max(q["mae_percent"]) < 2
    # Another scene of the same size and grid: not the source of DST.
    other = make_raster(tmp_path / "t.tif", (3, 40, 50), seed=9, gain=250, offset=1, nodata=0)
    assert run(["qa", str(other), str(dst)]) == 1
    captured = capsys.readouterr()
    assert "verdict:         FAIL" in captured.out
    assert "not made from this source" in _one_error_line(captured.err)
    # A broken output (truncated): one line naming the file.
    data = dst.read_bytes()
    dst.write_bytes(data[: len(data) // 3])
    assert run(["qa", str(src), str(dst)]) == 1
    assert str(dst) in _one_error_line(capsys.readouterr().err)


def test_upscale_summary_shows_clipped_percent(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    src = make_raster(tmp_path / "s.tif", (1, 20, 20), seed=1)
    assert run(["upscale", str(src), "-o", str(tmp_path / "o.tif"), "-s", "2", "-m",
                "bicubic"]) == 0
    assert "% of output values beyond the data type, clipped" in capsys.readouterr().err
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert ds.tags()["GEOSR_MODEL"] == "bicubic"


def test_dst_nodata_and_stale_source_tags(tmp_path: Path) -> None:
    """--dst-nodata sets the output's nodata (valid pixels equal to it move off it); tags
    that describe the source's pixels are not copied."""
    data = np.full((1, 20, 20), 255, np.uint8)
    data[0, :5] = 3
    src = write_raster(tmp_path / "s.tif", data)
    with rasterio.open(src, "r+") as ds:
        ds.update_tags(OVR_RESAMPLING_ALG="AVERAGE", STATISTICS_MEAN="200", KEEP="yes")
    dst = tmp_path / "o.tif"
    assert run(["upscale", str(src), "-o", str(dst), "-s", "2", "-m", "nearest", "-q",
                "--dst-nodata", "255"]) == 0
    with rasterio.open(dst) as ds:
        assert ds.nodata == 255
        out = ds.read(1)
        tags = ds.tags()
    assert (out[:10] == 3).all() and (out[10:] == 254).all()  # valid pixels stay valid
    assert tags["KEEP"] == "yes" and tags["GEOSR_DST_NODATA"] == "255"
    assert "OVR_RESAMPLING_ALG" not in tags and "STATISTICS_MEAN" not in tags


def test_all_nodata_source_warns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = write_raster(tmp_path / "s.tif", np.zeros((1, 20, 20), np.uint8), nodata=0)
    assert run(["upscale", str(src), "-o", str(tmp_path / "o.tif"), "-s", "2", "-m",
                "nearest", "-q"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("geosr: warning: ") and "all nodata" in err


def test_api_raises_weights_error_for_malformed_weights(tmp_path: Path) -> None:
    """A .safetensors file whose digest matches its JSON but whose bytes are not tensors."""
    import hashlib

    import geosr
    import lgun

    w = tmp_path / "w.safetensors"
    lgun.save_weights(lgun.LGUN(scale=2, channels=16, num_blocks=2, num_heads=4), w)
    raw = b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + b"\0" * 64
    w.write_bytes(raw)
    meta = json.loads(w.with_suffix(".json").read_text())
    meta["sha256"] = hashlib.sha256(raw).hexdigest()
    w.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(geosr.WeightsError, match="cannot load the weights"):
        geosr.load_model(str(w), 2, device="cpu")
    src = make_raster(tmp_path / "s.tif", (3, 20, 20), seed=1)
    with pytest.raises(geosr.WeightsError):
        geosr.upscale(src, tmp_path / "o.tif", scale=2, model=str(w), device="cpu")
    meta["config"]["num_blocks"] = 10**9
    w.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(geosr.WeightsError, match="num_blocks"):
        geosr.load_model(str(w), 2, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif", "w.json", "w.safetensors"]
