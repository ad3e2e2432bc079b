"""``geosr`` itself: the lazily loaded top-level names."""

from __future__ import annotations

import subprocess
import sys

import pytest

import geosr


def test_lazy_exports_are_the_real_objects() -> None:
    import geosr.api
    import geosr.batch
    import geosr.errors
    import geosr.models
    import geosr.options

    assert geosr.upscale is geosr.api.upscale
    assert geosr.describe is geosr.api.describe
    assert geosr.run_batch is geosr.batch.run_batch
    assert geosr.load_model is geosr.models.load_model
    assert geosr.RunOptions is geosr.options.RunOptions
    assert geosr.GeosrError is geosr.errors.GeosrError
    assert geosr.WeightsError is geosr.errors.WeightsError
    assert set(geosr.__all__) <= set(dir(geosr))
    assert sorted(geosr.__all__) == ["GeosrError", "RunOptions", "WeightsError", "describe",
                                     "load_model", "run_batch", "upscale"]


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'sharpen'"):
        geosr.sharpen  # noqa: B018
    assert not hasattr(geosr, "sharpen")


def test_import_geosr_loads_neither_torch_nor_the_pipeline() -> None:
    code = ("import sys, geosr; "
            "assert callable(geosr.GeosrError); "
            "print(' '.join(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'lgun') or m in ('geosr.api', 'geosr.batch'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []
