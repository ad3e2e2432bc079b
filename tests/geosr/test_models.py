"""``geosr.models``: the Upscaler protocol, the classical upscalers, the default model and
``describe_model`` (what a model needs, read before anything is loaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geosr.errors import OptionError
from geosr.models import (
    ClassicalUpscaler,
    ModelInfo,
    NearestUpscaler,
    Upscaler,
    default_model_spec,
    describe_model,
)


def test_nearest_upscaler_is_exact_and_a_protocol_member() -> None:
    m = NearestUpscaler(3)
    assert isinstance(m, Upscaler)
    x = np.random.default_rng(0).random((2, 5, 4, 3)).astype(np.float32)
    y = m(x)
    assert y.shape == (2, 5, 12, 9)
    np.testing.assert_array_equal(y[:, :, ::3, ::3], x)


@pytest.mark.parametrize("method", ["bicubic", "lanczos"])
def test_classical_upscaler_grid_and_constants(method: str) -> None:
    m = ClassicalUpscaler(2, method)
    assert isinstance(m, Upscaler)
    const = np.full((1, 2, 9, 7), 0.25, np.float32)
    np.testing.assert_allclose(m(const), 0.25, atol=1e-6)
    # A linear ramp stays linear on the pixel-centre grid: out[j] = in((j + 0.5)/s - 0.5).
    x = np.tile(np.arange(16, dtype=np.float32), (1, 1, 16, 1))
    y = m(x)[0, 0, 8]
    j = np.arange(8, 24)
    err = y[8:24] - ((j + 0.5) / 2 - 0.5)
    assert abs(err.mean()) < 1e-4  # no half-pixel shift: same grid as GDAL
    # Keys cubic (a = -0.5) reproduces linear functions exactly; Lanczos nearly.
    assert np.abs(err).max() < (1e-3 if method == "bicubic" else 0.03)


def test_default_model_spec_prefers_shipped_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import lgun

    for info in lgun.PRETRAINED.values():
        if info.available:
            break
    else:
        spec, warning = default_model_spec(4)
        assert spec == "bicubic" and "falling back to bicubic" in warning
    # Pretend weights are installed: the aerial ones win over the natural ones.
    monkeypatch.setattr(type(lgun.PRETRAINED["lgun-x4"]), "available", property(lambda s: True))
    assert default_model_spec(4) == ("lgun-aid-x4", None)


# --- describe_model ------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["nearest", "bicubic", "lanczos"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_describe_weight_free_methods(spec: str, scale: int) -> None:
    info = describe_model(spec, scale)
    assert info == ModelInfo(spec, neural=False, scale=None, in_channels=None)
    assert info.size_multiple == 1 and info.supports_half and info.overlap_hint is None


def test_describe_shipped_lgun_reads_the_table() -> None:
    info = describe_model("lgun-x4", 4)
    assert info.name == "lgun-x4" and info.neural
    assert info.scale == 4 and info.in_channels == 3
    assert info.size_multiple >= 1


def test_describe_shipped_lgun_does_not_import_torch() -> None:
    code = ("import sys; from geosr.models import describe_model; "
            "info = describe_model('lgun-x4', 4); "
            "assert info.neural and info.scale == 4 and info.in_channels == 3, info; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_describe_an_upscaler_object() -> None:
    assert describe_model(NearestUpscaler(3), 3) == ModelInfo("nearest", False, 3, None)
    info = describe_model(ClassicalUpscaler(2, "lanczos"), 2)
    assert info.name == "lanczos" and not info.neural and info.scale == 2


def test_describe_weights_file_reads_its_json(tmp_path: Path) -> None:
    import lgun

    w = tmp_path / "w.safetensors"
    lgun.save_weights(lgun.LGUN(scale=2, channels=16, num_blocks=2, num_heads=4), w)
    info = describe_model(str(w), 2)
    assert info.neural and info.scale == 2 and info.in_channels == 3


def test_describe_default_is_a_known_model() -> None:
    spec, _ = default_model_spec(4)
    assert describe_model(None, 4) == describe_model(spec, 4)


@pytest.mark.parametrize(("spec", "match"), [
    ("sharpen", "unknown model 'sharpen'"),
    ("nope.safetensors", "not found"),
])
def test_describe_bad_specs_are_option_errors(tmp_path: Path, spec: str, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        describe_model(spec, 2)
    with pytest.raises(OptionError, match="not found"):
        describe_model(str(tmp_path / "missing" / "w.safetensors"), 2)
