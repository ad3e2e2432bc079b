"""``geosr info`` says what a model was trained on (data, lineage, LR degradation) and the
scores recorded in its weights' JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geosr.cli import run
from geosr.models import model_record
from geosr.testing import make_raster


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    return make_raster(tmp_path / "s.tif", (3, 40, 40))


def test_shipped_aerial_weights_name_their_lineage() -> None:
    rec = model_record("lgun-aid-x4")
    assert rec is not None and rec["trained_on"][0] == ["natural"]
    assert {"aid150", "rsscn7"} <= set(rec["trained_on"][-1])
    assert "aid150" in rec["tested_on"] and "bicubic" in rec["tested_on"]["aid150"]
    assert model_record("bicubic") is None and model_record("nearest") is None


def test_info_prints_training_and_tests(scene: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lgun import LGUN, save_weights

    w = save_weights(LGUN(scale=2, channels=16, num_blocks=2, num_heads=4),
                     tmp_path / "mine.safetensors", metadata={
                         "training": {"data": [{"name": "aid150"}], "date": "2026-11-30",
                                      "degradation": {"weights": {"bicubic": 1, "box": 3}},
                                      "parent": {"data": [{"name": "natural"}]}},
                         "metrics": {"aid150": {"psnr": 28.0}, "aid150@box": {"psnr": 27.5}}})
    assert run(["info", str(scene), "--scale", "2", "-m", str(w)]) == 0
    text = capsys.readouterr().out
    assert "trained:    on natural -> aid150 (2026-11-30)" in text
    assert "LR made by a mixture: bicubic 25%, box 75%" in text
    assert "tested:     aid150: bicubic LR 28.00 dB, box LR 27.50 dB" in text
    assert run(["info", str(scene), "--scale", "2", "-m", str(w), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model_training"]["degradation"] == {"bicubic": 1.0, "box": 3.0}
    assert run(["info", str(scene), "--scale", "2", "-m", "bicubic"]) == 0
    assert "trained:" not in capsys.readouterr().out
