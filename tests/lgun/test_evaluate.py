"""lgun.evaluate: the benchmark protocol, its Python API and its CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lgun import LGUN
from lgun.evaluate import EvaluationError, evaluate_model, load_dataset, main, read_image
from lgun.imresize import imresize, modcrop
from lgun.metrics import psnr, ssim

#: Published bicubic rows (Y, crop = scale): dataset -> scale -> (PSNR, SSIM).
PUBLISHED = {
    "Set5": {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)},
    "Set14": {2: (30.24, 0.8688), 3: (27.55, 0.7742), 4: (26.00, 0.7027)},
    "B100": {2: (29.56, 0.8431), 3: (27.21, 0.7385), 4: (25.96, 0.6675)},
}
REQUIRED_KEYS = {"dataset", "scale", "n", "psnr", "ssim", "protocol", "model", "images"}


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency RGB content so bicubic scores are realistic, not noise-dominated."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    phases = rng.uniform(0, 2 * np.pi, 3)
    rgb = [128 + 100 * np.sin(5 * xx + 3 * yy + p) for p in phases]
    return np.clip(np.stack(rgb, axis=-1), 0, 255).round().astype(np.uint8)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Three RGB images (one in a sub-folder, odd sizes) and one mode-L image."""
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    Image.fromarray(_smooth_image(rng, 41, 38)).save(tmp_path / "a.png")
    Image.fromarray(_smooth_image(rng, 36, 45)).save(tmp_path / "sub" / "b.png")
    Image.fromarray(_smooth_image(rng, 40, 40)).save(tmp_path / "c.bmp")
    Image.fromarray(_smooth_image(rng, 39, 42)[..., 1], mode="L").save(tmp_path / "grey.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


class Nearest(torch.nn.Module):
    """A parameter-free "model" with exactly predictable output."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _nearest_numpy(lr: np.ndarray, scale: int) -> np.ndarray:
    return lr.repeat(scale, axis=0).repeat(scale, axis=1)


def test_load_dataset_folder(image_dir: Path) -> None:
    items = load_dataset(str(image_dir))
    assert [name for name, _ in items] == ["a", "c", "grey", "sub/b"]
    assert all(path.is_file() for _, path in items)


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="unknown dataset"):
        load_dataset("NoSuchSet", tmp_path)
    with pytest.raises(EvaluationError, match="not found"):
        load_dataset("set5", tmp_path)  # a known name, case-insensitive, under an empty root
    with pytest.raises(EvaluationError, match="no images"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("protocol", ["y", "rgb"])
def test_nearest_model_gives_exactly_predicted_scores(image_dir: Path, protocol: str) -> None:
    scale = 3
    result = evaluate_model(Nearest(scale), str(image_dir), scale, protocol=protocol)
    assert REQUIRED_KEYS <= set(result)
    assert result["n"] == 4 and result["scale"] == scale and result["protocol"] == protocol
    y_only = protocol == "y"
    for row, (_, path) in zip(result["images"], load_dataset(str(image_dir)), strict=True):
        hr = modcrop(np.asarray(Image.open(path)), scale)
        # Grey images go through the model as replicated RGB; nearest keeps R = G = B, so the
        # score must equal that of the single-channel computation.
        sr = _nearest_numpy(imresize(hr, 1 / scale), scale)
        assert (row["height"], row["width"]) == hr.shape[:2]
        assert row["psnr"] == pytest.approx(psnr(hr, sr, crop_border=scale, y_only=y_only))
        assert row["ssim"] == pytest.approx(ssim(hr, sr, crop_border=scale, y_only=y_only))
    assert result["psnr"] == pytest.approx(np.mean([r["psnr"] for r in result["images"]]))
    assert result["ssim"] == pytest.approx(np.mean([r["ssim"] for r in result["images"]]))


def test_bicubic_beats_nearest_and_callables_work(image_dir: Path) -> None:
    bicubic = evaluate_model("bicubic", str(image_dir), 2)
    nearest = evaluate_model(lambda x: F.interpolate(x, scale_factor=2.0), str(image_dir), 2)
    assert bicubic["model"] == "bicubic"
    assert bicubic["psnr"] > nearest["psnr"] and bicubic["ssim"] > nearest["ssim"]


def test_model_output_is_clipped_and_rounded(image_dir: Path) -> None:
    # A sub-half-level offset rounds away: the scores are those of the exact nearest output.
    exact = evaluate_model(Nearest(2), str(image_dir), 2, protocol="rgb")
    offset = evaluate_model(
        lambda x: F.interpolate(x, scale_factor=2.0) + 0.4 / 255, str(image_dir), 2, protocol="rgb"
    )
    assert offset["psnr"] == exact["psnr"] and offset["ssim"] == exact["ssim"]
    # Out-of-range outputs clip to 0..255 instead of wrapping around.
    for value, level in ((5.0, 255), (-3.0, 0)):
        result = evaluate_model(
            lambda x, v=value: torch.full((1, 3, 2 * x.shape[2], 2 * x.shape[3]), v),
            str(image_dir),
            2,
            protocol="rgb",
        )
        for row, (_, path) in zip(result["images"], load_dataset(str(image_dir)), strict=True):
            hr = modcrop(np.asarray(Image.open(path)), 2)
            expected = psnr(hr, np.full_like(hr, level), crop_border=2, y_only=False)
            assert row["psnr"] == pytest.approx(expected)


@pytest.fixture
def one_torch_thread():
    # A tiny forward pass is dominated by OpenMP start-up/spinning when the CPU is shared
    # (seconds instead of ~50 ms); one thread keeps the test fast. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_limit_and_training_mode_restored(image_dir: Path) -> None:
    model = LGUN(scale=2).train()
    result = evaluate_model(model, str(image_dir), 2, limit=1)
    assert result["n"] == 1 and len(result["images"]) == 1
    assert math.isfinite(result["psnr"]) and -1 <= result["ssim"] <= 1
    assert model.training


def test_bad_inputs(image_dir: Path) -> None:
    with pytest.raises(EvaluationError, match="x2"):
        evaluate_model(Nearest(2), str(image_dir), 3)
    with pytest.raises(EvaluationError, match="output has shape"):
        evaluate_model(lambda x: x, str(image_dir), 2)
    for scale in (1, 2.0, True):
        with pytest.raises(EvaluationError, match="scale"):
            evaluate_model("bicubic", str(image_dir), scale)
    with pytest.raises(EvaluationError, match="protocol"):
        evaluate_model("bicubic", str(image_dir), 2, protocol="lab")
    with pytest.raises(EvaluationError, match="limit"):
        evaluate_model("bicubic", str(image_dir), 2, limit=0)
    with pytest.raises(EvaluationError, match="too small"):
        evaluate_model("bicubic", str(image_dir), 16)
    with pytest.raises(EvaluationError, match="device"):  # lgun.device's message, wrapped
        evaluate_model("bicubic", str(image_dir), 2, device="tpu")


def test_cli_table_and_json(image_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "bicubic", "--dataset", str(image_dir), "--scale", "2"]) == 0
    table = capsys.readouterr().out
    assert "sub/b" in table and table.splitlines()[-1].startswith("mean")
    argv = ["--model", "bicubic", "--dataset", str(image_dir), "--scale", "2", "--json"]
    assert main([*argv, "--protocol", "rgb", "--limit", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert REQUIRED_KEYS <= set(doc) and doc["n"] == 2 and doc["protocol"] == "rgb"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "bicubic", "--dataset", "NoSuchSet", "--scale", "2"], "unknown dataset"),
        (["--model", "bicubic", "--dataset", "Set5", "--scale", "2"], "not found"),
        (["--model", "bicubic", "--dataset", "Set5", "--scale", "1"], "scale"),
        (["--model", "bicubic", "--dataset", "Set5", "--scale", "x"], "--scale"),
        (["--model", "lgun-x9", "--dataset", "{images}", "--scale", "2"], "lgun-x9"),
        (["--model", "missing.safetensors", "--dataset", "{images}", "--scale", "2"], "missing"),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str],
    message: str,
    image_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [a.replace("{images}", str(image_dir)) for a in argv]
    try:
        code = main([*argv, "--data-root", str(tmp_path / "absent")])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code not in (0, None)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def _check_published(result: dict, dataset: str, scale: int) -> None:
    p_ref, s_ref = PUBLISHED[dataset][scale]
    assert abs(result["psnr"] - p_ref) <= 0.02, (result["psnr"], p_ref)
    assert abs(result["ssim"] - s_ref) <= 0.002, (result["ssim"], s_ref)


@pytest.mark.data
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_bicubic_reproduces_published_rows(shared_data: Path, dataset: str, scale: int) -> None:
    if not (shared_data / "natural" / "benchmark" / dataset / "HR").is_dir():
        pytest.skip(f"{dataset} not in {shared_data}")
    _check_published(
        evaluate_model("bicubic", dataset, scale, data_root=shared_data), dataset, scale
    )


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_reproduces_published_b100(shared_data: Path, scale: int) -> None:
    if not (shared_data / "natural" / "benchmark" / "B100" / "HR").is_dir():
        pytest.skip(f"B100 not in {shared_data}")
    _check_published(evaluate_model("bicubic", "B100", scale, data_root=shared_data), "B100", scale)


@pytest.mark.data
def test_cli_smoke_set5_json(shared_data: Path) -> None:
    if not (shared_data / "natural" / "benchmark" / "Set5" / "HR").is_dir():
        pytest.skip(f"Set5 not in {shared_data}")
    proc = subprocess.run(
        [sys.executable, "-m", "lgun.evaluate", "--model", "bicubic", "--dataset", "Set5"]
        + ["--scale", "4", "--json", "--data-root", str(shared_data)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert REQUIRED_KEYS <= set(doc)
    assert doc["dataset"] == "Set5" and doc["n"] == 5 and doc["model"] == "bicubic"
    assert [r["name"] for r in doc["images"]] == ["baby", "bird", "butterfly", "head", "woman"]
    _check_published(doc, "Set5", 4)


def test_read_image_modes(tmp_path: Path) -> None:
    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (12, 12, 3) and out[0, 0, 0] == 200  # alpha dropped
    Image.fromarray(np.full((12, 12), 7, np.uint8), mode="L").save(tmp_path / "l.png")
    assert read_image(tmp_path / "l.png").shape == (12, 12)
    Image.fromarray(np.full((12, 12), 4000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(EvaluationError, match="8-bit"):
        read_image(tmp_path / "deep.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(EvaluationError, match="cannot read"):
        read_image(tmp_path / "broken.png")
