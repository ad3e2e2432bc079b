"""lgun.degrade (hand-computed values) and ``lgun.evaluate --degradation``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lgun.data import PairPool, PairSampler, augment, lr_patch_size
from lgun.degrade import (
    DEGRADATIONS,
    DegradationMix,
    box_downscale,
    degrade,
    gaussian_blur,
    gaussian_kernel,
    psf_downscale,
)
from lgun.evaluate import EvaluationError, evaluate_model, load_dataset, main
from lgun.imresize import imresize, modcrop
from lgun.metrics import psnr, ssim
from lgun.training.config import DataConfig, TrainConfig


def test_gaussian_kernel_hand_computed() -> None:
    # sigma 0.5: radius ceil(2) = 2, taps exp(-x^2 / 0.5) = exp(-2 x^2), normalised.
    raw = np.array([math.exp(-8), math.exp(-2), 1.0, math.exp(-2), math.exp(-8)])
    np.testing.assert_allclose(gaussian_kernel(0.5), raw / raw.sum(), rtol=0, atol=1e-15)
    assert gaussian_kernel(2.0).size == 2 * 8 + 1  # radius ceil(4 sigma) = 8 for x4's PSF
    assert gaussian_kernel(0.3).size == 2 * 2 + 1  # ceil(1.2) = 2
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(0.0)


def test_gaussian_blur_symmetric_border_hand_computed() -> None:
    # An impulse in the corner of a 3x3 image, sigma 0.5 (taps a, b, c, b, a). With symmetric
    # padding the 1-D row [1, 0, 0] pads to [0, 1 | 1, 0, 0 | 0, 0], so the blurred row is
    # [b + c, a + b, a]; the 2-D result is its outer product, and no mass is lost at the edge.
    a, b, c = gaussian_kernel(0.5)[:3]
    image = np.zeros((3, 3), dtype=np.uint8)
    image[0, 0] = 1
    row = np.array([b + c, a + b, a])
    out = gaussian_blur(image, 0.5)
    np.testing.assert_allclose(out, np.outer(row, row), rtol=0, atol=1e-15)
    assert out.sum() == pytest.approx(1.0)
    # Channels are blurred independently; a constant stays constant.
    rgb = np.full((4, 5, 3), 7, dtype=np.uint8)
    np.testing.assert_allclose(gaussian_blur(rgb, 1.3), 7.0)


def test_gaussian_blur_matches_scipy_reflect() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for scale in (2, 3, 4):
        sigma = 0.5 * scale
        image = rng.integers(0, 256, (23, 17, 3)).astype(np.uint8)
        expected = ndimage.gaussian_filter(image.astype(float), (sigma, sigma, 0), mode="reflect")
        np.testing.assert_allclose(gaussian_blur(image, sigma), expected, rtol=0, atol=1e-9)


def test_box_downscale_hand_computed() -> None:
    image = np.array(
        [
            [0, 1, 10, 20, 9],
            [0, 1, 30, 41, 9],
            [255, 255, 1, 2, 9],
            [255, 254, 1, 2, 9],
            [9, 9, 9, 9, 9],
        ],
        dtype=np.uint8,
    )
    # Modcrop to 4x4, then block means 0.5, 25.25, 254.75, 1.5; rounded half away from zero.
    np.testing.assert_array_equal(box_downscale(image, 2), [[1, 25], [255, 2]])
    assert box_downscale(image, 2).dtype == np.uint8
    np.testing.assert_allclose(
        box_downscale(image.astype(np.float32), 2), [[0.5, 25.25], [254.75, 1.5]]
    )
    rgb = np.stack([image, 255 - image, image], axis=-1)
    np.testing.assert_array_equal(box_downscale(rgb, 2)[..., 1], [[255, 230], [0, 254]])
    with pytest.raises(ValueError, match="scale"):
        box_downscale(image, 0)


def test_psf_downscale_is_blur_then_box_rounded_once() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (13, 10, 3)).astype(np.uint8)
    blurred = gaussian_blur(modcrop(image, 2), 1.0)
    means = blurred.reshape(6, 2, 5, 2, 3).mean(axis=(1, 3))
    expected = np.floor(means + 0.5).astype(np.uint8)  # non-negative: half up = half away
    np.testing.assert_array_equal(psf_downscale(image, 2), expected)
    np.testing.assert_array_equal(degrade(image, 2, "psf"), expected)
    # A constant image is unchanged by the PSF and by either decimation.
    flat = np.full((12, 12), 200, dtype=np.uint8)
    for decimate in ("box", "bicubic"):
        np.testing.assert_array_equal(psf_downscale(flat, 3, decimate=decimate), 200)
    assert psf_downscale(flat.astype(np.float64), 3, sigma=0.7).dtype == np.float64


def test_degrade_dispatch() -> None:
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (16, 12, 3)).astype(np.uint8)
    np.testing.assert_array_equal(degrade(hr, 4, "bicubic"), imresize(hr, 1 / 4))
    np.testing.assert_array_equal(degrade(hr, 4, "box"), box_downscale(hr, 4))
    assert DEGRADATIONS == ("bicubic", "box", "psf")
    with pytest.raises(ValueError, match="degradation"):
        degrade(hr, 4, "jpeg")


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Two small RGB images and a grey one, with odd sizes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:41, 0:38] / 41
    for i, name in enumerate(("a.png", "b.png")):
        rgb = [128 + 90 * np.sin((5 + i) * xx + 3 * yy + p) for p in rng.uniform(0, 6, 3)]
        Image.fromarray(np.stack(rgb, -1).round().astype(np.uint8)).save(tmp_path / name)
    grey = (128 + 100 * np.cos(4 * xx - 2 * yy)).round().astype(np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    return tmp_path


def _nearest(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


@pytest.mark.parametrize("degradation", ["box", "psf"])
def test_evaluate_scores_the_named_degradation(image_dir: Path, degradation: str) -> None:
    result = evaluate_model(_nearest, str(image_dir), 2, degradation=degradation)
    assert result["degradation"] == degradation
    for row, (_, path) in zip(result["images"], load_dataset(str(image_dir)), strict=True):
        hr = modcrop(np.asarray(Image.open(path)), 2)
        sr = degrade(hr, 2, degradation).repeat(2, axis=0).repeat(2, axis=1)
        assert row["psnr"] == pytest.approx(psnr(hr, sr, crop_border=2))
        assert row["ssim"] == pytest.approx(ssim(hr, sr, crop_border=2))
    with pytest.raises(EvaluationError, match="degradation"):
        evaluate_model(_nearest, str(image_dir), 2, degradation="gauss")


def test_cli_bicubic_degradation_equals_the_default(
    image_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--model", "bicubic", "--dataset", str(image_dir), "--scale", "2", "--json"]
    assert main(args) == 0
    default = json.loads(capsys.readouterr().out)
    assert main([*args, "--degradation", "bicubic"]) == 0
    explicit = json.loads(capsys.readouterr().out)
    default.pop("seconds"), explicit.pop("seconds")
    assert default == explicit and default["degradation"] == "bicubic"
    # Bit for bit the protocol of lgun.evaluate before --degradation existed.
    for row, (_, path) in zip(default["images"], load_dataset(str(image_dir)), strict=True):
        hr = modcrop(np.asarray(Image.open(path)), 2)
        assert row["psnr"] == psnr(hr, imresize(imresize(hr, 1 / 2), 2), crop_border=2)
    assert main([*args[:-1], "--degradation", "box"]) == 0
    assert "LR box" in capsys.readouterr().out.splitlines()[0]


# --- Training: DegradationMix in lgun.data.PairSampler and the [data] config ---------------


def _pool_images(seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for h, w in ((72, 96), (90, 66)):
        small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)))
    return out


def _reference_batch(sampler: PairSampler, step: int, batch_size: int) -> tuple:
    """The sampler's batch as written before degradations existed (bicubic pool LR)."""
    rng = np.random.default_rng([sampler.seed, step])
    s, p = sampler.scale, sampler.lr_patch
    lrs, hrs = [], []
    for src in rng.choice(len(sampler.pools), size=batch_size, p=sampler.weights):
        pool = sampler.pools[src]
        k = rng.choice(len(pool), p=pool.p)
        y = int(rng.integers(0, pool.lr[k].shape[0] - p + 1))
        x = int(rng.integers(0, pool.lr[k].shape[1] - p + 1))
        lr, hr = pool.lr[k][y : y + p, x : x + p], pool.hr[k][y * s : (y + p) * s,
                                                                x * s : (x + p) * s]
        rot, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        lrs.append(augment(lr, rot, flip))
        hrs.append(augment(hr, rot, flip))
    to_f = lambda a: np.ascontiguousarray(  # noqa: E731
        np.stack(a).transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    return to_f(lrs), to_f(hrs)


def test_default_sampler_is_bit_identical_to_the_bicubic_protocol() -> None:
    pool = PairPool(_pool_images(), 4, lr_patch_size(32, 4))
    for degradation in (None, DegradationMix(), DataConfig().degradation_mix()):
        sampler = PairSampler([pool, pool], [3, 1], patch_size=32, seed=5,
                              degradation=degradation)
        assert sampler.degradation is None
        for step in (0, 7):
            lr, hr = sampler.batch(step, 4)
            ref_lr, ref_hr = _reference_batch(sampler, step, 4)
            assert np.array_equal(lr, ref_lr) and np.array_equal(hr, ref_hr)


def test_box_mix_keeps_the_crops_and_is_a_pure_function_of_seed_and_step() -> None:
    pool = PairPool(_pool_images(), 4, lr_patch_size(32, 4))
    default = PairSampler([pool], [1.0], patch_size=32, seed=2)
    mix = PairSampler([pool], [1.0], patch_size=32, seed=2,
                      degradation=DegradationMix(weights=(("box", 1.0),)))
    lr, hr = mix.batch(3, 6)
    assert np.array_equal(hr, default.batch(3, 6)[1])  # same crops and augmentations
    hr_u8 = np.round(hr * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    # Box is aligned with the patch, so rotation/flip commute with it: exact.
    expected = np.stack([box_downscale(h, 4) for h in hr_u8]).astype(np.float32) / 255
    assert np.array_equal(lr.transpose(0, 2, 3, 1), expected)
    again = PairSampler([pool], [1.0], patch_size=32, seed=2,
                        degradation=DegradationMix(weights=(("box", 1.0),)))
    assert np.array_equal(again.batch(3, 6)[0], lr)  # a fresh sampler (a resume) agrees
    assert not np.array_equal(mix.batch(4, 6)[0], lr)


@pytest.mark.parametrize(("kind", "tolerance"), [("psf", 0), ("psf_bicubic", 1)])
def test_psf_patch_equals_the_whole_image_degradation(kind: str, tolerance: int) -> None:
    hr = modcrop(_pool_images()[0], 4)  # 72 x 96
    lr = imresize(hr, 1 / 4)
    mix = DegradationMix(weights=((kind, 1.0),), psf_sigma=(0.5, 0.5))
    whole = psf_downscale(hr, 4, decimate="box" if kind == "psf" else "bicubic")
    rng = np.random.default_rng(0)
    for y, x in ((0, 0), (5, 9), (18 - 8, 24 - 8)):  # corner, interior, far corner
        patch = mix.lr_patch(hr, lr, y, x, 8, 4, rng)
        diff = np.abs(patch.astype(int) - whole[y : y + 8, x : x + 8].astype(int))
        assert diff.max() <= tolerance  # bicubic weights may round differently: +-1 level


def test_noise_and_jpeg_options() -> None:
    pool = PairPool(_pool_images(), 2, 8)
    clean = PairSampler([pool], [1.0], patch_size=16, seed=1,
                        degradation=DegradationMix(weights=(("bicubic", 1.0),), noise_std=0.0,
                                                   jpeg_quality=0))
    base_lr, base_hr = clean.batch(0, 4)
    noisy = DegradationMix(weights=(("bicubic", 1.0),), noise_std=3.0)
    assert not noisy.is_bicubic_only
    sampler = PairSampler([pool], [1.0], patch_size=16, seed=1, degradation=noisy)
    lr, hr = sampler.batch(0, 4)
    assert np.array_equal(hr, base_hr) and not np.array_equal(lr, base_lr)
    # std uniform in [0, 3] levels: E|noise| = sqrt(2 / pi) * 1.5 ~ 1.2 levels
    assert 0.6 / 255 < np.abs(lr - base_lr).mean() < 1.8 / 255
    assert np.array_equal(sampler.batch(0, 4)[0], lr)
    # JPEG on half of the patches (jpeg_prob): those change, the others stay bicubic.
    jpeg = PairSampler([pool], [1.0], patch_size=16, seed=1, degradation=DegradationMix(
        weights=(("bicubic", 1.0),), jpeg_quality=95, jpeg_prob=0.5))
    changed = [not np.array_equal(a, b) for a, b in zip(jpeg.batch(0, 8)[0],
                                                         clean.batch(0, 8)[0], strict=True)]
    assert 0 < sum(changed) < 8


def test_data_config_degradation_table() -> None:
    cfg = DataConfig(degradation={"bicubic": 0.2, "box": 0.3, "psf": 1}, psf_sigma=[0.3, 0.6],
                     noise_std=1, jpeg_quality=95)
    mix = cfg.degradation_mix()
    assert mix.weights == (("bicubic", 0.2), ("box", 0.3), ("psf", 1.0))
    assert mix.psf_sigma == (0.3, 0.6) and mix.noise_std == 1.0 and mix.jpeg_quality == 95
    full = TrainConfig.from_dict({"data": {"degradation": {"box": 1}, "noise_std": 0.5}})
    assert full.data.degradation == {"box": 1.0}
    assert TrainConfig.from_dict(full.to_dict()) == full
    assert DataConfig().degradation == {"bicubic": 1.0}
    for bad in ({"degradation": {"blur": 1.0}}, {"degradation": ["box"]},
                {"psf_sigma": [0.7, 0.3]}, {"jpeg_quality": 101}):
        with pytest.raises(ValueError, match="data"):
            DataConfig(**bad)
