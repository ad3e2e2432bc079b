"""``pipelines.record_metrics``: scores land in the weights' JSON in the one metric shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lgun import LGUN, load_weights, save_weights
from lgun.evaluate import evaluate_model
from lgun.pretrained import metric_entry, metric_key
from lgun.training.publish import validate
from pipelines import record_metrics

TINY = dict(channels=16, num_blocks=2, num_heads=4)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, ext in enumerate((".png", ".webp")):  # WebP: the format of carried benchmark sets
        img = rng.integers(0, 256, (24 + 4 * i, 28, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{i}{ext}", **({"lossless": True} if i else {}))
    return folder


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_weights(LGUN(scale=2, **TINY).eval(), tmp_path / "w.safetensors",
                        metadata={"metrics": {"old": {"psnr": 1.0}}})


def test_records_every_pair_in_one_shape(weights: Path, images: Path) -> None:
    digest = weights.read_bytes()
    rc = record_metrics.main([str(weights), "--dataset", str(images),
                              "--degradation", "bicubic", "box", "--threads", "1"])
    assert rc == 0
    assert weights.read_bytes() == digest  # the tensors and their sha256 are not touched
    metrics = json.loads(weights.with_suffix(".json").read_text())["metrics"]
    assert set(metrics) == {"old", str(images), f"{images}@box"}
    model = load_weights(weights).model
    for deg in ("bicubic", "box"):
        entry = metrics[metric_key(str(images), deg)]
        direct = evaluate_model(model, str(images), 2, degradation=deg)
        assert direct["n"] == 2  # the WebP image is evaluated too
        assert entry == metric_entry(direct)
        assert entry["degradation"] == deg
        # training's validation writes the same entry for the same pair
        assert validate(model, str(images), 2, device=torch.device("cpu"),
                        degradation=deg) == entry


def test_bad_weights_exit_2_and_leave_json(weights: Path, images: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    doc = weights.with_suffix(".json").read_text()
    weights.write_bytes(b"not safetensors")
    rc = record_metrics.main([str(weights), "--dataset", str(images)])
    assert rc == 2
    assert "error:" in capsys.readouterr().err
    assert weights.with_suffix(".json").read_text() == doc
