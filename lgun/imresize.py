"""MATLAB-compatible bicubic ``imresize`` (numpy only).

Why hand-written: the SR benchmarks define their low-resolution inputs as the output of MATLAB's
``imresize(hr, 1/scale, 'bicubic')``, and published PSNR/SSIM depend on it. PIL's and OpenCV's
bicubic use a = -0.75 (OpenCV) or no/other antialiasing and other pixel-centre conventions, and
``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` uses a different support and
rounds once at the end; none reproduces MATLAB's files. This module transcribes MATLAB's
algorithm (``contributions()`` + one separable pass per axis, smaller scale first, rounding to the
integer type after each pass) and reproduces the Set5 ``LR_bicubic`` files bit-exactly.

Each pass is a gather: output pixel ``i`` along an axis is ``sum_k w[i, k] * x[idx[i, k]]``,
summed in increasing ``k`` like MATLAB's ``imresizemex``, so there is no dense weight matrix and
the cost is ``taps x output size`` (18 taps for x1/4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bicubic_downscale", "contributions", "cubic", "imresize", "modcrop"]

#: Support of the (unscaled) bicubic kernel, in input pixels.
_KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, exactly as MATLAB's ``cubic``.

    Args:
        x: Distances in pixels (any shape, float64).

    Returns:
        Kernel values, same shape as ``x``.
    """
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


def contributions(
    in_length: int, out_length: int, scale: float, *, antialiasing: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and source indices of one resize pass, as MATLAB's ``contributions``.

    Args:
        in_length: Input length along the axis.
        out_length: Output length along the axis.
        scale: Output / input scale factor along the axis.
        antialiasing: Widen the kernel by ``1/scale`` when downscaling (MATLAB's default for
            bicubic), which low-pass filters before decimation.

    Returns:
        ``(weights, indices)``, both ``(out_length, taps)``: float64 weights whose rows sum to 1,
        and 0-based int64 input indices with out-of-range taps mirrored (symmetric padding).
    """
    if scale < 1 and antialiasing:
        kernel_width = _KERNEL_WIDTH / scale

        def h(x: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * x)
    else:
        kernel_width = _KERNEL_WIDTH
        h = cubic
    # 1-based output coordinates mapped to (1-based) input space; centres of pixels align.
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = h(u[:, None] - indices)
    # Sequential row sum (numpy's pairwise sum would reorder the additions).
    total = np.zeros(out_length)
    for k in range(taps):
        total += weights[:, k]
    weights = weights / total[:, None]
    # Symmetric padding: ..., 2, 1 | 1, 2, ..., n | n, n-1, ... (0-based here).
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (MATLAB ``round``) exactly, overwriting ``x``.

    ``floor(x + 0.5)`` would be off by one for the double just below 0.5, hence the detour.
    """
    frac = np.abs(x)
    whole = np.floor(frac)
    frac -= whole
    whole += frac >= 0.5
    return np.copysign(whole, x, out=x)


def _resize_axis(x: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """One separable pass along ``axis``; float64 result, or ``x.dtype`` for integer input.

    Integer results are rounded and saturated here, after every pass, as MATLAB does. The
    gather reads ``x`` in its own dtype (a uint8 gather moves 8x less memory) and the products
    are float64, so the values are those of a float64 computation.
    """
    bshape = [1] * x.ndim
    bshape[axis] = weights.shape[0]
    out_shape = list(x.shape)
    out_shape[axis] = weights.shape[0]
    out = np.zeros(out_shape)
    for k in range(weights.shape[1]):  # in tap order, as imresizemex accumulates
        out += weights[:, k].reshape(bshape) * np.take(x, indices[:, k], axis=axis)
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        return np.clip(_round_half_away(out), info.min, info.max).astype(x.dtype)
    return out


def _resize_axes(
    image: np.ndarray,
    axes: tuple[int, int],
    out_shape: tuple[int, int],
    scales: tuple[float, float],
) -> np.ndarray:
    """Resize ``image`` along two axes; integer dtypes come back in their dtype, floats as
    float64."""
    x = image
    # MATLAB resizes the dimension with the smaller scale first (stable sort: rows on ties),
    # which keeps the intermediate image small when downscaling.
    for i in np.argsort(scales, kind="stable"):
        axis = axes[i]
        weights, indices = contributions(x.shape[axis], out_shape[i], scales[i])
        x = _resize_axis(x, axis, weights, indices)
    return x if np.issubdtype(x.dtype, np.integer) else x.astype(np.float64, copy=False)


def _check_dtype(image: np.ndarray) -> None:
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"imresize needs an integer or float image, got dtype {image.dtype}")


def imresize(
    image: np.ndarray,
    scale: float | None = None,
    *,
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Bicubic resize exactly as MATLAB's ``imresize(image, scale)`` / ``(image, [h w])``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array. Integer images (uint8, uint16, ...) are
            rounded half away from zero and saturated after each axis pass, as MATLAB does;
            float images are resized in float64 without rounding or clipping.
        scale: Factor for both axes; the output size is ``ceil(scale * size)``.
        output_shape: ``(out_h, out_w)`` instead of ``scale``; each axis then uses its own
            factor ``out / in``.

    Returns:
        The resized image: same dtype for integer input, float64 for float input.

    Raises:
        ValueError: both or neither of ``scale`` / ``output_shape``, a non-positive size or
            scale, or an image that is not 2-D or 3-D.
        TypeError: a non-numeric dtype.

    Example:
        >>> lr = imresize(modcrop(hr, 4), 1 / 4)  # the LR of the SR benchmarks
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"imresize needs an (H, W) or (H, W, C) image, got shape {image.shape}")
    _check_dtype(image)
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot resize an empty image of shape {image.shape}")
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        out_shape = (math.ceil(scale * h), math.ceil(scale * w))
        scales = (float(scale), float(scale))
    else:
        out_h, out_w = (int(v) for v in output_shape)  # type: ignore[union-attr]
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"output_shape must be positive, got {output_shape}")
        out_shape = (out_h, out_w)
        scales = (out_h / h, out_w / w)
    return _resize_axes(image, (0, 1), out_shape, scales)


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so that height and width are multiples of ``scale``.

    Args:
        image: ``(H, W, ...)`` array.
        scale: Integer SR factor.

    Returns:
        A view of ``image`` of shape ``(H - H % scale, W - W % scale, ...)``.
    """
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """Benchmark LR from HR: ``imresize(modcrop(hr, scale), 1 / scale)``, batched.

    Torch-free so that data loaders can build training pairs in worker processes.

    Args:
        hr: Integer (normally uint8) images, ``(H, W)``, ``(H, W, C)`` or a batch
            ``(N, H, W, C)`` of equal size.
        scale: Integer SR factor.

    Returns:
        The LR image(s), same dtype, ``(H // scale, W // scale, ...)`` per image.
    """
    if not np.issubdtype(hr.dtype, np.integer):
        raise TypeError(f"bicubic_downscale needs integer (uint8) images, got {hr.dtype}")
    if hr.ndim == 4:
        axes: tuple[int, int] = (1, 2)
        hr = hr[:, : hr.shape[1] - hr.shape[1] % scale, : hr.shape[2] - hr.shape[2] % scale]
        size: Sequence[int] = hr.shape[1:3]
    elif hr.ndim in (2, 3):
        axes = (0, 1)
        hr = modcrop(hr, scale)
        size = hr.shape[:2]
    else:
        raise ValueError(f"expected (H, W), (H, W, C) or (N, H, W, C), got shape {hr.shape}")
    if size[0] < scale or size[1] < scale:
        raise ValueError(f"image of size {tuple(size)} is smaller than scale {scale}")
    out_shape = (size[0] // scale, size[1] // scale)
    return _resize_axes(hr, axes, out_shape, (1 / scale, 1 / scale))
