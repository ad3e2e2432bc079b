"""lgun.imresize: MATLAB bicubic, checked against a loop oracle, invariants and MATLAB's files."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lgun.imresize import bicubic_downscale, contributions, imresize, modcrop

FIXTURES = Path(__file__).parents[1] / "fixtures" / "imresize"


def _load_reference():
    spec = importlib.util.spec_from_file_location("imresize_reference", FIXTURES / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_reference()


@pytest.fixture(scope="module")
def cases() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "cases.npz") as f:
        return dict(f)


@pytest.mark.parametrize("name", list(reference.CASES))
def test_committed_cases(cases: dict[str, np.ndarray], name: str) -> None:
    key, scale, shape = reference.CASES[name]
    out = imresize(cases[f"input_{key}"], scale, output_shape=shape)
    expected = cases[name]
    assert out.shape == expected.shape
    if expected.dtype == np.uint8:
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected)
    else:
        assert out.dtype == np.float64
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("shape", "scale", "output_shape"),
    [
        ((1, 9), 2, None),  # a single row: mirroring folds every tap onto it
        ((2, 3, 3), 1 / 2, None),
        ((7, 5), None, (3, 12)),  # one axis down, one up: the down axis goes first
        ((5, 13, 3), 0.37, None),  # non-integer factor
        ((9, 4), None, (9, 4)),  # identity
        ((6, 6), 1 / 6, None),  # down to one pixel
    ],
)
def test_matches_loop_oracle_on_awkward_sizes(shape, scale, output_shape) -> None:
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    expected = reference.imresize_reference(img, scale, output_shape)
    np.testing.assert_array_equal(imresize(img, scale, output_shape=output_shape), expected)
    img_f = img.astype(np.float64) / 255
    expected_f = reference.imresize_reference(img_f, scale, output_shape)
    out_f = imresize(img_f, scale, output_shape=output_shape)
    np.testing.assert_allclose(out_f, expected_f, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 0.7])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_constant_image_stays_constant(scale: float, dtype) -> None:
    img = np.full((17, 12, 3), 173, dtype=dtype)
    out = imresize(img, scale)
    assert out.shape == (math.ceil(17 * scale), math.ceil(12 * scale), 3)
    np.testing.assert_allclose(out, 173, rtol=0, atol=1e-9)


def test_linear_ramp_is_reproduced_inside() -> None:
    # The a = -0.5 cubic reproduces linear functions; only the symmetric border breaks it.
    w, scale = 20, 3
    ramp = np.tile(np.arange(w, dtype=np.float64), (4, 1))
    out = imresize(ramp, output_shape=(4, w * scale))
    u = np.arange(1, w * scale + 1) / scale + 0.5 * (1 - 1 / scale) - 1  # 0-based input coord
    inside = slice(2 * scale, -2 * scale)
    np.testing.assert_allclose(out[:, inside], np.broadcast_to(u[inside], (4, u[inside].size)))


def test_uint8_rounds_after_each_pass() -> None:
    # One float pass then a final rounding differs from MATLAB on some pixels; ours must match
    # the oracle (which rounds per pass) and therefore differ from the single-rounding result.
    img = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    out = imresize(img, 1 / 3)
    once = np.clip(np.floor(imresize(img.astype(np.float64), 1 / 3) + 0.5), 0, 255)
    assert np.any(out != once)
    np.testing.assert_array_equal(out, reference.imresize_reference(img, 1 / 3))


def test_output_types_and_saturation() -> None:
    img = np.zeros((8, 8), dtype=np.uint8)
    img[::2] = 255  # overshoot of the cubic lobes must saturate, not wrap around
    up = imresize(img, 2)
    assert up.dtype == np.uint8 and up.min() == 0 and up.max() == 255
    up_f = imresize(img.astype(np.float32) / 255, 2)
    assert up_f.dtype == np.float64 and up_f.min() < 0 and up_f.max() > 1  # no clipping


def test_contributions_rows_sum_to_one_and_indices_in_range() -> None:
    for in_len, out_len in [(10, 3), (10, 5), (3, 10), (1, 4)]:
        weights, indices = contributions(in_len, out_len, out_len / in_len)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)
        assert indices.min() >= 0 and indices.max() < in_len


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, ValueError),
        ({"scale": 0.5, "output_shape": (2, 2)}, ValueError),
        ({"scale": 0}, ValueError),
        ({"output_shape": (0, 3)}, ValueError),
    ],
)
def test_bad_arguments(kwargs, error) -> None:
    with pytest.raises(error):
        imresize(np.zeros((4, 4), np.uint8), **kwargs)


def test_bad_images() -> None:
    with pytest.raises(ValueError):
        imresize(np.zeros((2, 4, 4, 3), np.uint8), 0.5)
    with pytest.raises(TypeError):
        imresize(np.zeros((4, 4), bool), 0.5)


def test_modcrop() -> None:
    img = np.arange(7 * 10 * 3).reshape(7, 10, 3)
    assert modcrop(img, 3).shape == (6, 9, 3)
    assert modcrop(img[..., 0], 2).shape == (6, 10)
    np.testing.assert_array_equal(modcrop(img, 3), img[:6, :9])
    with pytest.raises(ValueError):
        modcrop(img, 0)


def test_bicubic_downscale_batch_equals_single() -> None:
    batch = np.random.default_rng(2).integers(0, 256, (3, 26, 19, 3), dtype=np.uint8)
    out = bicubic_downscale(batch, 4)
    assert out.shape == (3, 6, 4, 3) and out.dtype == np.uint8
    for hr, lr in zip(batch, out, strict=True):
        np.testing.assert_array_equal(lr, imresize(modcrop(hr, 4), 1 / 4))
        np.testing.assert_array_equal(bicubic_downscale(hr, 4), lr)
    with pytest.raises(TypeError):
        bicubic_downscale(batch.astype(np.float32), 4)


@pytest.mark.slow
def test_speed_of_a_large_image() -> None:
    img = np.random.default_rng(3).integers(0, 256, (1400, 2040, 3), dtype=np.uint8)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        imresize(img, 1 / 2)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0


SET5 = ("baby", "bird", "butterfly", "head", "woman")


@pytest.mark.data
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", SET5)
def test_bit_exact_with_matlab_set5(shared_data: Path, name: str, scale: int) -> None:
    set5 = shared_data / "natural" / "benchmark" / "Set5"
    lr_path = set5 / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png"
    if not lr_path.is_file():
        pytest.skip(f"MATLAB LR file not found: {lr_path}")
    hr = np.asarray(Image.open(set5 / "HR" / f"{name}.png").convert("RGB"))
    matlab = np.asarray(Image.open(lr_path).convert("RGB"))
    np.testing.assert_array_equal(imresize(modcrop(hr, scale), 1 / scale), matlab)
