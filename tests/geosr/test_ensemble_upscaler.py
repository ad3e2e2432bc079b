"""geosr.ensemble: the 8-view self-ensemble as an Upscaler (numpy and torch paths)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

from geosr.ensemble import NUM_VIEWS, EnsembleUpscaler, inverse_view, view
from geosr.models import NearestUpscaler, Upscaler
from geosr.testing import tiny_lgun


@dataclass(frozen=True)
class CountingNearest(NearestUpscaler):
    """Nearest replication that records the shape of every call."""

    calls: list[tuple[int, ...]] = field(default_factory=list, compare=False)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape)
        return super().__call__(batch)


@dataclass(frozen=True)
class Skewed(NearestUpscaler):
    """Nearest plus a ramp along the width: not equivariant, so the views disagree."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = super().__call__(batch)
        return out + np.linspace(0, 0.1, out.shape[-1], dtype=np.float32)


def _batch(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_protocol_and_descriptor() -> None:
    inner = NearestUpscaler(3)
    ens = EnsembleUpscaler(inner)
    assert isinstance(ens, Upscaler)
    assert ens.name == "nearest+ensemble" and ens.scale == 3
    assert (ens.in_channels, ens.size_multiple, ens.supports_half, ens.sha256) == (
        inner.in_channels, inner.size_multiple, inner.supports_half, inner.sha256)
    assert ens.provenance.startswith("8-view self-ensemble")
    assert inner.provenance in ens.provenance
    with pytest.raises(ValueError, match="max_batch"):
        EnsembleUpscaler(inner, max_batch=0)


@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (1, 4, 5, 9)])
def test_views_invert(shape: tuple[int, ...]) -> None:
    x = _batch(shape)
    for i in range(NUM_VIEWS):
        assert np.array_equal(inverse_view(view(x, i), i), x)


@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (3, 1, 5, 9)])
def test_nearest_ensemble_is_exact(shape: tuple[int, ...]) -> None:
    inner = NearestUpscaler(2)
    x = _batch(shape, 1)
    mean, std = EnsembleUpscaler(inner).predict_with_spread(x)
    assert mean.dtype == std.dtype == np.float32
    assert np.array_equal(mean, inner(x))
    assert np.array_equal(std, np.zeros_like(std))
    assert np.array_equal(EnsembleUpscaler(inner)(x), mean)


def test_numpy_path_batches_and_matches_stacked_views() -> None:
    x = _batch((2, 3, 4, 6), 2)
    inner = Skewed(2)
    preds = np.stack([inverse_view(inner(np.ascontiguousarray(view(x, i))), i)
                      for i in range(NUM_VIEWS)])
    ref_mean, ref_std = EnsembleUpscaler(inner, max_batch=1).predict_with_spread(x)
    np.testing.assert_allclose(ref_mean, preds.mean(0), atol=1e-6)
    np.testing.assert_allclose(ref_std, preds.std(0), atol=1e-6)
    assert ref_std.max() > 0.01
    for max_batch in (3, 8, 100):
        mean, std = EnsembleUpscaler(inner, max_batch=max_batch).predict_with_spread(x)
        assert np.array_equal(mean, ref_mean) and np.array_equal(std, ref_std)
    counting = CountingNearest(2)
    EnsembleUpscaler(counting)(x)
    assert counting.calls == [(8, 3, 4, 6), (8, 3, 6, 4)]  # 2 tiles x 4 views per shape


def test_tiny_lgun_ensemble() -> None:
    import torch

    model = tiny_lgun(scale=2)
    x = _batch((2, 3, 8, 8), 3)
    single = model(x)
    calls: list[tuple[int, ...]] = []
    forward = model.module.forward
    model.module.forward = lambda t: calls.append(tuple(t.shape)) or forward(t)
    ens = EnsembleUpscaler(model)
    mean, std = ens.predict_with_spread(x)
    assert mean.shape == std.shape == single.shape == (2, 3, 16, 16)
    assert calls == [(8, 3, 8, 8), (8, 3, 8, 8)]  # 16 views in 2 batched calls
    assert np.abs(mean - single).max() > 1e-4  # a random network is not equivariant
    assert std.mean() > 0
    assert np.allclose(ens(x), mean)
    assert ens.name == "tiny-lgun+ensemble" and ens.scale == 2
    assert ens.model_seconds > 0
    # The torch path agrees with the numpy path on the same model.
    with torch.inference_mode():
        np_mean, np_std = EnsembleUpscaler(_AsNumpy(model)).predict_with_spread(x)
    np.testing.assert_allclose(np_mean, mean, atol=1e-5)
    np.testing.assert_allclose(np_std, std, atol=1e-5)


@dataclass
class _AsNumpy:
    """An Upscaler hiding that it is an LGUNUpscaler, to force the numpy path."""

    inner: Upscaler

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.inner(batch)


def test_import_does_not_load_torch() -> None:
    code = ("import sys, geosr, geosr.ensemble; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
