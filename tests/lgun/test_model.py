"""LGUN network: shapes, gradients, parameter counts, ablations, numerics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lgun import LGUN, VARIANTS, LGUNConfig
from lgun.layers import DilatedDepthwise, Pointwise, set_fast_kernels
from lgun.model import DGSA, MLHA

TINY = dict(channels=16, num_blocks=2, num_heads=4)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(8, 8), (7, 13), (1, 1), (5, 2)])
def test_output_is_exactly_scale_times_input(scale: int, size: tuple[int, int]) -> None:
    model = LGUN(scale=scale, **TINY).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(y).all()


def test_full_size_model_odd_input() -> None:
    model = LGUN(scale=3).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 11, 9))
    assert y.shape == (1, 3, 33, 27)


@pytest.mark.parametrize(("scale", "paper_k"), [(2, 675), (3, 684), (4, 696)])
def test_parameter_count_matches_table2(scale: int, paper_k: int) -> None:
    n = sum(p.numel() for p in LGUN(scale=scale).parameters())
    assert abs(n / 1e3 / paper_k - 1) < 0.02, n


def test_scales_differ_only_in_reconstruction() -> None:
    a, b = LGUN(scale=2).state_dict(), LGUN(scale=4).state_dict()
    diff = {k for k in a if a[k].shape != b[k].shape}
    assert diff and all(k.startswith("rec.") for k in diff)
    assert set(a) == set(b)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = LGUN(scale=2, **TINY)
    x = torch.rand(2, 3, 12, 10)
    loss = F.l1_loss(model(x), torch.rand(2, 3, 24, 20))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # top-k stage weights and the temperature learn too
    dgsa = next(m for m in model.modules() if isinstance(m, DGSA))
    assert dgsa.stage_weights is not None and dgsa.stage_weights.grad.abs().sum() > 0


def test_blocks_use_mlha_shallow_and_dgsa_deep() -> None:
    model = LGUN(scale=2)
    kinds = [type(b.mixer) for b in model.blocks]
    assert kinds == [MLHA] * 8 + [DGSA] * 8


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_ablation_builds_and_runs(variant: str) -> None:
    model = LGUN(scale=2, variant=variant).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 9, 7))
    assert y.shape == (1, 3, 18, 14) and torch.isfinite(y).all()
    mixers = [type(b.mixer) for b in model.blocks]
    if variant == "no-mlha":
        assert set(mixers) == {DGSA}
    elif variant == "no-dgsa":
        assert set(mixers) == {MLHA}
    else:
        assert set(mixers) == {MLHA, DGSA}
    dg = [b.mixer for b in model.blocks if isinstance(b.mixer, DGSA)]
    ml = [b.mixer for b in model.blocks if isinstance(b.mixer, MLHA)]
    if variant == "no-topk":
        assert all(m.topk == () for m in dg)
    elif variant == "single-topk":
        assert all(m.topk == (4,) for m in dg)
    elif dg:
        assert all(m.topk == (4, 5, 6) for m in dg)  # Dh = 8: 1/2, 2/3, 3/4
    if variant == "no-stf":
        assert all(not m.stf for m in ml)
    if variant == "identical-lkcs":
        assert all(br.dw.kernel_size == (5, 5) for m in ml for br in m.branches)
    elif variant == "full":
        assert [br.dw.kernel_size[0] for br in ml[0].branches] == [3, 5, 7]
        assert [br.dw_dilated.dilation[0] for br in ml[0].branches] == [2, 3, 4]


def test_topk_ratio_list_is_a_parameter() -> None:
    cfg = LGUNConfig(scale=2, topk_ratios=(1 / 2, 2 / 3, 3 / 4, 4 / 5))
    model = LGUN(cfg)
    dg = [b.mixer for b in model.blocks if isinstance(b.mixer, DGSA)]
    assert dg[0].topk == (4, 5, 6, 6) and dg[0].stage_weights.shape == (4,)


def _reference_dgsa(m: DGSA, x: torch.Tensor) -> torch.Tensor:
    """Eq. 7-9 literally: one masked softmax and one attn @ V per stage, summed."""
    b, c, h, w = x.shape
    q, k, v = m.qkv_dw(m.qkv(x)).chunk(3, dim=1)
    heads = m.num_heads
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in (q, k, v))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * m.temperature
    out = torch.zeros_like(v)
    for wgt, kk in zip(m.stage_weights, m.topk, strict=True):
        idx = torch.topk(attn, k=kk, dim=-1).indices
        mask = torch.full_like(attn, float("-inf")).scatter(-1, idx, 0.0)
        out = out + wgt * ((attn + mask).softmax(-1) @ v)
    return m.proj_out(out.reshape(b, c, h, w))


def test_fused_dgsa_equals_literal_multi_stage_sum() -> None:
    torch.manual_seed(1)
    m = DGSA(32, 4, (1 / 2, 2 / 3, 3 / 4))
    with torch.no_grad():
        m.stage_weights.copy_(torch.tensor([0.3, -0.2, 0.5]))
        m.temperature.uniform_(0.5, 3.0)
    x = torch.randn(2, 32, 9, 11)
    with torch.no_grad():
        assert torch.allclose(m(x), _reference_dgsa(m, x), atol=1e-5)


def test_topk_keeps_exactly_k_per_row() -> None:
    torch.manual_seed(2)
    m = DGSA(16, 2, (1 / 2,))
    with torch.no_grad():
        m.stage_weights.fill_(1.0)
    q, k = torch.randn(1, 2, 8, 30), torch.randn(1, 2, 8, 30)
    with torch.no_grad():
        a = m.attention_matrix(q, k)
    assert ((a > 0).sum(-1) == 4).all()
    assert torch.allclose(a.sum(-1), torch.ones(1, 2, 8))


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(3)
    model = LGUN(scale=2, **TINY).eval()
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_finite(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    model = LGUN(scale=2, **TINY).eval()
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype))
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1


def test_config_round_trip_and_validation() -> None:
    cfg = LGUNConfig(scale=3, variant="no-stf")
    assert LGUNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        LGUNConfig(scale=5)
    with pytest.raises(ValueError):
        LGUNConfig(variant="nope")
    with pytest.raises(ValueError):
        LGUNConfig.from_dict({"scale": 2, "bogus": 1})


@pytest.mark.parametrize(("k", "d"), [(5, 2), (7, 3), (9, 4)])
@pytest.mark.parametrize("size", [(12, 12), (7, 13), (2, 3)])
def test_space_to_batch_dilated_conv_equals_dilated_conv(
    k: int, d: int, size: tuple[int, int]
) -> None:
    torch.manual_seed(5)
    m = DilatedDepthwise(6, k, d)
    x = torch.randn(2, 6, *size, requires_grad=True)
    ref = F.conv2d(x, m.weight, m.bias, padding=(k // 2) * d, dilation=d, groups=6)
    out = m(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(ref, x, g)
    (gx2,) = torch.autograd.grad(m(x), x, g)
    assert torch.allclose(gx, gx2, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_equals_1x1_conv(channels_last: bool) -> None:
    torch.manual_seed(6)
    m = Pointwise(8, 5)
    x = torch.randn(2, 8, 7, 9)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert torch.allclose(m(x), F.conv2d(x, m.weight, m.bias), atol=1e-5)


def test_fast_kernels_match_plain_convolutions_for_the_whole_model() -> None:
    torch.manual_seed(7)
    model = LGUN(scale=4).eval()
    x = torch.rand(1, 3, 23, 17)
    with torch.no_grad():
        fast = model(x)
        ref = set_fast_kernels(model, False)(x)
    assert (fast - ref).abs().max() < 1e-4
