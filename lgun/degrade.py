"""Low-resolution images as a camera would make them (numpy only).

The SR literature makes its LR inputs with MATLAB's bicubic ``imresize`` (``lgun.imresize``).
A camera does something else: optics blur the scene (a point-spread function, PSF), then each
detector integrates the light over its footprint, i.e. takes the *mean* of an s x s block of the
finer scene. This module offers both, so that a model can be scored (``lgun.evaluate
--degradation``) and later trained on the degradation real sensors apply:

* ``bicubic``: ``imresize(hr, 1/s)``, the benchmark protocol (bit-identical to before).
* ``box``: the mean of each ``s x s`` block of the modcropped HR, computed in float64 and
  rounded once (half away from zero, as ``imresize``) to the input's integer type. It is what
  ``gdal``/rasterio ``average`` resampling does on an exactly aligned grid.
* ``psf``: a Gaussian blur with ``sigma = 0.5 * s`` HR pixels, then ``box``. The blurred image is
  kept in float64 and rounded once, after the block mean (a sensor quantises its integrated
  signal, not an intermediate image). sigma = 0.5 s is a typical optical-plus-detector PSF of
  a well-focused imager, whose MTF at Nyquist of the coarse grid is about 0.1.

The Gaussian (``gaussian_blur``) is separable, with a kernel of radius ``ceil(4 sigma)``
normalised to sum 1, and "reflect" borders in the sense of ``scipy.ndimage``'s default mode
``'reflect'`` (``d c b a | a b c d | d c b a``: the edge pixel is repeated), which is numpy's
``np.pad(mode='symmetric')`` and MATLAB's ``'symmetric'`` padding (the one ``imresize`` uses).
numpy's ``mode='reflect'`` (``d c b | a b c d | c b a``) is scipy's ``'mirror'``; it is not used.
For sigma = 0.5 s with s in {2, 3, 4} the radius equals scipy's ``int(4 sigma + 0.5)``, so
``gaussian_blur`` agrees with ``scipy.ndimage.gaussian_filter(x, sigma, mode='reflect')`` to
float rounding there (a test checks it where scipy is installed; lgun does not depend on it).

Training (``DegradationMix``, used by ``lgun.data.PairSampler``): each patch draws one kind of
``MIX_KINDS`` by weight (``bicubic``, ``box``, ``psf`` = PSF then box, ``psf_bicubic`` = PSF then
bicubic), a PSF sigma uniformly in ``psf_sigma`` (units of the scale), optionally Gaussian noise
(std uniform in [0, ``noise_std``] 8-bit levels, added before the one rounding) and optionally a
JPEG round trip (Pillow, quality ``jpeg_quality``, with probability ``jpeg_prob``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from lgun.imresize import _round_half_away, imresize, modcrop

__all__ = [
    "DEGRADATIONS",
    "MIX_KINDS",
    "DegradationMix",
    "PSF_SIGMA",
    "box_downscale",
    "degrade",
    "gaussian_blur",
    "gaussian_kernel",
    "psf_downscale",
]

#: Names accepted by ``degrade`` (and ``lgun.evaluate --degradation``).
DEGRADATIONS = ("bicubic", "box", "psf")
#: Kinds a training mixture draws from (``psf`` decimates by box, ``psf_bicubic`` by bicubic).
MIX_KINDS = ("bicubic", "box", "psf", "psf_bicubic")
#: The PSF's standard deviation in units of the scale factor (sigma = PSF_SIGMA * s HR pixels).
PSF_SIGMA = 0.5


def _check_image(image: np.ndarray) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"expected an integer or float image, got dtype {image.dtype}")


def _to_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float64 -> ``dtype``: rounded half away from zero and saturated for integers."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(_round_half_away(x), info.min, info.max).astype(dtype)
    return x


def gaussian_kernel(sigma: float) -> np.ndarray:
    """1-D Gaussian of standard deviation ``sigma``, radius ``ceil(4 sigma)``, summing to 1.

    Args:
        sigma: Standard deviation in pixels (> 0).

    Returns:
        float64 taps, length ``2 * ceil(4 sigma) + 1``.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = math.ceil(4 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of each channel, symmetric ("reflect") borders, in float64.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``, integer or float.
        sigma: Standard deviation in pixels (> 0).

    Returns:
        float64 array of the same shape, not rounded.
    """
    _check_image(image)
    g = gaussian_kernel(sigma)
    r = g.size // 2
    x = image.astype(np.float64)
    h, w = x.shape[:2]
    # Rows then columns; each pass sums the taps in increasing order over a padded copy.
    # np.pad 'symmetric' repeats the edge pixel (scipy 'reflect'); it also handles a radius
    # larger than the image by reflecting again.
    pad_rows = [(r, r), (0, 0)] + [(0, 0)] * (x.ndim - 2)
    xp = np.pad(x, pad_rows, mode="symmetric")
    out = np.zeros_like(x)
    for k in range(g.size):
        out += g[k] * xp[k : k + h]
    pad_cols = [(0, 0), (r, r)] + [(0, 0)] * (x.ndim - 2)
    xp = np.pad(out, pad_cols, mode="symmetric")
    out = np.zeros_like(x)
    for k in range(g.size):
        out += g[k] * xp[:, k : k + w]
    return out


def _block_mean(x: np.ndarray, scale: int) -> np.ndarray:
    """float64 mean of each ``scale x scale`` block of an image whose sides divide by scale."""
    h, w = x.shape[:2]
    # (H, W, ...) -> (H/s, s, W/s, s, ...) -> mean over the two block axes
    blocks = x.reshape(h // scale, scale, w // scale, scale, *x.shape[2:])
    return blocks.astype(np.float64).mean(axis=(1, 3))


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")


def box_downscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Area average: the mean of each ``scale x scale`` block (after a modcrop).

    Args:
        image: ``(H, W)`` or ``(H, W, C)``; integer (rounded and saturated back to its dtype)
            or float (returned as float64, unrounded).
        scale: Integer reduction factor.

    Returns:
        ``(H // scale, W // scale[, C])`` in the input's integer dtype, or float64.
    """
    _check_image(image)
    _check_scale(scale)
    return _to_dtype(_block_mean(modcrop(image, scale), scale), image.dtype)


def psf_downscale(
    image: np.ndarray,
    scale: int,
    *,
    sigma: float | None = None,
    decimate: str = "box",
) -> np.ndarray:
    """Gaussian PSF, then decimation by ``scale``; one rounding at the end.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``, integer or float.
        scale: Integer reduction factor.
        sigma: PSF standard deviation in HR pixels; default ``PSF_SIGMA * scale``.
        decimate: ``"box"`` (block mean, a detector's integration) or ``"bicubic"``
            (``imresize`` of the blurred float image, for training mixtures).

    Returns:
        ``(H // scale, W // scale[, C])`` in the input's integer dtype, or float64.
    """
    _check_image(image)
    _check_scale(scale)
    hr = modcrop(image, scale)
    blurred = gaussian_blur(hr, PSF_SIGMA * scale if sigma is None else sigma)
    if decimate == "box":
        lr = _block_mean(blurred, scale)
    elif decimate == "bicubic":
        lr = imresize(blurred, 1 / scale)  # float input: resized in float64, not rounded
    else:
        raise ValueError(f"decimate must be 'box' or 'bicubic', got {decimate!r}")
    return _to_dtype(lr, image.dtype)


def degrade(hr: np.ndarray, scale: int, degradation: str = "bicubic") -> np.ndarray:
    """The LR image of ``hr`` under a named degradation (see the module docstring).

    Args:
        hr: ``(H, W)`` or ``(H, W, C)`` image, normally uint8 and already modcropped.
        scale: Integer reduction factor.
        degradation: One of ``DEGRADATIONS``.

    Returns:
        The LR image, in ``hr``'s dtype for integer input.

    Raises:
        ValueError: an unknown degradation or a bad scale.
    """
    if degradation == "bicubic":
        return imresize(modcrop(hr, scale), 1 / scale)
    if degradation == "box":
        return box_downscale(hr, scale)
    if degradation == "psf":
        return psf_downscale(hr, scale)
    raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")


@dataclass(frozen=True)
class DegradationMix:
    """A random LR degradation per training patch (see the module docstring).

    Attributes:
        weights: ``(kind, weight)`` pairs over ``MIX_KINDS``; relative probabilities.
        psf_sigma: ``(lo, hi)``: the PSF sigma is drawn uniformly in it, times the scale.
        noise_std: Largest Gaussian noise std in 8-bit levels (0 = no noise); each patch draws
            its std uniformly in ``[0, noise_std]``, so clean patches stay in the mix.
        jpeg_quality: JPEG quality of the LR patch (1..100); 0 = no JPEG.
        jpeg_prob: Probability that a patch goes through JPEG when ``jpeg_quality`` > 0.
    """

    weights: tuple[tuple[str, float], ...] = (("bicubic", 1.0),)
    psf_sigma: tuple[float, float] = (0.3, 0.7)
    noise_std: float = 0.0
    jpeg_quality: int = 0
    jpeg_prob: float = 1.0

    def __post_init__(self) -> None:
        # Plain (str, float) pairs, so that configs compare and serialise alike.
        object.__setattr__(self, "weights", tuple((str(k), float(v)) for k, v in self.weights))
        kinds = [k for k, _ in self.weights]
        if not kinds or set(kinds) - set(MIX_KINDS) or len(set(kinds)) != len(kinds):
            raise ValueError(f"degradation kinds must be distinct names of {MIX_KINDS}, "
                             f"got {kinds}")
        w = np.array([float(v) for _, v in self.weights])
        if (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"degradation weights must be >= 0 with a positive sum: {w}")
        lo, hi = self.psf_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"psf_sigma must be (lo, hi) with 0 < lo <= hi, got {self.psf_sigma}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not 0 <= self.jpeg_quality <= 100 or not 0 <= self.jpeg_prob <= 1:
            raise ValueError(f"jpeg_quality must be in 0..100 and jpeg_prob in [0, 1], "
                             f"got {self.jpeg_quality}, {self.jpeg_prob}")

    @property
    def is_bicubic_only(self) -> bool:
        """True for the benchmark degradation alone (the sampler then draws nothing extra)."""
        only = all(k == "bicubic" for k, w in self.weights if w > 0)
        return only and self.noise_std == 0 and self.jpeg_quality == 0

    def margin(self, scale: int) -> int:
        """LR pixels of HR context kept around a patch so that its PSF (radius ceil(4 sigma))
        and bicubic support (2 LR pixels) see real neighbours, not padding."""
        return math.ceil(math.ceil(4 * self.psf_sigma[1] * scale) / scale) + 2

    def lr_patch(self, hr: np.ndarray, lr: np.ndarray, y: int, x: int, size: int, scale: int,
                 rng: np.random.Generator) -> np.ndarray:
        """The LR patch at LR ``(y, x)`` of side ``size`` for one draw of the mixture.

        Args:
            hr: The whole uint8 HR image ``(H, W, 3)`` (modcropped).
            lr: Its bicubic LR (used as is for the ``bicubic`` kind: the benchmark LR).
            y, x: Top-left LR pixel of the patch.
            size: LR patch side.
            scale: SR factor.
            rng: The generator of this step's degradations; five numbers are drawn per patch
                (plus the noise field when noise is on), whatever the kind.

        Returns:
            uint8 ``(size, size, 3)``.
        """
        names = [k for k, _ in self.weights]
        w = np.array([v for _, v in self.weights], dtype=np.float64)
        kind = names[int(rng.choice(len(names), p=w / w.sum()))]
        sigma = float(rng.uniform(*self.psf_sigma)) * scale
        noise_std = float(rng.uniform(0, self.noise_std))
        use_jpeg = bool(rng.random() < self.jpeg_prob) and self.jpeg_quality > 0
        rng.random()  # reserved, so that a new option does not shift the draws above
        if kind == "bicubic":
            out = lr[y : y + size, x : x + size].astype(np.float64)
        elif kind == "box":
            region = hr[y * scale : (y + size) * scale, x * scale : (x + size) * scale]
            out = _block_mean(region, scale)
        else:
            # The patch with context (clamped to the image, whose edges are then padded as
            # in a whole-image degradation), blurred and decimated in float, then cut out.
            m = self.margin(scale)
            y0, x0 = max(0, y - m), max(0, x - m)
            y1, x1 = min(lr.shape[0], y + size + m), min(lr.shape[1], x + size + m)
            region = hr[y0 * scale : y1 * scale, x0 * scale : x1 * scale]
            decimate = "box" if kind == "psf" else "bicubic"
            full = psf_downscale(region.astype(np.float64), scale, sigma=sigma,
                                 decimate=decimate)
            out = full[y - y0 : y - y0 + size, x - x0 : x - x0 + size]
        if self.noise_std > 0:
            out = out + rng.normal(0.0, noise_std, out.shape)
        out = _to_dtype(np.array(out, dtype=np.float64), np.dtype(np.uint8))
        return _jpeg(out, self.jpeg_quality) if use_jpeg else out


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """A Pillow JPEG round trip (default 4:2:0 chroma subsampling, as most encoders)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
