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
