"""pipelines.geotiff_gate: its rule on margins, and the command on small synthetic rasters
laid out as the corpus' aerial rasters (temporary folders only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lgun.pretrained import WEIGHTS_DIR
from pipelines.geotiff_gate import MAX_MARGIN_LOSS, gate_passes, main


def test_rule() -> None:
    old = {"hro": 0.4, "naip": 0.8, "clouds": 0.5, "rgbn": 0.3}
    assert gate_passes({"hro": 0.5, "naip": 0.8, "clouds": 0.45, "rgbn": 0.3}, old)
    # a raster won is lost, though the mean rises
    assert not gate_passes({"hro": 0.9, "naip": 0.9, "clouds": -0.01, "rgbn": 0.5}, old)
    # every raster kept, but the mean falls by more than the allowance
    assert not gate_passes({k: v - MAX_MARGIN_LOSS - 0.02 for k, v in old.items()}, old)
    assert gate_passes({k: v - MAX_MARGIN_LOSS + 0.02 for k, v in old.items()}, old)
    # a raster the old weights lost may stay lost
    assert gate_passes({"hro": 0.5, "naip": 0.8, "clouds": -0.2},
                       {"hro": 0.4, "naip": 0.8, "clouds": -0.3})
    assert gate_passes({"a": 0.1}, None) and not gate_passes({"a": 0.1, "b": -0.1}, None)


def test_command_passes_better_weights_and_fails_worse(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], zeroed_rec: Callable[..., Path],
        aerial_rasters: Callable[..., list[Path]]) -> None:
    data = tmp_path / "data"
    aerial_rasters(data)
    good = WEIGHTS_DIR / "lgun-aid-x4.safetensors"
    bad = zeroed_rec(good, tmp_path / "bad")
    assert main([str(good), "--against", str(bad), "--data-root", str(data)]) == 0
    out = capsys.readouterr().out
    assert "GeoTIFF gate: passed" in out and "rgbn.tif" in out and "x4" in out
    assert main([str(bad), "--against", str(good), "--data-root", str(data)]) == 1
    assert "GeoTIFF gate: failed" in capsys.readouterr().out


def test_missing_rasters_or_weights_are_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = str(WEIGHTS_DIR / "lgun-aid-x4.safetensors")
    assert main([good, "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rasters missing" in err[0]
    assert main([str(tmp_path / "nothing.safetensors"), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
