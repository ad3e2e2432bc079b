"""``geosr.qa``: block means and the seam score (the end-to-end ``qa_report`` is exercised in
test_upscale.py and test_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest

from geosr.qa import block_mean, seam_score


def test_block_mean_and_seam_score() -> None:
    x = np.arange(16, dtype=float).reshape(1, 4, 4)
    m, ok = block_mean(x, np.ones_like(x, bool), 2)
    np.testing.assert_allclose(m[0], [[2.5, 4.5], [10.5, 12.5]])
    assert ok.all()
    # A step at column 8 of otherwise smooth noise is a seam there.
    rng = np.random.default_rng(0)
    img = rng.random((1, 32, 32)) * 0.1
    assert seam_score(img, (), (8,), 2) == pytest.approx(1.0, abs=0.6)
    img[:, :, 8:] += 1.0
    assert seam_score(img, (), (8,), 2) > 5


def test_clipping_is_judged_beyond_the_source_saturation() -> None:
    from geosr.qa import QAReport

    def report(clipped: float, saturated: float) -> QAReport:
        return QAReport(src="s.tif", dst="d.tif", scale=4, bands=[1], mae=[0.5],
                        mae_physical=[0.5], spectral_angle_deg=None, seam_score=1.0,
                        clipped=[1], nodata_fraction_src=0.0, nodata_fraction_dst=0.0,
                        model="m", mae_percent=[0.2], clipped_percent=clipped,
                        saturated_percent=saturated).judge()

    assert report(10.5, 9.9).verdict == "pass"  # a saturated source clips where it saturates
    assert report(5.0, 0.0).verdict == "warn"
    failed = report(12.0, 0.5)
    assert failed.verdict == "fail" and "clipped_excess_percent" in failed.reasons[0]
