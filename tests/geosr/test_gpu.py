"""CUDA inference equals CPU inference (marked ``gpu``: deselected by default; run with
``python -m pytest -m gpu tests/geosr/test_gpu.py`` on a machine with CUDA).

Skipped where CUDA is absent. Random-weight LGUNs: no shipped weights needed.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geosr.testing import REPO_ROOT

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def strict_fp32() -> Iterator[None]:
    """No TF32 in convolutions or matmuls, so CUDA float32 is comparable to CPU at 1e-3."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _tiny_net(scale: int, seed: int = 0) -> torch.nn.Module:
    import lgun

    torch.manual_seed(seed)
    return lgun.LGUN(scale=scale, channels=16, num_blocks=2, num_heads=4)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.usefixtures("strict_fp32")
def test_lgun_upscaler_cuda_equals_cpu(scale: int) -> None:
    from geosr.models import LGUNUpscaler

    net = _tiny_net(scale)
    cpu = LGUNUpscaler(copy.deepcopy(net), name="tiny", device="cpu")
    gpu = LGUNUpscaler(net, name="tiny", device="cuda")
    assert gpu.device.startswith("cuda") and cpu.device == "cpu"
    x = np.random.default_rng(0).random((2, 3, 40, 48)).astype(np.float32)
    a, b = cpu(x), gpu(x)
    assert b.shape == a.shape == (2, 3, 40 * scale, 48 * scale) and b.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=1e-3, rtol=0)


def test_cli_device_cuda_equals_cpu(tmp_path: Path, make_raster: Callable[..., Path]) -> None:
    """``geosr upscale --device cuda`` as a user runs it (TF32 convolutions, torch's
    default) matches ``--device cpu`` within 1% of the band range."""
    import lgun

    weights = tmp_path / "w.safetensors"
    lgun.save_weights(_tiny_net(2, seed=3), weights)
    src = make_raster("scene.tif", (3, 70, 90), seed=5, dtype="float32", gain=1.0)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    outs = {}
    for device in ("cpu", "cuda"):
        dst = tmp_path / f"{device}.tif"
        res = subprocess.run(
            [sys.executable, "-m", "geosr.cli", "upscale", str(src), "-o", str(dst),
             "--scale", "2", "-m", str(weights), "--device", device, "--tile-size", "48",
             "--overlap", "8"], capture_output=True, text=True, timeout=300, env=env,
            cwd=REPO_ROOT)
        assert res.returncode == 0, res.stderr
        with rasterio.open(dst) as d:
            outs[device] = (d.read(), d.tags(), d.transform)
    (a, tags_a, tr_a), (b, tags_b, tr_b) = outs["cpu"], outs["cuda"]
    assert a.shape == b.shape == (3, 140, 180) and tr_a == tr_b
    assert tags_a["GEOSR_WEIGHTS_SHA256"] == tags_b["GEOSR_WEIGHTS_SHA256"] != "none"
    np.testing.assert_allclose(b, a, atol=1e-2, rtol=0)
    assert float(np.abs(b - a).mean()) < 1e-3
