"""lgun.fast: the inference-only rewrite computes what the eager model computes."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lgun.fast
from lgun import LGUN, VARIANTS
from lgun.fast import FastLGUN, optimize_for_inference
from lgun.layers import set_fast_kernels

TINY = dict(channels=16, num_blocks=2, num_heads=4)


def _perturbed(model: LGUN, seed: int) -> LGUN:
    """Random weights everywhere, so LayerNorm scale/shift, stage weights, temperature
    and every bias are non-trivial (their defaults would hide folding mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _reference(model: LGUN, x: torch.Tensor) -> torch.Tensor:
    """The naive eager evaluation (plain nn.Conv2d kernels) of the same weights."""
    set_fast_kernels(model, False)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        set_fast_kernels(model, True)


@pytest.mark.parametrize("mkldnn", [True, False])
def test_full_model_equals_eager_reference(mkldnn: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # False: the portable fallbacks (F.linear, conv then GELU) that non-oneDNN builds take.
    for flag in ("_MKLDNN_LINEAR", "_MKLDNN_CONV_GELU"):
        monkeypatch.setattr(lgun.fast, flag, mkldnn and getattr(lgun.fast, flag))
    torch.manual_seed(0)
    model = _perturbed(LGUN(scale=4), 1)
    x = torch.rand(2, 3, 23, 17)
    ref = _reference(model, x)
    with torch.inference_mode():
        out = optimize_for_inference(model)(x)
    assert out.shape == ref.shape == (2, 3, 92, 68)
    assert (out - ref).abs().max() < 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(7, 13), (1, 1), (2, 5)])
def test_every_variant_and_odd_sizes(variant: str, size: tuple[int, int]) -> None:
    torch.manual_seed(2)
    model = _perturbed(LGUN(scale=3, variant=variant, **TINY), 3)
    x = torch.rand(2, 3, *size)
    ref = _reference(model, x)
    out = optimize_for_inference(model)(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-4


@pytest.mark.parametrize("size", [(1, 1), (1, 4), (3, 2), (9, 7)])
def test_depthwise_mean_without_the_conv(size: tuple[int, int]) -> None:
    torch.manual_seed(8)
    y = torch.randn(2, *size, 5)  # NHWC
    w, b = torch.randn(5, 1, 3, 3), torch.randn(5)
    conv = F.conv2d(y.permute(0, 3, 1, 2), w, b, padding=1, groups=5)
    sums = lgun.fast._border_sums(y)
    assert torch.allclose(lgun.fast._dw3x3_mean(sums, *size, w, b), conv.mean(dim=(2, 3)),
                          atol=1e-5)


def test_is_a_snapshot_and_leaves_input_alone() -> None:
    torch.manual_seed(4)
    model = _perturbed(LGUN(scale=2, **TINY), 5)
    fast = optimize_for_inference(model)
    x = torch.rand(1, 3, 9, 8)
    x_copy = x.clone()
    before = fast(x)
    assert torch.equal(x, x_copy)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert torch.equal(fast(x), before)  # later changes to the model do not leak in
    assert isinstance(fast, FastLGUN) and fast.scale == 2
    assert not any(p.requires_grad for p in fast.parameters())


def test_pickles_for_dask_workers() -> None:
    import pickle

    torch.manual_seed(9)
    fast = optimize_for_inference(_perturbed(LGUN(scale=2, **TINY), 10))
    x = torch.rand(1, 3, 6, 5)
    assert torch.equal(pickle.loads(pickle.dumps(fast))(x), fast(x))


def test_rejects_other_modules() -> None:
    with pytest.raises(TypeError, match="lgun.LGUN"):
        optimize_for_inference(torch.nn.Conv2d(3, 3, 1))  # type: ignore[arg-type]


def test_works_behind_the_geosr_adapter() -> None:
    import numpy as np

    from geosr.models import LGUNUpscaler

    torch.manual_seed(6)
    model = _perturbed(LGUN(scale=2, **TINY), 7)
    batch = np.random.default_rng(0).random((1, 3, 6, 7), dtype=np.float32)
    ref = _reference(model, torch.from_numpy(batch)).numpy()
    up = LGUNUpscaler(optimize_for_inference(model), name="fast", device="cpu")
    assert up.scale == 2
    assert np.abs(up(batch) - ref).max() < 1e-4


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_malloc_is_accepted_by_glibc() -> None:
    # In a child: the setting is process-wide.
    code = "from lgun.fast import tune_malloc; print(tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "True"


def test_bench_command_rejects_bad_runs() -> None:
    r = subprocess.run([sys.executable, "-m", "pipelines.bench_model", "--runs", "5:256:2"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "SCALE:SIZE:THREADS" in r.stderr

