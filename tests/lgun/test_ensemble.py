"""lgun.ensemble: the 8 dihedral views, their inverses, and the batched self-ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lgun import LGUN
from lgun.ensemble import (
    NUM_VIEWS,
    ensembled,
    inverse_view,
    iter_view_predictions,
    self_ensemble,
    view,
)
from lgun.evaluate import evaluate_model, main
from lgun.fast import optimize_for_inference


class Nearest(torch.nn.Module):
    """Pixel replication commutes with flips and quarter turns: an exact oracle."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class Skewed(torch.nn.Module):
    """Not equivariant (a fixed shift and a gradient along the width): views disagree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        ramp = torch.linspace(0, 1, 2 * w).expand(*x.shape[:2], 2 * x.shape[-2], 2 * w)
        return F.interpolate(x, scale_factor=2, mode="bilinear") + 0.1 * ramp


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (1, 3, 4, 7)])
def test_inverse_undoes_each_view(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    seen = set()
    for i in range(NUM_VIEWS):
        v = view(x, i)
        h, w = x.shape[-2:]
        assert tuple(v.shape[-2:]) == ((w, h) if i % 2 else (h, w))
        assert torch.equal(inverse_view(v, i), x)
        seen.add(tuple(v.flatten().tolist()))
    if shape[-1] == shape[-2]:
        assert len(seen) == NUM_VIEWS  # eight distinct elements of the group


def test_view_index_checked() -> None:
    with pytest.raises(ValueError, match="0..7"):
        view(torch.zeros(1, 1, 2, 2), 8)
    with pytest.raises(ValueError, match="max_batch"):
        list(iter_view_predictions(Nearest(2), torch.zeros(1, 1, 2, 2), max_batch=0))
    with pytest.raises(ValueError, match="batch"):
        self_ensemble(Nearest(2), torch.zeros(1, 2, 2))


@pytest.mark.parametrize("shape", [(3, 3, 6, 6), (2, 3, 5, 9)])
def test_equivariant_model_gives_its_own_output_and_zero_spread(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    model = Nearest(3)
    mean, std = self_ensemble(model, x, return_std=True)
    assert mean.dtype == std.dtype == torch.float32
    assert torch.equal(mean, model(x))
    assert torch.equal(std, torch.zeros_like(std))


@pytest.mark.parametrize("max_batch", [1, 3, 5, 8, 64])
def test_batched_equals_unbatched(max_batch: int) -> None:
    x = torch.rand(3, 3, 4, 6, generator=torch.Generator().manual_seed(2))
    ref_mean, ref_std = self_ensemble(Skewed(), x, max_batch=1, return_std=True)
    mean, std = self_ensemble(Skewed(), x, max_batch=max_batch, return_std=True)
    assert torch.equal(mean, ref_mean) and torch.equal(std, ref_std)
    assert std.max() > 0.01  # the views of a non-equivariant model disagree


def test_mean_and_std_match_the_stacked_views() -> None:
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(3))
    model = Skewed()
    preds = torch.stack([inverse_view(model(view(x, i)), i) for i in range(NUM_VIEWS)])
    mean, std = self_ensemble(model, x, max_batch=3, return_std=True)
    torch.testing.assert_close(mean, preds.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(std, preds.std(0, correction=0), rtol=0, atol=1e-6)


def test_calls_are_batched_by_shape_group() -> None:
    model = Nearest(2)
    self_ensemble(model, torch.rand(1, 3, 4, 4))
    assert model.calls == [(8, 3, 4, 4)]  # a square tile: all 8 views in one call
    model.calls.clear()
    self_ensemble(model, torch.rand(1, 3, 4, 6))
    assert model.calls == [(4, 3, 4, 6), (4, 3, 6, 4)]  # one call per shape group
    model.calls.clear()
    self_ensemble(model, torch.rand(2, 3, 4, 4), max_batch=8)
    assert model.calls == [(8, 3, 4, 4), (8, 3, 4, 4)]
    yielded = [(i, rows) for i, rows, _ in iter_view_predictions(model, torch.rand(2, 1, 3, 3),
                                                                  max_batch=3)]
    # Each input sees its views in order 0..7, however the chunks cut the rows.
    for b in range(2):
        assert [i for i, rows in yielded if rows.start <= b < rows.stop] == list(range(8))


def test_lgun_eager_and_fast_ensembles_agree() -> None:
    torch.manual_seed(0)
    net = LGUN(scale=2, channels=16, num_blocks=1, num_heads=4).eval()
    x = torch.rand(1, 3, 8, 10)
    with torch.no_grad():
        single = net(x)
    mean, std = self_ensemble(net, x, return_std=True)
    assert mean.shape == std.shape == (1, 3, 16, 20)
    assert not torch.allclose(mean, single)  # a random network is not equivariant
    assert std.mean() > 0
    fast = ensembled(optimize_for_inference(net))(x)
    torch.testing.assert_close(fast, mean, rtol=1e-4, atol=1e-4)
    assert ensembled(net).__name__ == "LGUN+ensemble"


def test_evaluate_self_ensemble_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yy, xx = np.mgrid[0:30, 0:36] / 36
    rgb = np.stack([128 + 100 * np.sin(5 * xx + k * yy) for k in (1, 2, 3)], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "a.png")
    plain = evaluate_model(Nearest(2), str(tmp_path), 2)
    plus = evaluate_model(Nearest(2), str(tmp_path), 2, self_ensemble=True)
    assert (plain["self_ensemble"], plus["self_ensemble"]) == (False, True)
    assert plus["psnr"] == plain["psnr"]  # an equivariant model gains nothing, loses nothing
    assert main(["--model", "bicubic", "--dataset", str(tmp_path), "--scale", "2",
                 "--self-ensemble"]) == 2
    assert "needs a model" in capsys.readouterr().err
