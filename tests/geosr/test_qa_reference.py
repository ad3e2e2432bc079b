"""``geosr qa --uncertainty`` and ``--reference``: disagreement share, PSNR/SSIM, detail split."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geosr.cli import run
from geosr.errors import OptionError
from geosr.qa import qa_report
from geosr.qa_reference import (
    CORRECT,
    HALLUCINATED,
    NO_DETAIL,
    OMITTED,
    classify_detail,
    parse_threshold,
)
from geosr.testing import write_raster

Raster = Callable[..., Path]


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("geosr: error: "), err
    return lines[0]


def test_split_of_hand_built_arrays() -> None:
    rng = np.random.default_rng(0)
    hr = rng.uniform(50, 200, (2, 16, 16))
    bicubic = hr + rng.choice([-20.0, 20.0], hr.shape)  # smooth guess: detail missing
    valid = np.ones(hr.shape, bool)
    assert (classify_detail(hr, bicubic, hr, valid, 1.0) == CORRECT).all()  # SR == HR
    assert (classify_detail(bicubic, bicubic, hr, valid, 1.0) == OMITTED).all()  # SR == LR up
    # Detail where the reference has none (bicubic already equals it): invented.
    invented = hr + rng.choice([-15.0, 15.0], hr.shape)
    assert (classify_detail(invented, hr, hr, valid, 1.0) == HALLUCINATED).all()
    # Detail pushed away from the reference by as much as bicubic misses it: invented too.
    assert (classify_detail(2 * bicubic - hr, bicubic, hr, valid, 1.0) == HALLUCINATED).all()
    # Most of the way to the reference: correct; a little of the way: omitted.
    assert (classify_detail(hr + 0.2 * (bicubic - hr), bicubic, hr, valid, 1.0)
            == CORRECT).all()
    assert (classify_detail(hr + 0.8 * (bicubic - hr), bicubic, hr, valid, 1.0)
            == OMITTED).all()
    # Nothing at stake (all within the tolerance) or invalid: no class.
    assert (classify_detail(hr + 0.5, hr, hr + 0.2, valid, 1.0) == NO_DETAIL).all()
    valid[0] = False
    cls = classify_detail(hr, bicubic, hr, valid, np.array([[[1.0]], [[1.0]]]))
    assert (cls[0] == NO_DETAIL).all() and (cls[1] == CORRECT).all()


def test_parse_threshold() -> None:
    assert parse_threshold("2%") == (2.0, True)
    assert parse_threshold(" 5 ") == (5.0, False)
    assert parse_threshold(0.5) == (0.5, False)
    for bad in ("abc", "-1", "nan%", "%"):
        with pytest.raises(OptionError, match="uncertainty-threshold"):
            parse_threshold(bad)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A textured 8-bit reference and its 2x2 area average (with a nodata hole)."""
    rng = np.random.default_rng(1)
    base = np.kron(rng.uniform(40, 210, (3, 10, 11)), np.ones((4, 4)))
    hr = np.clip(base + rng.normal(0, 12, base.shape), 1, 255).round().astype(np.uint8)
    hr_path = write_raster(tmp_path / "hr.tif", hr,
                           transform=Affine(15.0, 0, 500000.0, 0, -15.0, 4000000.0))
    lr = hr.astype(float).reshape(3, 20, 2, 22, 2).mean(axis=(2, 4)).round().astype(np.uint8)
    lr[:, 2:5, 3:6] = 0
    return write_raster(tmp_path / "lr.tif", lr, nodata=0), hr_path


def test_reference_metrics_of_bicubic_and_of_the_reference_itself(
        pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, hr = pair
    dst = tmp_path / "bic.tif"
    assert run(["upscale", str(src), "-o", str(dst), "-s", "2", "-m", "bicubic", "-q",
                "--tile-size", "24", "--overlap", "4"]) == 0
    # The output is the bicubic baseline (up to float rounding): no detail added.
    ref = qa_report(src, dst, reference=hr, strip_rows=7).reference  # several strips
    assert ref is not None and ref.data_range == [255.0] * 3
    np.testing.assert_allclose(ref.psnr, ref.psnr_bicubic, atol=0.01)
    np.testing.assert_allclose(ref.ssim, ref.ssim_bicubic, atol=1e-3)
    assert all(15 < p < 40 for p in ref.psnr) and all(0 < s < 1 for s in ref.ssim)
    assert ref.overall["omitted_percent"] > 99 and ref.overall["detail_percent"] > 50
    whole = qa_report(src, dst, reference=hr, strip_rows=1000).reference
    assert whole is not None  # streaming by strips changes nothing
    np.testing.assert_allclose(whole.psnr, ref.psnr, rtol=1e-12)
    np.testing.assert_allclose(whole.ssim, ref.ssim, rtol=1e-12)
    assert whole.overall == pytest.approx(ref.overall)

    # Against itself as the reference: perfect, every departure from bicubic correct. The
    # reference never enters the verdict (here a warning on LR consistency, or none).
    assert run(["qa", str(src), str(dst), "--reference", str(dst), "--json"]) in (0, 3)
    report = json.loads(capsys.readouterr().out)
    assert not any("psnr" in r or "ssim" in r for r in report["reasons"])
    d = report["reference"]
    assert d["psnr"] == [None] * 3 and d["ssim"] == pytest.approx([1.0] * 3)
    assert d["overall"]["hallucinated_percent"] in (0.0, None)  # None: nothing at stake
    assert run(["qa", str(src), str(dst), "--reference", str(hr)]) in (0, 3)
    text = capsys.readouterr().out
    assert "PSNR vs ref:" in text and "(bicubic " in text and "omitted" in text


def test_reference_on_another_grid_is_one_error_line(
        pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, hr = pair
    dst = tmp_path / "o.tif"
    assert run(["upscale", str(src), "-o", str(dst), "-s", "2", "-m", "nearest", "-q"]) == 0
    assert run(["qa", str(src), str(dst), "--reference", str(src)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "not on the output grid" in line and "44 x 40" in line
    with rasterio.open(hr) as d:
        shifted = write_raster(tmp_path / "shifted.tif", d.read(),
                               transform=d.transform @ Affine.translation(1, 0))
    assert run(["qa", str(src), str(dst), "--reference", str(shifted)]) == 1
    assert "not on the output grid" in _one_error_line(capsys.readouterr().err)
    assert run(["qa", str(src), str(dst), "--reference", str(tmp_path / "missing.tif")]) == 1
    _one_error_line(capsys.readouterr().err)


def test_uncertainty_share_and_verdict(pair: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    src, _ = pair
    dst, unc = tmp_path / "o.tif", tmp_path / "u.tif"
    assert run(["upscale", str(src), "-o", str(dst), "-s", "2", "-m", "nearest", "--ensemble",
                "--uncertainty", str(unc), "-q"]) == 0
    report = qa_report(src, dst, uncertainty=unc)  # nearest: the 8 views agree everywhere
    assert report.uncertainty is not None and report.uncertainty.overall_percent == 0.0
    assert report.uncertainty.threshold_units == pytest.approx([5.1] * 3)  # 2% of 0..255
    assert report.verdict == "pass"

    # A map with known disagreement: band 1 has 10 units on 8 x 10 output pixels.
    edited = tmp_path / "u2.tif"
    shutil.copy(unc, edited)
    with rasterio.open(edited, "r+") as u:
        band = u.read(1)
        band[20:28, 30:40] = 10.0
        u.write(band, 1)
        valid = int(np.isfinite(band).sum())
    report = qa_report(src, dst, uncertainty=edited)
    share = report.uncertainty
    assert share is not None
    assert share.percent == pytest.approx([100 * 80 / valid, 0.0, 0.0])
    assert share.overall_percent == pytest.approx(100 * 80 / (3 * valid))
    assert report.verdict == "pass"  # 1.2% of the pixels: below the warning level
    low = qa_report(src, dst, uncertainty=edited, uncertainty_threshold="20").uncertainty
    assert low is not None and low.overall_percent == 0.0  # 10 units is below 20

    # Disagreement everywhere can warn (exit 3), never fail.
    with rasterio.open(edited, "r+") as u:
        u.write(np.where(np.isfinite(u.read()), 50.0, np.nan).astype(np.float32))
    assert run(["qa", str(src), str(dst), "--uncertainty", str(edited), "--json"]) == 3
    captured = capsys.readouterr()
    d = json.loads(captured.out)
    assert d["verdict"] == "warn" and d["uncertainty"]["overall_percent"] == 100.0
    assert "uncertain_percent" in d["reasons"][0] and "geosr: warning:" in captured.err
    assert run(["qa", str(src), str(dst), "--uncertainty", str(edited),
                "--uncertainty-threshold", "25%"]) == 0  # 50 < 63.75
    assert "uncertainty:" in capsys.readouterr().out


def test_uncertainty_map_of_another_output_is_refused(
        pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, hr = pair
    for model in ("nearest", "bicubic"):
        args = ["--ensemble", "--uncertainty", str(tmp_path / f"u_{model}.tif")]
        assert run(["upscale", str(src), "-o", str(tmp_path / f"{model}.tif"), "-s", "2",
                    "-m", model, "-q", *args]) == 0
    dst = tmp_path / "nearest.tif"
    cases = {str(tmp_path / "u_bicubic.tif"): "GEOSR_MODEL",  # made with another run
             str(hr): "GEOSR_BAND_MEANING",  # not an uncertainty map
             str(src): "not on the output grid"}
    for path, words in cases.items():
        assert run(["qa", str(src), str(dst), "--uncertainty", path]) == 1
        assert words in _one_error_line(capsys.readouterr().err)
    assert run(["qa", str(src), str(dst), "--uncertainty-threshold", "lots"]) == 1
    assert "--uncertainty-threshold" in _one_error_line(capsys.readouterr().err)
