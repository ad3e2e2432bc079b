"""lgun.cpu_kernels: the native depthwise conv equals F.conv2d and the scaled GELU F.gelu."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from lgun import cpu_kernels

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(),
                                   reason=f"native kernels: {cpu_kernels.build_error()}")


@pytest.fixture
def rebuild(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Forget the process's build before and after a test that changes the environment."""
    cpu_kernels._build.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    cpu_kernels._build.cache_clear()


def _reference(x, w, b, pad, d):
    """F.conv2d in float64 on the NCHW view of NHWC ``x``; NHWC out."""
    c = x.shape[-1]
    y = F.conv2d(x.permute(0, 3, 1, 2), w, b, padding=pad, dilation=d, groups=c)
    return y.permute(0, 2, 3, 1)


@needs_kernels
@pytest.mark.parametrize(
    "b, h, w, c, k, d, pad, threads",
    [
        (2, 7, 9, 5, 3, 1, (1, 1), 1),      # C below one channel block
        (3, 10, 6, 17, 7, 3, (9, 9), 2),    # a block and a tail; 'same'; two threads
        (2, 5, 5, 8, 9, 4, (16, 16), 1),    # taps that only ever see padding
        (4, 9, 11, 48, 5, 2, (0, 0), 3),    # 'valid': smaller output
        (1, 6, 8, 32, 3, 1, (3, 2), 1),     # more padding than 'same', rows != columns
        (5, 8, 8, 16, 1, 1, (0, 0), 2),     # 1x1
        (3, 6, 7, 72, 3, 1, (1, 1), 2),     # a wide layer (the other weight-gradient loop)
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_equals_conv2d(b, h, w, c, k, d, pad, threads, bias) -> None:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(b * 100 + c)
    x64 = torch.randn(b, h, w, c, generator=g, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(c, 1, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    b64 = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    y64 = _reference(x64, w64, b64, pad, d)
    gy = torch.randn(y64.shape, generator=g, dtype=torch.float64)
    y64.backward(gy)

    x32, w32 = (t.detach().float().requires_grad_() for t in (x64, w64))
    b32 = b64.detach().float().requires_grad_() if bias else None
    y32 = cpu_kernels.depthwise_nhwc(x32, w32, b32, pad, d)
    y32.backward(gy.float())

    def close(a: torch.Tensor, ref: torch.Tensor) -> None:
        assert a.shape == ref.shape
        assert (a.double() - ref).abs().max() <= 1e-5 * ref.abs().max()

    close(y32, y64.detach())
    close(x32.grad, x64.grad)
    close(w32.grad, w64.grad)
    if bias:
        close(b32.grad, b64.grad)


@needs_kernels
def test_strided_input_and_single_tensor_grads() -> None:
    torch.set_num_threads(1)
    nchw = torch.randn(2, 12, 6, 6)  # an NHWC view of it is not contiguous
    x = nchw.permute(0, 2, 3, 1).requires_grad_()
    w = torch.randn(12, 1, 3, 3)  # no grad wanted for the weight
    y = cpu_kernels.depthwise_nhwc(x, w, None, (1, 1), 1)
    y.sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    _reference(ref_x, w, None, (1, 1), 1).sum().backward()
    torch.testing.assert_close(y, _reference(x.detach(), w, None, (1, 1), 1))
    torch.testing.assert_close(x.grad, ref_x.grad)
    # and the other way round: a weight and bias gradient only
    w2, b2 = torch.randn(12, 1, 3, 3, requires_grad=True), torch.randn(12, requires_grad=True)
    cpu_kernels.depthwise_nhwc(x.detach(), w2, b2, (1, 1), 1).sum().backward()
    ref_w, ref_b = (t.detach().clone().requires_grad_() for t in (w2, b2))
    _reference(x.detach(), ref_w, ref_b, (1, 1), 1).sum().backward()
    torch.testing.assert_close(w2.grad, ref_w.grad)
    torch.testing.assert_close(b2.grad, ref_b.grad)


@needs_kernels
def test_rejects_what_it_cannot_compute() -> None:
    x = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.depthwise_nhwc(x.double(), torch.randn(8, 1, 3, 3).double(), None, (1, 1), 1)
    with pytest.raises(ValueError, match="not depthwise"):
        cpu_kernels.depthwise_nhwc(x, torch.randn(4, 1, 3, 3), None, (1, 1), 1)
    with pytest.raises(ValueError, match="not depthwise"):
        cpu_kernels.depthwise_nhwc(x, torch.randn(8, 3, 3), None, (1, 1), 1)
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernels.depthwise_nhwc(x, torch.randn(8, 1, 7, 7), None, (0, 0), 1)


@needs_kernels
def test_empty_batch() -> None:
    torch.set_num_threads(2)
    x = torch.randn(0, 5, 5, 8, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    y = cpu_kernels.depthwise_nhwc(x, w, b, (1, 1), 1)
    assert y.shape == (0, 5, 5, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape and not w.grad.any() and not b.grad.any()



@needs_kernels
@pytest.mark.parametrize("b, h, w, c, threads", [
    (2, 5, 7, 19, 1),     # a tail after one vector of channels; odd sizes
    (3, 8, 9, 160, 2),    # the FFN's width, more pixels than one partial sum, two threads
    (1, 1, 1, 1, 1),
])
def test_scale_gelu_equals_gelu(b, h, w, c, threads) -> None:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(c)
    # t * s over [-12, 12]: both tails of the GELU and its exp's underflow side
    t64 = (4 * torch.randn(b, h, w, c, generator=g, dtype=torch.float64)).requires_grad_()
    s64 = (3 * torch.rand(b, c, generator=g, dtype=torch.float64)).requires_grad_()
    y64 = F.gelu(t64 * s64[:, None, None, :])
    gy = torch.randn(y64.shape, generator=g, dtype=torch.float64)
    y64.backward(gy)
    t32, s32 = (v.detach().float().requires_grad_() for v in (t64, s64))
    y32 = cpu_kernels.scale_gelu(t32, s32)
    y32.backward(gy.float())
    for a, ref in ((y32, y64.detach()), (t32.grad, t64.grad), (s32.grad, s64.grad)):
        assert a.shape == ref.shape and a.dtype == torch.float32
        assert (a.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@needs_kernels
def test_scale_gelu_strided_empty_and_bad_input() -> None:
    torch.set_num_threads(2)
    t = torch.randn(2, 6, 4, 4).permute(0, 2, 3, 1)  # a non-contiguous NHWC view
    s = torch.rand(2, 6)
    torch.testing.assert_close(cpu_kernels.scale_gelu(t, s), F.gelu(t * s[:, None, None, :]))
    te = torch.randn(0, 3, 3, 8, requires_grad=True)
    se = torch.rand(0, 8, requires_grad=True)
    y = cpu_kernels.scale_gelu(te, se)
    y.sum().backward()
    assert y.shape == te.shape and te.grad.shape == te.shape and se.grad.shape == se.shape
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.scale_gelu(t.double(), s.double())
    with pytest.raises(ValueError, match="do not match"):
        cpu_kernels.scale_gelu(t, torch.rand(2, 5))

def test_disabled_by_environment(rebuild: pytest.MonkeyPatch) -> None:
    rebuild.setenv("LGUN_NATIVE_KERNELS", "0")
    assert not cpu_kernels.available()
    assert "LGUN_NATIVE_KERNELS=0" in cpu_kernels.build_error()
    with pytest.raises(RuntimeError, match="unavailable"):
        cpu_kernels.depthwise_nhwc(torch.randn(1, 4, 4, 8), torch.randn(8, 1, 3, 3), None,
                                   (1, 1), 1)


def test_no_or_broken_compiler_falls_back(rebuild: pytest.MonkeyPatch, tmp_path) -> None:
    rebuild.setenv("LGUN_CACHE", str(tmp_path))
    rebuild.setenv("CC", "no-such-compiler-here")
    assert not cpu_kernels.available() and "no C compiler" in cpu_kernels.build_error()
    cpu_kernels._build.cache_clear()
    rebuild.setenv("CC", "false")  # exists, always fails
    assert not cpu_kernels.available() and "failed" in cpu_kernels.build_error()
    assert list(tmp_path.iterdir()) == []  # nothing half-written left in the cache


@needs_kernels
def test_builds_into_the_cache_once(rebuild: pytest.MonkeyPatch, tmp_path) -> None:
    rebuild.setenv("LGUN_CACHE", str(tmp_path))
    assert cpu_kernels.available()
    built = list(tmp_path.glob("kernels-*.so"))
    assert len(built) == 1 and cpu_kernels.library_path() == str(built[0])
    mtime = built[0].stat().st_mtime_ns
    cpu_kernels._build.cache_clear()  # a new process: loads, does not rebuild
    assert cpu_kernels.available() and built[0].stat().st_mtime_ns == mtime
