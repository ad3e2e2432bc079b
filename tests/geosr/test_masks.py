"""``geosr.masks``: filling invalid pixels before the model, upsampling masks."""

from __future__ import annotations

import numpy as np

from geosr.masks import fill_invalid, upsample_nearest


def test_fill_invalid_uses_nearest_valid_pixel_and_removes_nan() -> None:
    x = np.array([[[1.0, np.nan, np.nan, 4.0]], [[np.nan] * 4]], dtype=np.float32)
    valid = np.isfinite(x)
    f = fill_invalid(x, valid)
    assert np.isfinite(f).all()
    assert f[0, 0].tolist() == [1, 1, 4, 4]
    assert (f[1] == 0.5).all()
    assert upsample_nearest(np.eye(2, dtype=bool), 2).sum() == 8
