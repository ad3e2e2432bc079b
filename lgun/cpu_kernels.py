"""Native CPU kernels for training on NHWC float32 tensors: depthwise conv, scaled GELU.

``depthwise_nhwc(x, weight, bias, padding, dilation)`` equals
``F.conv2d(x_nchw, weight, bias, padding=padding, dilation=dilation, groups=C)`` in NHWC
layout, and ``scale_gelu(t, s)`` equals ``F.gelu(t * s[:, None, None, :])`` (the FFN's SE
scale and GELU), forward and backward (gradients equal within fp32 rounding:
``tests/lgun/test_cpu_kernels.py``); ``lgun.fast_train`` uses them for LGUN's depthwise convs
and FFNs when ``available()``. The kernels are plain C (``lgun/csrc/*.c``, why there),
compiled on first use with the system C compiler (``$CC``, else ``cc``) for this CPU
(``-march=native``) into ``$LGUN_CACHE`` (default ``$XDG_CACHE_HOME/lgun``, else
``~/.cache/lgun``), keyed by the sources, the flags and the CPU's feature flags; loaded with
``ctypes`` (whose calls release the GIL, so a batch is split across
``torch.get_num_threads()`` Python threads). Without a compiler, ``available()`` is False
and the callers keep PyTorch's kernels: nothing else changes (``LGUN_NATIVE_KERNELS=0``
does the same on purpose).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["available", "build_error", "depthwise_nhwc", "library_path", "scale_gelu"]

_SOURCES = tuple(Path(__file__).with_name("csrc") / n for n in ("depthwise.c", "scale_gelu.c"))
# -fno-trapping-math (no FP exceptions are ever read): without it the compiler keeps the
# comparisons and float-to-int conversions of scale_gelu.c's exp and erf out of vector code.
_FLAGS = ("-O3", "-std=gnu11", "-fno-trapping-math", "-shared", "-fPIC")
_NATIVE = ("-march=native",)  # tried first; a compiler that refuses it gets the plain flags


def _cache_dir() -> Path:
    env = os.environ.get("LGUN_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lgun"


def _cpu_flags() -> str:
    """The CPU's feature flags (a -march=native build is only valid where they match)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    cc = os.environ.get("CC", "cc").split()
    return shutil.which(cc[0]) if cc else None


@functools.cache
def _build() -> tuple[ctypes.CDLL | None, str]:
    """Compile (once per machine, cached on disk) and load; (library, error message)."""
    if os.environ.get("LGUN_NATIVE_KERNELS", "1") == "0":
        return None, "disabled by LGUN_NATIVE_KERNELS=0"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler ($CC or cc) on PATH"
    parts = [*(f.read_bytes() for f in _SOURCES), " ".join(_FLAGS + _NATIVE).encode(),
             _cpu_flags().encode(), cc.encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    out = _cache_dir() / f"kernels-{key}.so"
    err = ""
    if not out.is_file():
        # A private name, then an atomic rename: concurrent trainings may build at once.
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        except OSError:  # a read-only cache: build for this process only
            out = Path(tempfile.mkdtemp(prefix="lgun-kernels-")) / out.name
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        for flags in (_FLAGS + _NATIVE, _FLAGS):
            try:
                r = subprocess.run([cc, *flags, "-o", tmp, *map(str, _SOURCES)],
                                   capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                err = str(e)
                continue
            if r.returncode == 0:
                os.replace(tmp, out)
                break
            err = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        else:
            Path(tmp).unlink(missing_ok=True)
            return None, f"compiling {', '.join(f.name for f in _SOURCES)} failed: {err}"
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        return None, f"loading {out.name} failed: {e}"
    for name, n_ptr, n_int in (("lgun_dw_forward", 4, 12), ("lgun_dw_backward", 8, 12),
                               ("lgun_scale_gelu_forward", 3, 4),
                               ("lgun_scale_gelu_backward", 6, 4)):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * n_ptr + [ctypes.c_int] * n_int
        fn.restype = None
    return lib, ""


def available() -> bool:
    """Whether the native kernels compiled and loaded on this machine."""
    return _build()[0] is not None


def build_error() -> str:
    """Why ``available()`` is False ('' when it is True)."""
    return _build()[1]


def library_path() -> str:
    """The loaded shared library's file ('' when not available)."""
    lib = _build()[0]
    return lib._name if lib is not None else ""


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lgun-dw")


def _chunks(batch: int) -> list[tuple[int, int]]:
    """Split [0, batch) into one range per intra-op thread (each of at least one item)."""
    n = max(1, min(batch, torch.get_num_threads()))
    edges = [batch * i // n for i in range(n + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _run(fn, ptrs: list[int], dims: tuple[int, ...], batch: int,
         per_chunk: list[list[int]] | None = None) -> None:
    """Call ``fn(*ptrs, b0, b1, *dims)`` over the batch's chunks, in parallel if > 1."""
    chunks = _chunks(batch)  # [] for an empty batch
    calls = [(fn, *ptrs, *(per_chunk[i] if per_chunk else []), b0, b1, *dims)
             for i, (b0, b1) in enumerate(chunks)]
    if len(calls) <= 1:
        for c in calls:
            c[0](*c[1:])
        return
    list(_pool(len(calls)).map(lambda c: c[0](*c[1:]), calls))


class _Depthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):  # type: ignore[override]
        lib = _build()[0]
        b, h, w, c = x.shape
        kh, kw = weight.shape[-2:]
        ph, pw = padding
        ho, wo = h + 2 * ph - dilation * (kh - 1), w + 2 * pw - dilation * (kw - 1)
        x = x.contiguous()
        wk = weight.detach().reshape(c, kh, kw).permute(1, 2, 0).contiguous()  # (KH, KW, C)
        bk = bias.detach().contiguous() if bias is not None else None
        y = x.new_empty(b, ho, wo, c)
        dims = (h, w, c, kh, kw, ph, pw, dilation, ho, wo)
        _run(lib.lgun_dw_forward, [x.data_ptr(), wk.data_ptr(),
                                   bk.data_ptr() if bk is not None else None, y.data_ptr()],
             dims, b)
        ctx.save_for_backward(x, wk)
        ctx.dims, ctx.has_bias, ctx.wshape = dims, bias is not None, weight.shape
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        lib = _build()[0]
        x, wk = ctx.saved_tensors
        dims = ctx.dims
        _, _, c, kh, kw = dims[:5]
        b = x.shape[0]
        gy = gy.contiguous()
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        want_w = ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2])
        n = len(_chunks(b))
        # per chunk: gw and gb (row 0), the kernel's scratch of the same size (row 1)
        buf = x.new_empty(n, 2, kh * kw * c + c) if want_w else None
        per = [[buf[i, r, o].data_ptr() if buf is not None else None for r in (0, 1)
                for o in (0, kh * kw * c)] for i in range(n)]
        _run(lib.lgun_dw_backward, [x.data_ptr(), gy.data_ptr(), wk.data_ptr(),
                                    gx.data_ptr() if gx is not None else None], dims, b, per)
        gw = gb = None
        if buf is not None:
            tot = buf[0, 0] if n == 1 else buf[:, 0].sum(0)  # zeros for an empty batch
            gw = tot[:kh * kw * c].view(kh, kw, c).permute(2, 0, 1).reshape(ctx.wshape)
            gb = tot[kh * kw * c:].clone() if ctx.has_bias else None
        return gx, gw, gb, None, None


def depthwise_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   padding: tuple[int, int], dilation: int) -> torch.Tensor:
    """Depthwise conv (stride 1) of NHWC float32 ``x`` (B, H, W, C) on the CPU; NHWC out.

    Args:
        x: (B, H, W, C) float32 CPU tensor.
        weight: (C, 1, KH, KW), as ``nn.Conv2d(C, C, k, groups=C).weight``.
        bias: (C,) or None.
        padding: zero padding (rows, columns) on each side.
        dilation: the same along both axes.

    Raises:
        RuntimeError: the kernels are not ``available()``.
        ValueError: not a float32 CPU tensor, or shapes that do not match.
    """
    if not available():
        raise RuntimeError(f"lgun native kernels unavailable: {build_error()}")
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
        raise ValueError(f"expected a 4-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} "
                         f"on {x.device}")
    if weight.dim() != 4 or weight.shape[0] != x.shape[-1] or weight.shape[1] != 1:
        raise ValueError(f"weight {tuple(weight.shape)} is not depthwise for C={x.shape[-1]}")
    kh, kw = weight.shape[-2:]
    if min(x.shape[1] + 2 * padding[0] - dilation * (kh - 1),
           x.shape[2] + 2 * padding[1] - dilation * (kw - 1)) < 1 or dilation < 1:
        raise ValueError(f"a {kh}x{kw} kernel with dilation {dilation} and padding "
                         f"{tuple(padding)} does not fit a {x.shape[1]}x{x.shape[2]} input")
    return _Depthwise.apply(x, weight, bias, tuple(padding), int(dilation))


class _ScaleGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, s):  # type: ignore[override]
        lib = _build()[0]
        b, h, w, c = t.shape
        t, s = t.contiguous(), s.contiguous()
        y = torch.empty_like(t)
        _run(lib.lgun_scale_gelu_forward, [t.data_ptr(), s.data_ptr(), y.data_ptr()],
             (h * w, c), b)
        ctx.save_for_backward(t, s)  # not t * s: the backward recomputes it in registers
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        lib = _build()[0]
        t, s = ctx.saved_tensors
        b, h, w, c = t.shape
        gy = gy.contiguous()
        gt, gs = torch.empty_like(t), torch.empty_like(s)
        n = len(_chunks(b))
        acc = t.new_empty(n, 2 * c)  # per chunk: the kernel's scratch
        _run(lib.lgun_scale_gelu_backward,
             [gy.data_ptr(), t.data_ptr(), s.data_ptr(), gt.data_ptr(), gs.data_ptr()],
             (h * w, c), b, [[acc[i].data_ptr()] for i in range(n)])
        return gt, gs


def scale_gelu(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``F.gelu(t * s[:, None, None, :])`` (exact GELU) of NHWC float32 ``t`` on the CPU.

    Args:
        t: (B, H, W, C) float32 CPU tensor.
        s: (B, C) per-sample channel scales, float32 on the CPU.

    Raises:
        RuntimeError: the kernels are not ``available()``.
        ValueError: not float32 CPU tensors, or shapes that do not match.
    """
    if not available():
        raise RuntimeError(f"lgun native kernels unavailable: {build_error()}")
    for name, v, dims in (("t", t, 4), ("s", s, 2)):
        if v.dtype != torch.float32 or v.device.type != "cpu" or v.dim() != dims:
            raise ValueError(f"expected {name} as a {dims}-D float32 CPU tensor, got {v.dtype} "
                             f"{tuple(v.shape)} on {v.device}")
    if s.shape != (t.shape[0], t.shape[-1]):
        raise ValueError(f"scales {tuple(s.shape)} do not match t {tuple(t.shape)}")
    return _ScaleGelu.apply(t, s)
