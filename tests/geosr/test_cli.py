"""The ``geosr`` command line: one-line errors, defaults, info, qa, the README main job."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geosr.cli import run
from geosr.testing import REPO_ROOT, default_sigint, wait_while_running, write_raster

EXAMPLE = REPO_ROOT / "examples" / "bahamas_rgb.tif"


@pytest.fixture
def scene(make_raster: Callable[..., Path]) -> Path:
    return make_raster("scene.tif", (3, 40, 50), seed=3, gain=250, offset=1, nodata=0)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("geosr: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_default_output_is_beside_input(scene: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["upscale", str(scene), "--scale", "2", "-m", "nearest"]) == 0
    out = scene.with_name("scene_x2.tif")
    with rasterio.open(out) as d:
        assert (d.width, d.height) == (100, 80)
    assert "x2 with nearest" in capsys.readouterr().err


@pytest.mark.parametrize("args,needle", [
    (["--scale", "5"], "scale"),
    (["--scale", "two"], "--scale"),
    (["--scale", "2", "-b", "4"], "band 4"),
    (["--scale", "2", "-b", "1,x"], "comma-separated"),
    (["--scale", "2", "-m", "nope"], "unknown model"),
    (["--scale", "2", "--co", "COMPRESS"], "KEY=VAL"),
    (["--scale", "2", "--tile-size", "8"], "tile size"),
    (["--scale", "2", "--device", "tpu"], "device"),
    (["--scale", "2", "--aoi", "/nonexistent.geojson"], "AOI"),
    pytest.param(["--scale", "2", "--aoi", str(EXAMPLE)], "not a vector file",
                 marks=pytest.mark.skipif(shutil.which("ogr2ogr") is None,
                                          reason="needs GDAL's ogr2ogr")),
])
def test_bad_options_are_one_line(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                  args: list[str], needle: str) -> None:
    dst = tmp_path / "o.tif"
    if "--device" in args:
        args = [*args, "-m", str(tmp_path / "w.safetensors")]
        lgun_weights(tmp_path / "w.safetensors")
    rc = run(["upscale", str(scene), "-o", str(dst), *args])
    assert rc != 0
    assert needle in _one_error_line(capsys.readouterr().err)
    assert not dst.exists()


def lgun_weights(path: Path) -> None:
    import lgun

    lgun.save_weights(lgun.LGUN(scale=2, channels=16, num_blocks=2, num_heads=4), path)


def test_weights_file_model_records_sha256(scene: Path, tmp_path: Path) -> None:
    w = tmp_path / "w.safetensors"
    lgun_weights(w)
    dst = tmp_path / "o.tif"
    assert run(["upscale", str(scene), "-o", str(dst), "--scale", "2", "-m", str(w),
                "--device", "cpu"]) == 0
    meta = json.loads(w.with_suffix(".json").read_text())
    with rasterio.open(dst) as d:
        assert d.tags()["GEOSR_WEIGHTS_SHA256"] == meta["sha256"]
        assert d.tags()["GEOSR_MODEL"] == "w"


def test_destination_errors(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dst = tmp_path / "exists.tif"
    dst.write_bytes(b"x")
    assert run(["upscale", str(scene), "-o", str(dst), "--scale", "2", "-m", "nearest"]) == 1
    assert "--overwrite" in _one_error_line(capsys.readouterr().err)
    assert dst.read_bytes() == b"x"
    for bad in (tmp_path / "missing" / "o.tif", Path("/proc/geosr-test.tif"), tmp_path):
        assert run(["upscale", str(scene), "-o", str(bad), "--scale", "2", "-m", "nearest"]) == 1
        _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "missing").exists()


def test_unreadable_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    for src in (bad, tmp_path / "nope.tif"):
        assert run(["upscale", str(src), "--scale", "2", "-m", "nearest"]) == 1
        _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]


def test_info_and_qa(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["info", str(scene), "--scale", "4", "-m", "nearest", "--tile-size", "32",
                "--overlap", "4"]) == 0
    text = capsys.readouterr().out
    assert "tiles:" in text and "[0, 255] -> [0, 1]" in text and "200 x 160 x 3" in text
    assert run(["info", str(scene), "--scale", "2", "--json", "-m", "bicubic"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["output"]["width"] == 100 and d["mask"] == "nodata"
    dst = tmp_path / "o.tif"
    assert run(["upscale", str(scene), "-o", str(dst), "--scale", "2", "-m", "bicubic",
                "--tile-size", "32", "--overlap", "4"]) == 0
    capsys.readouterr()
    assert run(["qa", str(scene), str(dst), "--json"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["scale"] == 2 and len(q["mae"]) == 3 and q["model"] == "bicubic"
    assert 0 < max(q["mae"]) < 10 and q["seam_score"] is not None
    assert run(["qa", str(scene), str(scene)]) == 1
    _one_error_line(capsys.readouterr().err)


def test_console_script_main_job(tmp_path: Path) -> None:
    """The README's main job, as a user types it (default model, bundled scene)."""
    exe = shutil.which("geosr")
    cmd = [exe] if exe else [sys.executable, "-m", "geosr.cli"]
    dst = tmp_path / "bahamas_x4.tif"
    res = subprocess.run([*cmd, "upscale", str(EXAMPLE), "--scale", "4", "-o", str(dst)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    with rasterio.open(EXAMPLE) as s, rasterio.open(dst) as d:
        assert (d.width, d.height) == (s.width * 4, s.height * 4)
        assert d.bounds == pytest.approx(s.bounds) and d.crs == s.crs
        model = d.tags()["GEOSR_MODEL"]
    import lgun

    if not any(lgun.PRETRAINED[n].available for n in ("lgun-aid-x4", "lgun-x4")):
        assert model == "bicubic"
        assert res.stderr.startswith("geosr: warning: no LGUN weights for x4")
    else:
        assert model.startswith("lgun")


@pytest.mark.parametrize("fmt", ["VRT", "JP2OpenJPEG"])
def test_other_input_formats(scene: Path, tmp_path: Path, fmt: str) -> None:
    """Anything rasterio opens: a VRT over the GeoTIFF, a lossless JPEG 2000."""
    import rasterio.shutil

    ext = {"VRT": "vrt", "JP2OpenJPEG": "jp2"}[fmt]
    src = tmp_path / f"scene.{ext}"
    opts = {"REVERSIBLE": "YES", "QUALITY": "100"} if fmt == "JP2OpenJPEG" else {}
    rasterio.shutil.copy(str(scene), str(src), driver=fmt, **opts)
    dst = tmp_path / "o.tif"
    assert run(["upscale", str(src), "-o", str(dst), "--scale", "3", "-m", "nearest"]) == 0
    with rasterio.open(src) as s, rasterio.open(dst) as d:
        np.testing.assert_array_equal(d.read(), s.read().repeat(3, 1).repeat(3, 2))
        assert d.crs == s.crs and d.bounds == pytest.approx(s.bounds)


@pytest.mark.signals
@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_mid_write_leaves_nothing(tmp_path: Path, sig: str, code: int) -> None:
    """Ctrl-C or a polite kill while the output is being written: nothing at DST."""
    import os
    import signal
    import time

    src = write_raster(tmp_path / "big.tif", np.full((3, 1500, 1500), 7, np.uint8))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "geosr.cli", "upscale", str(src), "-o", str(out_dir / "o.tif"),
         "--scale", "4", "-m", "nearest", "--tile-size", "64", "--overlap", "8"],
        env=env, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        wait_while_running(proc, lambda: bool(list(out_dir.glob(".o.tif.geosr-*"))),
                           timeout=60, what="the CLI never started writing")
        time.sleep(0.3)
        assert proc.poll() is None, "the run ended before the signal: make it longer"
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code
    assert "interrupted" in _one_error_line(err)
    assert list(out_dir.iterdir()) == []
