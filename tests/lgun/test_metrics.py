"""lgun.metrics: PSNR/SSIM conventions of the SR literature, with exact expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from lgun.metrics import psnr, rgb2ycbcr, rgb_to_grey, rgb_to_y, ssim

Y_GAIN = (65.481 + 128.553 + 24.966) / 255  # = 219 / 255: Y change per unit of R = G = B


def _rgb(seed: int = 0, shape: tuple[int, int] = (32, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 236, (*shape, 3), dtype=np.uint8)


def test_rgb2ycbcr_known_colours() -> None:
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    out = rgb2ycbcr(colours)
    expected = [[16, 128, 128], [235, 128, 128], [81.481, 90.203, 240], [40.966, 240, 109.786]]
    np.testing.assert_allclose(out[0], expected, atol=1e-9)
    # Floats on 0..255 give the same values, and Y is not rounded.
    np.testing.assert_allclose(rgb2ycbcr(colours.astype(np.float32)), out)
    assert rgb_to_y(np.ones((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16 + Y_GAIN)


def test_rgb_to_y_grey_conventions() -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    # A single-channel image is its own Y ...
    np.testing.assert_array_equal(rgb_to_y(grey), grey)
    np.testing.assert_array_equal(rgb_to_y(grey[..., None]), grey)
    # ... while the same content stored as R = G = B is RGB: Y = 16 + 219/255 g.
    np.testing.assert_allclose(rgb_to_y(np.repeat(grey[..., None], 3, 2)), 16 + Y_GAIN * grey)
    # rgb_to_grey inverts that mapping for R = G = B.
    np.testing.assert_allclose(rgb_to_grey(np.repeat(grey[..., None], 3, 2)), grey, atol=1e-9)


def test_identical_images() -> None:
    a = _rgb()
    for y_only in (True, False):
        assert psnr(a, a.copy(), crop_border=2, y_only=y_only) == math.inf
        assert ssim(a, a.copy(), crop_border=2, y_only=y_only) == 1.0


@pytest.mark.parametrize("offset", [1, 3, 10])
def test_constant_offset_gives_known_psnr(offset: int) -> None:
    a = _rgb()
    b = a + np.uint8(offset)  # no overflow: values are < 236
    assert psnr(a, b, crop_border=0, y_only=False) == pytest.approx(
        20 * math.log10(255 / offset), abs=1e-10
    )
    # On Y an RGB offset d is an offset of d * 219/255.
    assert psnr(a, b, crop_border=4, y_only=True) == pytest.approx(
        20 * math.log10(255 / (offset * Y_GAIN)), abs=1e-10
    )
    grey_a, grey_b = a[..., 0], b[..., 0]
    assert psnr(grey_a, grey_b, crop_border=4) == pytest.approx(
        20 * math.log10(255 / offset), abs=1e-10
    )


def test_psnr_rgb_is_mse_over_all_channels() -> None:
    a = _rgb(1).astype(np.float64)
    b = a.copy()
    b[..., 0] += 4  # error only in red: MSE over all channels = 16 / 3
    assert psnr(a, b, crop_border=0, y_only=False) == pytest.approx(
        10 * math.log10(255**2 / (16 / 3))
    )


def test_crop_border_removes_only_the_border() -> None:
    a = _rgb(2)
    b = a.copy()
    b[:3] = 0
    b[:, -3:] = 255
    assert psnr(a, b, crop_border=3) == math.inf
    assert ssim(a, b, crop_border=3) == 1.0
    assert psnr(a, b, crop_border=2) < 30
    assert ssim(a, b, crop_border=2) < 1


def _ssim_brute_force(a: np.ndarray, b: np.ndarray) -> float:
    """Explicit 11x11 windows (fspecial('gaussian', 11, 1.5)), valid positions only."""
    x = np.arange(11) - 5.0
    window = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    wa = sliding_window_view(a, (11, 11))
    wb = sliding_window_view(b, (11, 11))
    mu_a = np.einsum("ijkl,kl->ij", wa, window)
    mu_b = np.einsum("ijkl,kl->ij", wb, window)
    var_a = np.einsum("ijkl,kl->ij", wa * wa, window) - mu_a**2
    var_b = np.einsum("ijkl,kl->ij", wb * wb, window) - mu_b**2
    cov = np.einsum("ijkl,kl->ij", wa * wb, window) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def test_ssim_matches_brute_force_window() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (31, 24)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    got = ssim(a, b, crop_border=0)
    assert got == pytest.approx(_ssim_brute_force(a, b), abs=1e-12)
    assert 0 < got < 1
    # The border crop happens before the valid filtering.
    assert ssim(a, b, crop_border=3) == pytest.approx(
        _ssim_brute_force(a[3:-3, 3:-3], b[3:-3, 3:-3]), abs=1e-12
    )


def test_ssim_of_constant_images() -> None:
    # No variance: SSIM reduces to the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1).
    a = np.full((20, 20), 100.0)
    b = np.full((20, 20), 140.0)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 140 + c1) / (100**2 + 140**2 + c1)
    assert ssim(a, b, crop_border=0) == pytest.approx(expected, abs=1e-12)


def test_ssim_rgb_is_mean_of_channels_and_y_differs() -> None:
    rng = np.random.default_rng(4)
    a = _rgb(4).astype(np.float64)
    b = np.clip(a + rng.normal(0, [2, 10, 30], a.shape), 0, 255)
    per_channel = [ssim(a[..., c], b[..., c], crop_border=2) for c in range(3)]
    assert ssim(a, b, crop_border=2, y_only=False) == pytest.approx(np.mean(per_channel))
    assert ssim(a, b, crop_border=2, y_only=True) != pytest.approx(np.mean(per_channel))


def test_grey_image_metrics() -> None:
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (30, 30)).astype(np.uint8)
    noisy = np.clip(grey + rng.normal(0, 5, grey.shape), 0, 255).round().astype(np.uint8)
    p = psnr(grey, noisy, crop_border=2)
    assert p == pytest.approx(psnr(grey, noisy, crop_border=2, y_only=False))
    s = ssim(grey, noisy, crop_border=2)
    assert 0 < s < 1
    # The same pixels stored as R = G = B: on Y, PSNR is higher by 20 log10(255/219).
    rgb_a, rgb_b = (np.repeat(x[..., None], 3, 2) for x in (grey, noisy))
    assert psnr(rgb_a, rgb_b, crop_border=2) == pytest.approx(p - 20 * math.log10(Y_GAIN))
    assert psnr(rgb_a, rgb_b, crop_border=2, y_only=False) == pytest.approx(p)


def test_psnr_is_symmetric() -> None:
    a, b = _rgb(6), _rgb(7)
    assert psnr(a, b, crop_border=1) == psnr(b, a, crop_border=1)


def test_errors() -> None:
    a = _rgb()
    with pytest.raises(ValueError, match="shape"):
        psnr(a, a[:-1], crop_border=0)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:16, :16], a[:16, :16], crop_border=3)
    with pytest.raises(ValueError):
        psnr(a, a, crop_border=14)
    with pytest.raises(ValueError):
        rgb2ycbcr(a[..., :2])
    with pytest.raises(TypeError):
        psnr(a.astype(bool), a.astype(bool), crop_border=0)
