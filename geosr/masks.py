"""Validity masks: which pixels hold data, how they are filled, how the mask is carried.

GDAL describes invalid pixels in three ways (``rasterio.enums.MaskFlags``): a
nodata value, a per-dataset mask (internal ``.msk`` band) and an alpha band. geosr
reads the validity of every selected band in a window (NaN and infinities are
always invalid too), fills invalid pixels with their nearest valid neighbour
before inference (so one NaN never poisons a tile), upsamples the mask with
nearest neighbour and re-applies it in the form the input used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window

#: How the validity of the input is encoded (and will be in the output).
MaskKind = Literal["none", "nodata", "mask", "alpha"]


@dataclass(frozen=True)
class MaskInfo:
    """How a raster marks invalid pixels.

    Attributes:
        kind: ``none``, ``nodata``, ``mask`` (per-dataset mask band) or ``alpha``.
        nodata: The nodata value (may be NaN), when ``kind == "nodata"``.
        alpha_band: 1-based index of the alpha band, when there is one.
    """

    kind: MaskKind
    nodata: float | None = None
    alpha_band: int | None = None

    @property
    def nodata_is_nan(self) -> bool:
        return self.nodata is not None and math.isnan(self.nodata)


def alpha_band_index(src: Any) -> int | None:
    """1-based index of the band whose colour interpretation is alpha, if any."""
    for i, ci in enumerate(src.colorinterp, start=1):
        if ci == ColorInterp.alpha:
            return i
    return None


def describe_masks(src: Any, bands: tuple[int, ...]) -> MaskInfo:
    """How ``src`` encodes validity for the selected ``bands``."""
    alpha = alpha_band_index(src)
    flags = set(src.mask_flag_enums[bands[0] - 1]) if bands else set()
    if alpha is not None or MaskFlags.alpha in flags:
        return MaskInfo("alpha", alpha_band=alpha)
    if MaskFlags.nodata in flags and src.nodata is not None:
        return MaskInfo("nodata", nodata=float(src.nodata))
    if MaskFlags.per_dataset in flags:
        return MaskInfo("mask")
    return MaskInfo("none")


def valid_from_data(data: np.ndarray, info: MaskInfo) -> np.ndarray:
    """Validity implied by the values alone: nodata, NaN and +-inf are invalid.

    Array-agnostic (numpy ufuncs and ``ones_like`` dispatch): a dask array gives a lazy
    dask array, which the xarray accessor uses for its radiometry reduction.
    """
    if np.issubdtype(data.dtype, np.floating):
        valid = np.isfinite(data)
    else:
        valid = np.ones_like(data, dtype=bool)
    if info.kind == "nodata" and info.nodata is not None and not info.nodata_is_nan:
        valid = valid & (data != np.asarray(info.nodata).astype(data.dtype))
    return valid


def read_valid(src: Any, bands: tuple[int, ...], window: Window, data: np.ndarray,
               info: MaskInfo) -> np.ndarray:
    """Validity (C, h, w) of ``data`` read from ``bands`` in ``window``."""
    valid = valid_from_data(data, info)
    if info.kind in ("mask", "alpha"):
        m = src.read_masks(bands[0], window=window) > 0
        valid &= m[None]
    return valid


def fill_invalid(x: np.ndarray, valid: np.ndarray, fallback: float = 0.5) -> np.ndarray:
    """Replace invalid pixels of each band by the nearest valid pixel of that band.

    Args:
        x: (C, h, w) float array.
        valid: (C, h, w) bool array.
        fallback: Value for bands without any valid pixel.

    Returns:
        A new array with every pixel finite.
    """
    from scipy import ndimage

    out = np.array(x, dtype=np.float32, copy=True)
    for c in range(out.shape[0]):
        v = valid[c]
        if v.all():
            continue
        if not v.any():
            out[c] = fallback
            continue
        # Indices of the nearest valid pixel for every pixel (EDT on the invalid set).
        idx = ndimage.distance_transform_edt(~v, return_distances=False, return_indices=True)
        out[c] = out[c][idx[0], idx[1]]
    return out


def upsample_nearest(a: np.ndarray, scale: int) -> np.ndarray:
    """Repeat every pixel of the last two axes into an s x s block."""
    return a.repeat(scale, axis=-2).repeat(scale, axis=-1)
