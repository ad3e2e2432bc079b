"""pipelines.ensemble_evidence on tiny synthetic images and a tiny random LGUN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lgun import LGUN, save_weights
from pipelines.ensemble_evidence import image_evidence, main, run, select, summarize


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Two small RGB images (one oblong) and one grey image."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:36, 0:44] / 44
    for i, name in enumerate(("a", "b")):
        rgb = [128 + 90 * np.sin(6 * xx + (3 + i) * yy + p) for p in rng.uniform(0, 6, 3)]
        Image.fromarray(np.stack(rgb, -1).astype(np.uint8)[: 36 - 4 * i]).save(
            tmp_path / f"{name}.png")
    Image.fromarray((100 + 80 * np.cos(9 * xx)).astype(np.uint8)[:32, :32], mode="L").save(
        tmp_path / "c.png")
    return tmp_path


@pytest.fixture
def net() -> LGUN:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return LGUN(scale=2, channels=16, num_blocks=1, num_heads=4).eval()


def test_select_is_even_and_deterministic() -> None:
    assert select(list(range(10)), None) == list(range(10))
    assert select(list(range(10)), 20) == list(range(10))
    assert select(list(range(10)), 3) == [0, 3, 6]
    with pytest.raises(ValueError):
        select([1, 2], 0)


def test_summarize_on_known_arrays() -> None:
    err = np.arange(100, dtype=np.float32)
    perfect = [{"disagreement": err / 10, "error": err}]
    r = summarize(perfect, top=0.1)
    assert r["pearson"] == pytest.approx(1) and r["spearman"] == pytest.approx(1)
    g = r["groups"]
    assert g["uncertain"]["pixels"] == 10 and g["rest"]["pixels"] == 90
    assert g["uncertain"]["mae"] == pytest.approx(94.5) == g["worst"]["mae"]
    assert g["uncertain"]["se_share"] + g["rest"]["se_share"] == pytest.approx(1)
    inverted = summarize([{"disagreement": -err, "error": err}])
    assert inverted["spearman"] == pytest.approx(-1)
    assert inverted["groups"]["uncertain"]["mae"] < inverted["groups"]["rest"]["mae"]


def test_image_evidence_matches_the_evaluation(net: LGUN, images: Path) -> None:
    from lgun.evaluate import evaluate_model, read_image

    hr = read_image(images / "b.png")[:32, :44]
    e = image_evidence(net, hr, 2)
    assert e["disagreement"].shape == e["error"].shape == ((32 - 4) * (44 - 4),)
    assert e["disagreement"].min() >= 0 and e["disagreement"].max() > 0
    ensemble = evaluate_model(net, str(images), 2, self_ensemble=True)
    single = evaluate_model(net, str(images), 2)
    r = run(net, str(images), 2)
    assert r["n"] == 3 and r["pixels"] == sum(
        (im["height"] - 4) * (im["width"] - 4) for im in single["images"])
    assert r["psnr_ensemble"] == pytest.approx(ensemble["psnr"], abs=1e-9)
    assert r["psnr_single"] == pytest.approx(single["psnr"], abs=1e-3)


def test_cli_json_and_table(net: LGUN, images: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    weights = save_weights(net, tmp_path / "w" / "tiny.safetensors")
    assert main(["--model", str(weights), "--dataset", str(images), "--scale", "2",
                 "--limit", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 2 and r["limit"] == 2 and -1 <= r["pearson"] <= 1
    assert main(["--model", str(weights), "--dataset", str(images), "--scale", "2"]) == 0
    out = capsys.readouterr().out
    assert "Spearman" in out and "top 10% by disagreement" in out
    assert main(["--model", str(weights), "--dataset", str(images), "--scale", "2",
                 "--top", "2"]) == 2
