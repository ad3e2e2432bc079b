"""``EnsembleUpscaler``: any ``Upscaler`` averaged over the 8 flips/rotations of its input.

The mean of a model's predictions on the 8 dihedral views of a tile (inverse-transformed back)
is usually a little better than one prediction (EDSR's "+" self-ensemble, ~0.1-0.2 dB for LGUN;
docs/ENSEMBLE.md), and the per-pixel standard deviation of the 8 says where they disagree, at 8x
the model time. The wrapper is itself an ``Upscaler``, so tiling, blending and provenance work
unchanged; ``predict_with_spread`` also returns the spread.

A torch-backed ``LGUNUpscaler`` goes through ``lgun.ensemble`` (views batched on its device);
any other model gets the same views in numpy, so ``import geosr`` and numpy models never import
torch. View ``i`` is "flip the width axis if ``i >= 4``, then ``i % 4`` quarter turns"; views
with the same shape are batched together, at most ``max_batch`` rows per call; mean and
population std are accumulated in view order with Welford's update (float32), so an
equivariant model (``NearestUpscaler``) gives exactly its own output and a spread of 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from geosr.models import LGUNUpscaler, Upscaler

__all__ = ["NUM_VIEWS", "EnsembleUpscaler", "inverse_view", "view", "with_ensemble"]

NUM_VIEWS = 8


def view(x: np.ndarray, index: int) -> np.ndarray:
    """Dihedral view ``index`` (0..7) of ``x`` (..., H, W), as ``lgun.ensemble.view``."""
    if not 0 <= index < NUM_VIEWS:
        raise ValueError(f"view index must be in 0..{NUM_VIEWS - 1}, got {index}")
    y = np.flip(x, axis=-1) if index >= 4 else x
    return np.rot90(y, index % 4, axes=(-2, -1))


def inverse_view(y: np.ndarray, index: int) -> np.ndarray:
    """Undo ``view(., index)``."""
    if not 0 <= index < NUM_VIEWS:
        raise ValueError(f"view index must be in 0..{NUM_VIEWS - 1}, got {index}")
    y = np.rot90(y, -(index % 4), axes=(-2, -1))
    return np.flip(y, axis=-1) if index >= 4 else y


def _numpy_moments(
    model: Upscaler, batch: np.ndarray, max_batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of ``model`` over the 8 views of ``batch`` (numpy, float32)."""
    b = batch.shape[0]
    square = batch.shape[-2] == batch.shape[-1]
    groups = [list(range(NUM_VIEWS))] if square else [[0, 2, 4, 6], [1, 3, 5, 7]]
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    count = [0] * b
    for group in groups:
        # Rows are view-major, as lgun.ensemble: row r is view group[r // b] of input r % b.
        stacked = np.concatenate([view(batch, i) for i in group])
        for start in range(0, stacked.shape[0], max_batch):
            out = model(np.ascontiguousarray(stacked[start : start + max_batch]))
            for j in range(out.shape[0]):
                k, row = divmod(start + j, b)
                p = inverse_view(out[j], group[k]).astype(np.float32)
                if mean is None or m2 is None:
                    mean = np.zeros((b, *p.shape), dtype=np.float32)
                    m2 = np.zeros_like(mean)
                count[row] += 1
                delta = p - mean[row]
                mean[row] += delta / np.float32(count[row])
                m2[row] += delta * (p - mean[row])
    assert mean is not None and m2 is not None
    # Rounding can leave m2 a hair below 0 where the views agree.
    return mean, np.sqrt(np.maximum(m2, 0) / np.float32(NUM_VIEWS))


@dataclass
class EnsembleUpscaler:
    """An ``Upscaler`` that returns the mean of ``inner`` over the 8 dihedral views.

    Args:
        inner: The wrapped model (``LGUNUpscaler``, ``NearestUpscaler``, any ``Upscaler``).
        max_batch: Most rows per call of the inner model. The default runs the 8 views of one
            square tile in one call (or the 4 of each shape group of an oblong one); each call
            needs up to ``max_batch`` tiles' worth of model memory.
    """

    inner: Upscaler
    max_batch: int = NUM_VIEWS

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    @property
    def name(self) -> str:
        return f"{self.inner.name}+ensemble"

    @property
    def scale(self) -> int:
        return self.inner.scale

    @property
    def in_channels(self) -> int | None:
        return self.inner.in_channels

    @property
    def size_multiple(self) -> int:
        # Rotated views swap height and width; one multiple for both keeps them valid.
        return self.inner.size_multiple

    @property
    def supports_half(self) -> bool:
        return self.inner.supports_half

    @property
    def sha256(self) -> str | None:
        return self.inner.sha256

    @property
    def provenance(self) -> str:
        return (f"8-view self-ensemble (mean over flips and quarter turns) of "
                f"{self.inner.provenance}")

    @property
    def model_seconds(self) -> float:
        """Time inside the inner model's calls, when it keeps count (``LGUNUpscaler``)."""
        return float(getattr(self.inner, "model_seconds", 0.0))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The ensemble mean: (B, C, h, w) float32 in [0, 1] -> (B, C, s*h, s*w) float32."""
        return self.predict_with_spread(batch)[0]

    def predict_with_spread(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble mean and the per-pixel population std of the 8 predictions.

        Args:
            batch: (B, C, h, w) float32 in [0, 1].

        Returns:
            ``(mean, std)``, both (B, C, s*h, s*w) float32; ``std`` is 0 where all 8 views
            agree. The mean is not clipped (neither is the inner model's output).
        """
        if batch.ndim != 4:
            raise ValueError(f"expected a (B, C, h, w) batch, got shape {batch.shape}")
        if isinstance(self.inner, LGUNUpscaler):
            return self._torch_moments(self.inner, batch)
        return _numpy_moments(self.inner, batch, self.max_batch)

    def _torch_moments(
        self, inner: LGUNUpscaler, batch: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from lgun.ensemble import self_ensemble

        module: Any = inner.module

        def run(x: torch.Tensor) -> torch.Tensor:
            return module(x.half() if inner.half else x)

        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(inner.device)
            mean, std = self_ensemble(run, x, max_batch=self.max_batch, return_std=True)
            out = mean.cpu().numpy(), std.cpu().numpy()
        inner.model_seconds += time.perf_counter() - t0
        return out


def with_ensemble(model: Upscaler, ensemble: bool) -> Upscaler:
    """``model`` as its self-ensemble when ``ensemble`` (``RunOptions.ensemble``).

    A model that is already an ``EnsembleUpscaler`` is returned as is, so the CLI, the
    batch loop and ``upscale`` may each apply the option without wrapping twice.
    """
    if not ensemble or isinstance(model, EnsembleUpscaler):
        return model
    return EnsembleUpscaler(model)
