"""PSNR and SSIM as computed in the super-resolution literature (numpy only).

Conventions (each one checked against the published bicubic rows of Set5/Set14/B100, see
RESULTS.md; the alternative is what moved a row out of tolerance):

* Images are on the 0..255 scale: uint8, or float already multiplied by 255.
* **Y protocol**: Y of MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, Y in [16, 235]) computed in
  floating point and *not* rounded, as RCAN's ``Evaluate_PSNR_SSIM.m`` (which calls
  ``rgb2ycbcr(im2double(im))``) and BasicSR do. MATLAB's uint8 path would round Y to an integer;
  that lowers every row (Set5 x2 by 0.034 dB, SSIM by ~0.001) and misses Set5 and Set14 x2.
* **Grey images**: a single-channel (mode ``L``) image *is* its Y, as in those MATLAB scripts
  (``if size(im, 3) == 3, rgb2ycbcr, else use im``). Replicating it to RGB first would compress
  its range to [16, 235] and raise its PSNR by 20*log10(255/219) = 1.32 dB (Set14 +0.09 dB, out
  of tolerance). A three-channel image with R = G = B (Set14 ``man``) is RGB and goes through
  ``rgb2ycbcr`` like any other: that is what the published numbers did.
* **RGB protocol**: PSNR from the MSE over all pixels of all three channels together (EDSR's
  ``calc_psnr`` and BasicSR's ``calculate_psnr`` without Y, on which the remote-sensing SR
  codebases HSENet/TransENet/TTST are built); SSIM is the mean of the per-channel SSIMs
  (BasicSR, and MATLAB scripts that call ``ssim_index`` per channel).
* ``crop_border`` pixels are removed on each side before either metric (the literature uses the
  scale factor).
* SSIM is ``ssim_index.m`` of Wang et al. (2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, L = 255, float64, statistics only where the window fits ('valid' filtering, no
  padding, no automatic downsampling), mean of the SSIM map.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["psnr", "rgb2ycbcr", "rgb_to_grey", "rgb_to_y", "ssim"]

#: MATLAB rgb2ycbcr for inputs on [0, 255]: row p gives channel p = (T @ rgb) / 255 + offset.
_YCBCR_MATRIX = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ]
)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _as_float(image: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"expected an integer or float image, got dtype {image.dtype}")
    return image.astype(np.float64, copy=False)


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")


def rgb2ycbcr(image: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` (BT.601) in float64, without rounding.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float on the 0..255 scale.

    Returns:
        ``(H, W, 3)`` float64 YCbCr: Y in [16, 235], Cb and Cr in [16, 240].
    """
    _check_rgb(image)
    rgb = _as_float(image)
    out = np.empty(rgb.shape)
    for p in range(3):
        # Same operation order as MATLAB's imlincomb(T(p,1), R, T(p,2), G, T(p,3), B, offset).
        t = _YCBCR_MATRIX[p] / 255.0
        out[..., p] = t[0] * rgb[..., 0] + t[1] * rgb[..., 1] + t[2] * rgb[..., 2]
        out[..., p] += _YCBCR_OFFSET[p]
    return out


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """The channel the SR literature measures: Y of ``rgb2ycbcr``, or the grey level itself.

    Args:
        image: ``(H, W, 3)`` RGB, or a grey ``(H, W)`` / ``(H, W, 1)`` image; uint8 or float on
            the 0..255 scale.

    Returns:
        ``(H, W)`` float64: Y in [16, 235] for RGB; the unchanged grey values for a
        single-channel image (see the module docstring for why).
    """
    if image.ndim == 2:
        return _as_float(image)
    if image.ndim == 3 and image.shape[2] == 1:
        return _as_float(image[..., 0])
    _check_rgb(image)
    rgb = _as_float(image)
    t = _YCBCR_MATRIX[0] / 255.0
    return t[0] * rgb[..., 0] + t[1] * rgb[..., 1] + t[2] * rgb[..., 2] + _YCBCR_OFFSET[0]


def rgb_to_grey(image: np.ndarray) -> np.ndarray:
    """The grey level with the same Y as ``image``: ``(Y - 16) * 255 / 219``.

    Used to compare a network's RGB output with a single-channel ground truth on the grey
    scale that the Y protocol uses for such images.

    Args:
        image: ``(H, W, 3)`` RGB on the 0..255 scale.

    Returns:
        ``(H, W)`` float64 on 0..255.
    """
    _check_rgb(image)
    weights = _YCBCR_MATRIX[0] / _YCBCR_MATRIX[0].sum()  # sums to 1: R = G = B = g gives g
    rgb = _as_float(image)
    return weights[0] * rgb[..., 0] + weights[1] * rgb[..., 1] + weights[2] * rgb[..., 2]


def _prepare(
    a: np.ndarray, b: np.ndarray, crop_border: int, y_only: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Same-shape float64 images, converted to Y if asked, with the border cropped."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (H, W, C) images, got shape {a.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if y_only:
        a, b = rgb_to_y(a), rgb_to_y(b)
    else:
        a, b = _as_float(a), _as_float(b)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if a.size == 0:
        raise ValueError(f"nothing left after cropping {crop_border} px from {a.shape}")
    return a, b


def psnr(
    a: np.ndarray,
    b: np.ndarray,
    *,
    crop_border: int,
    y_only: bool = True,
    data_range: float = 255.0,
) -> float:
    """Peak signal-to-noise ratio in dB.

    Args:
        a: Ground truth, ``(H, W)`` or ``(H, W, C)``, uint8 or float on 0..255.
        b: Estimate, same shape.
        crop_border: Pixels removed on each side first (the SR scale in the literature).
        y_only: Compare Y (see ``rgb_to_y``); otherwise all channels, MSE over all of them.
        data_range: Peak value.

    Returns:
        PSNR in dB; ``inf`` for identical images.
    """
    a, b = _prepare(a, b, crop_border, y_only)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window() -> np.ndarray:
    """1-D factor of MATLAB's ``fspecial('gaussian', 11, 1.5)`` (the 2-D window is its outer
    product with itself, and both are normalised to sum 1)."""
    x = np.arange(_SSIM_WINDOW, dtype=np.float64) - (_SSIM_WINDOW - 1) / 2
    g = np.exp(-(x * x) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(image: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable ``filter2(g' * g, image, 'valid')`` of a 2-D float64 image."""
    n = g.size
    h, w = image.shape
    rows = np.zeros((h - n + 1, w))
    for k in range(n):
        rows += g[k] * image[k : k + h - n + 1]
    out = np.zeros((h - n + 1, w - n + 1))
    for k in range(n):
        out += g[k] * rows[:, k : k + w - n + 1]
    return out


def _ssim_channel(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    g = _gaussian_window()
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    mu_a = _filter_valid(a, g)
    mu_b = _filter_valid(b, g)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _filter_valid(a * a, g) - mu_aa
    var_b = _filter_valid(b * b, g) - mu_bb
    cov = _filter_valid(a * b, g) - mu_ab
    ssim_map = ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    *,
    crop_border: int,
    y_only: bool = True,
    data_range: float = 255.0,
) -> float:
    """Structural similarity (Wang et al. 2004) as in ``ssim_index.m`` / BasicSR.

    Args:
        a: Ground truth, ``(H, W)`` or ``(H, W, C)``, uint8 or float on 0..255.
        b: Estimate, same shape.
        crop_border: Pixels removed on each side first.
        y_only: SSIM of Y; otherwise the mean of the per-channel SSIMs.
        data_range: Peak value (L in the constants C1 = (K1 L)^2, C2 = (K2 L)^2).

    Returns:
        Mean SSIM, 1.0 for identical images.

    Raises:
        ValueError: an image smaller than the 11x11 window after cropping.
    """
    a, b = _prepare(a, b, crop_border, y_only)
    if min(a.shape[:2]) < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after cropping, "
            f"got {a.shape[:2]}"
        )
    if a.ndim == 2:
        return _ssim_channel(a, b, data_range)
    return float(
        np.mean([_ssim_channel(a[..., c], b[..., c], data_range) for c in range(a.shape[2])])
    )
