"""pipelines.eval_geotiff on small synthetic GeoTIFFs (nearest/bicubic only: fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import Affine, from_origin

from lgun.degrade import box_downscale
from lgun.metrics import psnr, ssim
from pipelines.eval_geotiff import central_window, main, make_pair, masked_ssim

SCALE = 4
TRANSFORM = from_origin(500000.0, 4200000.0, 0.5, 0.5)


def _write(path: Path, data: np.ndarray, **kw: object) -> Path:
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1],
               "width": data.shape[2], "dtype": data.dtype.name, "crs": "EPSG:32633",
               "transform": TRANSFORM, **kw}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if data.shape[0] in (3, 4):
            rgba = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)
            dst.colorinterp = rgba[: data.shape[0]]
    return path


@pytest.fixture
def rgb_tif(tmp_path: Path) -> Path:
    """A smooth 3-band uint8 RGB raster of awkward size (50 x 45, not multiples of 4)."""
    yy, xx = np.mgrid[0:50, 0:45] / 50
    bands = [120 + 90 * np.sin(6 * xx + 4 * yy + p) for p in (0.0, 1.0, 2.0)]
    return _write(tmp_path / "rgb.tif", np.stack(bands).round().astype(np.uint8))


def test_central_window() -> None:
    assert central_window(45, 50, 4, None) == (0, 1, 44, 48)
    assert central_window(1500, 1500, 4, 1024) == (238, 238, 1024, 1024)
    with pytest.raises(ValueError, match="smaller"):
        central_window(3, 10, 4, None)


def test_lr_is_the_block_mean_on_the_exact_coarse_grid(rgb_tif: Path, tmp_path: Path) -> None:
    pair = make_pair(rgb_tif, tmp_path, SCALE, max_side=40)
    assert pair.window == (2, 5, 40, 40) and pair.rgb == (1, 2, 3)
    with rasterio.open(pair.hr_path) as hr, rasterio.open(pair.lr_path) as lr:
        assert lr.shape == (10, 10) and lr.crs == hr.crs
        assert lr.transform.almost_equals(hr.transform @ Affine.scale(SCALE))
        assert hr.transform.almost_equals(TRANSFORM @ Affine.translation(2, 5))
        # GDAL's average on the aligned grid is lgun.degrade's box (mean, rounded half up).
        expected = box_downscale(np.moveaxis(hr.read(), 0, -1), SCALE)
        np.testing.assert_array_equal(np.moveaxis(lr.read(), 0, -1), expected)


def test_cli_scores_nearest_exactly(rgb_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    args = [str(rgb_tif), "--scale", "4", "--baselines", "nearest,bicubic",
            "--workdir", str(tmp_path / "work"), "--json", str(out)]
    assert main(args) == 0
    (result,) = json.loads(out.read_text())
    assert result["window"] == [0, 1, 44, 48] and result["rgb"] == [1, 2, 3]
    nearest, bicubic = result["models"]
    assert nearest["model"] == "nearest" and bicubic["model"] == "bicubic"
    with rasterio.open(tmp_path / "work" / "rgb_lr_x4.tif") as lr_ds:
        lr = np.moveaxis(lr_ds.read(), 0, -1)
    with rasterio.open(tmp_path / "work" / "rgb_hr.tif") as hr_ds:
        hr = np.moveaxis(hr_ds.read(), 0, -1)
    sr = lr.repeat(SCALE, axis=0).repeat(SCALE, axis=1)  # the nearest oracle
    for band, row in enumerate(nearest["per_band"]):
        assert row["psnr"] == pytest.approx(
            psnr(hr[..., band], sr[..., band], crop_border=SCALE, y_only=False))
        assert row["ssim"] == pytest.approx(
            ssim(hr[..., band], sr[..., band], crop_border=SCALE, y_only=False))
    assert nearest["y_psnr"] == pytest.approx(psnr(hr, sr, crop_border=SCALE))
    assert nearest["y_ssim"] == pytest.approx(ssim(hr, sr, crop_border=SCALE))
    assert nearest["valid_pixels"] == (48 - 8) * (44 - 8)
    assert bicubic["psnr"] > nearest["psnr"] and bicubic["y_ssim"] > nearest["y_ssim"]


def test_uint16_nodata_is_excluded_and_range_from_data(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:48, 0:48]
    band = (1000 + 20 * xx + 15 * yy).astype(np.uint16)
    band[:, :16] = 0  # nodata strip
    src = _write(tmp_path / "u16.tif", band[None], nodata=0)
    out = tmp_path / "u16.json"
    assert main([str(src), "--scale", "4", "--baselines", "nearest",
                 "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    (row,) = result["models"]
    assert result["rgb"] is None and "y_psnr" not in row
    assert row["range_source"] == "data"
    # Columns 16..43 and rows 4..43 are valid after the 4-pixel border crop.
    assert row["valid_pixels"] == (48 - 16 - 4) * (48 - 8)
    valid = band[4:-4, 4:-4] > 0
    assert row["per_band"][0]["data_range"] == float(
        band[4:-4, 4:-4][valid].max() - band[4:-4, 4:-4][valid].min())
    assert np.isfinite(row["psnr"]) and 0 < row["ssim"] <= 1


def test_alpha_becomes_the_mask_and_is_not_scored(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:40, 0:40]
    rgb = np.stack([100 + 2 * xx, 80 + 3 * yy, 60 + xx + yy]).astype(np.uint8)
    alpha = np.full((1, 40, 40), 255, dtype=np.uint8)
    alpha[0, 20:] = 0  # bottom half transparent
    src = _write(tmp_path / "rgba.tif", np.concatenate([rgb, alpha]))
    out = tmp_path / "rgba.json"
    assert main([str(src), "--scale", "4", "--baselines", "nearest",
                 "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    (row,) = result["models"]
    assert result["bands"] == 3 and len(row["per_band"]) == 3 and result["rgb"] == [1, 2, 3]
    assert row["valid_pixels"] == (20 - 4) * (40 - 8)  # rows 4..19, columns 4..35


def test_masked_ssim_equals_lgun_ssim_when_all_valid() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (30, 25)).astype(np.uint8)
    b = np.clip(a + rng.normal(0, 10, a.shape), 0, 255).astype(np.uint8)
    full = np.ones(a.shape, dtype=bool)
    assert masked_ssim(a, b, full, 255.0) == pytest.approx(
        ssim(a, b, crop_border=0, y_only=False), abs=1e-12)
    # Windows touching an invalid pixel are left out: corrupting the invalid part changes
    # nothing.
    part = full.copy()
    part[:, :10] = False
    c = b.copy()
    c[:, :10] = 0
    assert masked_ssim(a, b, part, 255.0) == masked_ssim(a, c, part, 255.0)
