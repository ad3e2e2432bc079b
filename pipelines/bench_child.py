"""The measuring side of ``pipelines.bench_model``: one measurement per fresh interpreter.

``python -m pipelines.bench_child SPEC_JSON`` builds what the spec names (an LGUN mode, a
peer network, a machine probe, an end-to-end run or a scene crop), measures it and prints
one JSON line. ``pipelines.bench_model`` starts one such process per measurement, so every
row has clean allocator state and its own thread count.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

E2E_SCENE = ("geotiff/titiler/TCI.tif", 300, 300)  # (file, column, row) of the LR crop
#: Peer networks: spandrel architecture and the hyper-parameters of the "light" model.
PEERS: dict[str, tuple[str, dict[str, Any]]] = {
    # SwinIR-light (Liang et al. 2021, Table: "lightweight" x4): embed 60, 4 x 6 blocks.
    "swinir-light": ("SwinIR", dict(in_chans=3, img_size=64, window_size=8, img_range=1.0,
                                    depths=[6, 6, 6, 6], embed_dim=60, num_heads=[6, 6, 6, 6],
                                    mlp_ratio=2, upsampler="pixelshuffledirect",
                                    resi_connection="1conv")),
    # SAFMN (Sun et al. 2023), the paper's x4 model: dim 36, 8 blocks.
    "safmn": ("SAFMN", dict(dim=36, n_blocks=8, ffn_scale=2.0)),
}



def _build_peer(name: str, scale: int) -> Any:
    import importlib

    arch, kwargs = PEERS[name]
    mod = importlib.import_module(f"spandrel.architectures.{arch}")
    cls = getattr(mod, arch)
    key = "upscaling_factor" if arch == "SAFMN" else "upscale"
    return cls(**kwargs, **{key: scale})


def _lgun(scale: int) -> tuple[Any, str]:
    """Shipped weights for the scale when installed (speed does not depend on them)."""
    import torch

    import lgun

    name = f"lgun-x{scale}"
    info = lgun.PRETRAINED.get(name)
    if info is not None and info.available:
        return lgun.load_pretrained(name, device="cpu"), name
    torch.manual_seed(0)
    return lgun.LGUN(scale=scale), "random weights"


def _onnx_session(model: Any, x: Any, threads: int, path: Path) -> Any:
    """The model exported by torch.onnx (dynamo) and run by ONNX Runtime's CPU provider.

    Plain nn.Conv2d kernels are exported (ONNX Runtime picks its own conv algorithms).
    Returns a callable with the model's signature (torch in, torch out) and ``parameters``.
    """
    import onnxruntime as ort
    import torch

    torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    class _Session:
        def __call__(self, t: Any) -> Any:
            return torch.from_numpy(sess.run(None, {name: t.numpy()})[0])

        def parameters(self) -> Any:
            return model.parameters()

    return _Session()


def _child_model(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from lgun.fast import tune_malloc

    threads, scale, size = spec["threads"], spec["scale"], spec["size"]
    torch.set_num_threads(threads)
    device = spec["device"]
    mode = spec["mode"]
    malloc = mode.endswith("+malloc")
    tuned = tune_malloc() if malloc else False
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    info: dict[str, Any] = {}
    if spec["model"] == "lgun":
        from lgun.complexity import count
        from lgun.fast import optimize_for_inference
        from lgun.layers import set_fast_kernels

        model, weights = _lgun(scale)
        model = model.eval().to(device)
        info["weights"] = weights
        info["multi_adds"] = count(model.config, size * scale, size * scale).multi_adds
        if mode == "reference":
            set_fast_kernels(model, False)
        elif mode.startswith("optimized"):
            model = optimize_for_inference(model)
        elif mode == "compile":
            model = torch.compile(model)
        elif mode == "onnxruntime":
            model = _onnx_session(set_fast_kernels(model, False), x, threads,
                                  Path(spec["compare"]).with_suffix(".onnx"))
    else:
        torch.manual_seed(0)
        model = _build_peer(spec["model"], scale).eval().to(device)
    info["params"] = sum(p.numel() for p in model.parameters())

    def fn() -> Any:
        if mode in ("bf16", "fp16"):
            dtype = torch.bfloat16 if mode == "bf16" else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                return model(x)
        return model(x)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        t0 = time.perf_counter()
        out = fn()
        sync()
        first = time.perf_counter() - t0
        times = []
        for _ in range(spec["repeat"]):
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
    prof = None
    if spec.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as p:
            fn()
        ops = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops) or 1
        prof = [(e.key, round(100 * e.self_cpu_time_total / total, 1), e.count)
                for e in ops[:8]]
    out = out.float().cpu()
    if spec.get("save"):
        torch.save(out, spec["save"])
    diff = None
    if spec.get("compare") and Path(spec["compare"]).exists():
        ref = torch.load(spec["compare"])
        diff = float((out - ref).abs().max()) if ref.shape == out.shape else None
    return {**info, "seconds": statistics.median(times), "first_s": first,
            "max_abs_diff": diff, "malloc_tuned": tuned, "out_shape": list(out.shape),
            "profile": prof}


def _child_machine(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    threads, device, n = spec["threads"], spec["device"], 2048
    torch.set_num_threads(threads)
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    cuda = torch.cuda.is_available()
    return {"matmul_gflops": 2 * n**3 / statistics.median(times[1:]) / 1e9,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "mkldnn": torch.backends.mkldnn.is_available()}


def _child_e2e(spec: dict[str, Any]) -> dict[str, Any]:
    """geosr.upscale with the optimized LGUN (what the CLI would run with lgun.fast)."""
    import torch

    from geosr.api import upscale
    from geosr.models import LGUNUpscaler
    from lgun.fast import optimize_for_inference, tune_malloc

    torch.set_num_threads(spec["threads"])
    tune_malloc()
    model, weights = _lgun(spec["scale"])
    up = LGUNUpscaler(optimize_for_inference(model.eval()), name=f"{weights} (lgun.fast)",
                      device="cpu")
    res = upscale(spec["src"], spec["dst"], scale=spec["scale"], model=up, overwrite=True)
    return {"seconds_inside": res.seconds, "tiles": res.tiles}


def _child_crop(spec: dict[str, Any]) -> dict[str, Any]:
    """Cut the e2e scene (a child, so the parent stays small for the RSS numbers)."""
    import rasterio

    from geosr.testing import data_root
    from pipelines.bench_upscale import _crop

    root = data_root()
    if root is None:
        return {"error": "shared data not found (set GEOSR_DATA)"}
    file, col, row = E2E_SCENE
    src = _crop(root / file, col, row, spec["size"], (1, 2, 3), Path(spec["dst"]))
    with rasterio.open(src) as ds:
        return {"file": file, "h": ds.height, "w": ds.width, "xres": ds.res[0],
                "yres": ds.res[1]}


def _child(spec_text: str) -> None:
    spec = json.loads(spec_text)
    kind = spec["kind"]
    fn = {"model": _child_model, "machine": _child_machine, "e2e": _child_e2e,
          "crop": _child_crop}[kind]
    print(json.dumps(fn(spec)), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
