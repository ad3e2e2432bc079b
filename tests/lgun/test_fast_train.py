"""lgun.fast_train: the optimised training step has the eager step's parameters and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lgun import LGUN, VARIANTS, cpu_kernels
from lgun.fast import optimize_for_inference
from lgun.fast_train import (
    NATIVE_ATTR,
    bf16_supported,
    dilated_depthwise_nhwc,
    native_convs,
    optimize_for_training,
)
from lgun.layers import DilatedDepthwise

TINY = dict(channels=16, num_blocks=2, num_heads=4)
#: Per-parameter max|g_opt - g_ref| / max|g_ref| allowed (the task's contract).
GRAD_RTOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _perturbed(model: LGUN, seed: int) -> LGUN:
    """Random weights everywhere, so LayerNorm scale/shift, stage weights, temperature and
    every bias are non-trivial (their defaults would hide folding mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _grads(model: LGUN, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.l1_loss(out, y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_grads_close(ref: dict, opt: dict) -> None:
    assert ref.keys() == opt.keys()
    for name, g_ref in ref.items():
        scale = g_ref.abs().max().item()
        diff = (opt[name] - g_ref).abs().max().item()
        assert diff <= GRAD_RTOL * scale + 1e-12, f"{name}: {diff:.3g} vs max {scale:.3g}"


#: Both depthwise implementations: oneDNN's, and lgun.cpu_kernels where it builds.
NATIVE = [False, pytest.param(True, marks=pytest.mark.skipif(
    not cpu_kernels.available(), reason=f"native kernels: {cpu_kernels.build_error()}"))]


def _check(ref: LGUN, b: int, h: int, w: int, seed: int = 0, native: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    s = ref.scale
    x = torch.rand(b, 3, h, w, generator=g)
    y = torch.rand(b, 3, h * s, w * s, generator=g)
    opt = optimize_for_training(copy.deepcopy(ref), native=native)
    assert (native_convs(opt) > 0) == native
    out_ref, g_ref = _grads(ref, x, y)
    out_opt, g_opt = _grads(opt, x, y)
    torch.testing.assert_close(out_opt, out_ref, rtol=1e-4, atol=1e-5)
    _assert_grads_close(g_ref, g_opt)


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_gradients_equal_reference(scale: int, variant: str, native: bool) -> None:
    torch.manual_seed(0)
    # 13 x 11: not a multiple of any dilation, sub-images smaller than some kernels.
    _check(_perturbed(LGUN(scale=scale, variant=variant, **TINY), 1), 2, 13, 11,
           native=native)


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize(("scale", "side"), [(2, 12), (4, 9)])
def test_real_config_gradients_equal_reference(scale: int, side: int, native: bool) -> None:
    # Real width and depth. At 12: space-to-batch for (5, d=2), mosaic for (7, d=3) and a
    # cropped mosaic for (9, d=4); at 9 (x4): mosaics with 3 x 3 sub-images everywhere.
    torch.manual_seed(0)
    _check(_perturbed(LGUN(scale=scale), 2), 1, side, side, native=native)


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize(("k", "d", "side"), [(5, 2, 16), (7, 3, 11), (9, 4, 8), (9, 4, 5)])
def test_dilated_layouts_equal_dilated_conv(k: int, d: int, side: int, native: bool) -> None:
    torch.manual_seed(0)
    conv = DilatedDepthwise(4, k, d)
    setattr(conv, NATIVE_ATTR, native)
    x = torch.randn(2, side + 1, side, 4, requires_grad=True)  # NHWC
    ref = F.conv2d(x.permute(0, 3, 1, 2), conv.weight, conv.bias, padding=conv.padding,
                   dilation=conv.dilation, groups=4).permute(0, 2, 3, 1)
    out = dilated_depthwise_nhwc(x, conv)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    g_out = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_same_parameters_and_state_dict_keys() -> None:
    model = LGUN(scale=2, **TINY)
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    out = optimize_for_training(model)
    assert out is model  # in place: `model = optimize_for_training(model)` is a no-op rebind
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == params
    fresh = LGUN(scale=2, **TINY)
    fresh.load_state_dict(model.state_dict())  # checkpoints stay interchangeable
    optimize_for_training(copy.deepcopy(fresh)).load_state_dict(fresh.state_dict())


def test_two_training_steps_give_the_same_weights() -> None:
    torch.manual_seed(0)
    ref = _perturbed(LGUN(scale=2, **TINY), 4)
    opt = optimize_for_training(copy.deepcopy(ref))
    g = torch.Generator().manual_seed(5)
    batches = [(torch.rand(2, 3, 12, 12, generator=g), torch.rand(2, 3, 24, 24, generator=g))
               for _ in range(2)]
    for model in (ref, opt):
        optim = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        for x, y in batches:
            loss = F.l1_loss(model(x), y)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
    # Adam divides by sqrt(v): an entry whose gradient is ~0 could move by ~lr on a rounding
    # difference; with these seeds none does (max difference 4e-8), so the check is tight.
    for (name, p_ref), p_opt in zip(ref.named_parameters(), opt.parameters(), strict=True):
        torch.testing.assert_close(p_opt, p_ref, rtol=1e-4, atol=1e-6, msg=name)


def test_eval_deepcopy_and_inference_rewrite_agree() -> None:
    torch.manual_seed(0)
    ref = _perturbed(LGUN(scale=4, **TINY), 6).eval()
    opt = optimize_for_training(copy.deepcopy(ref)).eval()
    x = torch.rand(1, 3, 11, 14)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(opt(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(copy.deepcopy(opt)(x), expected, rtol=1e-4, atol=1e-5)
        # Modules called on their own (lgun.training's REC fit runs head, then blocks).
        f = ref.head(x)
        torch.testing.assert_close(opt.blocks(f), ref.blocks(f), rtol=1e-4, atol=1e-5)
        # An EMA copy of an optimised model still converts for inference.
        torch.testing.assert_close(optimize_for_inference(opt)(x), expected, rtol=1e-4,
                                   atol=1e-5)


def test_rejects_other_modules() -> None:
    with pytest.raises(TypeError, match="LGUN"):
        optimize_for_training(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_bf16_detection_is_a_bool() -> None:
    assert isinstance(bf16_supported(), bool)
