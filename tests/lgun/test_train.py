"""Training pipeline: sampler, exact resume, init across scales, optimiser, publishing,
and the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lgun import LGUN, PRETRAINED, load_pretrained, read_weights_meta, save_weights
from lgun.data import PairPool, PairSampler, Source, build_sampler, lr_patch_size
from lgun.degrade import DegradationMix
from lgun.imresize import bicubic_downscale
from lgun.model import LGUNConfig
from lgun.train import OptimConfig, PublishConfig, ScheduleConfig, TrainConfig, train
from lgun.training.batches import BatchStream
from lgun.training.optim import configure_optimizer, make_ema, make_optimizer, update_ema
from lgun.training.publish import publish
from lgun.training.schedule import lr_factor, progress
from lgun.training.warmstart import build_model, fit_reconstruction

TINY = {"channels": 16, "num_blocks": 2, "num_heads": 4}


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random RGB image (upsampled noise), so bicubic pairs look like real ones."""
    small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    for folder, n in (("train", 3), ("val", 2)):
        (root / folder).mkdir()
        for i in range(n):
            Image.fromarray(_smooth_image(rng, 40 + 4 * i, 48)).save(root / folder / f"{i}.png")
    return root


def _tiny_cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict = dict(
        name="tiny", scale=2, model=TINY, out_dir=str(out),
        data={"sources": [{"name": "t", "paths": [str(data / "train")]}], "patch_size": 16,
              "batch_size": 2},
        schedule={"steps": 4}, checkpoint={"every": 2, "keep_every": 2},
        eval={"every": 0, "dataset": str(data / "val")},
        runtime={"num_threads": 1, "device": "cpu"},
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_patch_sizes() -> None:
    assert [lr_patch_size(64, s) * s for s in (2, 3, 4)] == [64, 63, 64]


def test_sampler_is_deterministic_and_pairs_are_aligned() -> None:
    rng = np.random.default_rng(1)
    images = [_smooth_image(rng, 72, 96), _smooth_image(rng, 90, 66)]
    pool = PairPool(images, 3, lr_patch_size(64, 3))
    sampler = PairSampler([pool, pool], [3, 1], patch_size=64, seed=5)
    lr, hr = sampler.batch(7, 4)
    assert lr.shape == (4, 3, 21, 21) and hr.shape == (4, 3, 63, 63)
    assert lr.dtype == hr.dtype == np.float32 and 0 <= lr.min() and hr.max() <= 1
    lr2, hr2 = sampler.batch(7, 4)
    assert np.array_equal(lr, lr2) and np.array_equal(hr, hr2)
    assert not np.array_equal(lr, sampler.batch(8, 4)[0])
    # The same rotation/flip went to both: the HR patch downscaled is close to the LR patch
    # (not equal: the patch border sees other neighbours than in the whole image).
    hr_u8 = np.round(hr * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    down = bicubic_downscale(hr_u8, 3).astype(np.float32) / 255
    inner = np.abs(down - lr.transpose(0, 2, 3, 1))[:, 2:-2, 2:-2]
    assert inner.mean() < 0.01


def test_batches_made_by_workers_are_the_loops_batches(tiny_data: Path) -> None:
    mix = DegradationMix((("bicubic", 1.0), ("box", 1.0), ("psf", 1.0)), noise_std=2.0)
    sampler = build_sampler([Source("t", (str(tiny_data / "train"),))], 2, patch_size=16,
                            degradation=mix)
    with BatchStream(sampler, 3, 5, 9) as here, BatchStream(sampler, 3, 5, 9,
                                                              workers=2) as ahead:
        pairs = list(zip(here, ahead, strict=True))
    assert len(pairs) == 4  # steps 5..8, in order
    for step, ((lr_a, hr_a), (lr_b, hr_b)) in enumerate(pairs, start=5):
        lr, hr = sampler.batch(step, 3)
        assert lr_b.shape == (3, 3, 8, 8) and hr_b.dtype == torch.float32
        for a, b, ref in ((lr_a, lr_b, lr), (hr_a, hr_b, hr)):
            assert torch.equal(a, b) and np.array_equal(b.numpy(), ref)
    assert here.wait_s > 0 and ahead.wait_s > 0
    with pytest.raises(ValueError, match="data_workers must be >= 0"):
        TrainConfig.from_dict({"runtime": {"data_workers": -1}})


def test_schedule_ends_at_the_floor() -> None:
    cfg = ScheduleConfig(steps=10, min_learning_rate=1e-7)
    assert lr_factor(0, 0.0, cfg, 5e-4) == pytest.approx(1.0)
    assert lr_factor(10, 1.0, cfg, 5e-4) * 5e-4 == pytest.approx(1e-7)
    assert progress(5, 0.0, cfg) == 0.5
    timed = ScheduleConfig(steps=10, max_minutes=1.0)
    assert progress(1, 45.0, timed) == 0.75


def test_two_step_checkpoint_resumes_to_the_same_state(tiny_data: Path, tmp_path: Path) -> None:
    full = train(_tiny_cfg(tiny_data, tmp_path / "a"))
    assert json.loads((full / "config.json").read_text())["schedule"]["steps"] == 4
    two = full / "step_000002.pt"
    ck2 = torch.load(two, map_location="cpu", weights_only=True)  # no pickle of objects
    assert ck2["step"] == 2 and ck2["torch_rng"].dtype == torch.uint8
    # Resumed with batches made ahead by worker processes: the same batches, the same state.
    resumed = train(_tiny_cfg(tiny_data, tmp_path / "b", resume=str(two),
                              runtime={"num_threads": 1, "device": "cpu", "data_workers": 2}))
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"])
    # Training moved the weights, and the run left evaluable final weights.
    assert not torch.equal(a["model"]["head.weight"], ck2["model"]["head.weight"])
    assert load_pretrained(full / "final.safetensors").config.channels == 16
    assert json.loads((full / "log.jsonl").read_text().splitlines()[-1])["step"] == 4


def test_init_from_another_scale_copies_all_but_rec(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = LGUN(scale=2, **TINY)
    path = save_weights(src, tmp_path / "x2")
    model, note = build_model(LGUNConfig(scale=4), init_from=str(path))
    assert model.config.scale == 4 and model.config.channels == 16 and "x2" in note
    for k, v in model.state_dict().items():
        same = torch.equal(v, src.state_dict()[k]) if not k.startswith("rec.") else None
        assert same is None or same, k
    assert model.rec[0].weight.shape[0] == 3 * 16


def test_fitted_reconstruction_starts_as_a_good_upsampler() -> None:
    rng = np.random.default_rng(2)
    pool = PairPool([_smooth_image(rng, 96, 96) for _ in range(3)], 2, 8)
    sampler = PairSampler([pool], [1.0], patch_size=16, seed=0)
    model, _ = build_model(LGUNConfig(scale=2, **TINY))  # init="fit": identity blocks
    batches = [tuple(map(torch.from_numpy, sampler.batch(i, 8))) for i in range(2)]
    fitted = fit_reconstruction(model, batches)
    with torch.no_grad():
        lr, hr = batches[0]
        assert torch.equal(model.blocks(model.head(lr)), model.head(lr))  # blocks = identity
        mse = float(((model(lr) - hr) ** 2).mean())
    nearest = float(((torch.nn.functional.interpolate(lr, scale_factor=2) - hr) ** 2).mean())
    assert mse < nearest  # better than nearest-neighbour upsampling
    assert fitted == pytest.approx(10 * np.log10(1 / mse), abs=1.0)


def test_optimizer_choice_coupled_vs_decoupled_weight_decay() -> None:
    """The diagnosis of the stalled CPU runs: with a gradient far below ``wd * |w|`` (the
    layers behind a zeroed output; 1e-9..1e-11 measured in lgun-x2), Adam's L2 term moves a
    weight ~lr per step towards zero, while AdamW shrinks it by (1 - lr * wd) only."""

    def run(optimizer: str, steps: int = 20) -> float:
        w = torch.nn.Parameter(torch.full((4,), 0.1))
        cfg = OptimConfig(name=optimizer, learning_rate=1e-3, weight_decay=1e-4)
        opt = make_optimizer([w], cfg)
        for _ in range(steps):
            opt.zero_grad()
            (0 * w).sum().backward()  # no gradient: a layer behind a zeroed output
            opt.step()
        return float(w[0].detach())

    assert run("adam") == pytest.approx(0.1 - 20 * 1e-3, rel=0.02)  # collapses
    assert run("adamw") == pytest.approx(0.1 * (1 - 1e-3 * 1e-4) ** 20, rel=1e-4)
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(name="sgd")
    # Resuming an "adam" checkpoint as "adamw" switches the saved groups to decoupled decay.
    w = torch.nn.Parameter(torch.ones(2))
    adamw_cfg = OptimConfig(name="adamw", weight_decay=0.0)
    opt = make_optimizer([w], adamw_cfg)
    opt.load_state_dict(make_optimizer([w], OptimConfig(name="adam")).state_dict())
    configure_optimizer(opt, adamw_cfg)
    assert opt.param_groups[0]["weight_decay"] == 0.0
    assert opt.param_groups[0].get("decoupled_weight_decay", True)


def test_fused_optimizer_matches_the_loop_and_resumes() -> None:
    """The fused kernel (chosen on CPU) takes the for-loop AdamW's steps up to fp32 rounding,
    and a checkpoint of a for-loop run resumes on it."""
    torch.manual_seed(0)
    cfg = OptimConfig(name="adamw", learning_rate=1e-3, weight_decay=1e-4)
    fused = [torch.nn.Parameter(torch.randn(8, 5)), torch.nn.Parameter(torch.randn(3))]
    loop = [torch.nn.Parameter(p.detach().clone()) for p in fused]
    opt = make_optimizer(fused, cfg)
    ref = torch.optim.AdamW(loop, lr=1e-3, weight_decay=1e-4, fused=False, foreach=False)
    assert opt.param_groups[0]["fused"]
    for _ in range(30):
        for p, q in zip(fused, loop, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(fused, loop, strict=True):
        assert not torch.equal(p, torch.zeros_like(p))
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    resumed = make_optimizer(fused, cfg)
    resumed.load_state_dict(ref.state_dict())  # its groups say fused=None
    configure_optimizer(resumed, cfg)
    assert resumed.param_groups[0]["fused"]
    before = fused[0].detach().clone()
    fused[0].grad = torch.ones_like(fused[0])
    resumed.step()
    assert not torch.equal(before, fused[0])


def test_ema_update_matches_per_parameter_lerp() -> None:
    model = LGUN(scale=2, **TINY)
    ema = make_ema(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    want = [pe + (p - pe) * (1 - min(0.9, 6 / 15)) for pe, p
            in zip(ema.parameters(), model.parameters(), strict=True)]
    update_ema(ema, model, 0.9, step=5)
    for got, w in zip(ema.parameters(), want, strict=True):
        torch.testing.assert_close(got, w)
    with pytest.raises(ValueError, match="parameters"):
        update_ema(ema, LGUN(scale=2), 0.9, step=0)


def test_publish_only_when_better(tmp_path: Path) -> None:
    cfg = PublishConfig(name="lgun-x2", dir=str(tmp_path), datasets=("Set5",), min_psnr=30.0)
    model = LGUN(scale=2, **TINY)
    path = tmp_path / "lgun-x2.json"

    def go(psnr: float, run: str) -> bool:
        return publish(model, cfg, 2, {"run_id": run}, {"Set5": {"psnr": psnr, "ssim": 0.9}},
                       device=torch.device("cpu"))

    assert not go(29.0, "r1") and not path.exists()  # below the floor (bicubic)
    assert go(31.0, "r1") and read_weights_meta(tmp_path / "lgun-x2.safetensors")
    assert not go(30.5, "r2")  # worse than shipped
    assert go(31.0, "r1")  # same run, same score: re-publish (e.g. with more metrics)
    assert not go(31.0, "r2")  # another run must beat it
    assert go(31.5, "r2")
    assert json.loads(path.read_text())["metrics"]["Set5"]["psnr"] == 31.5


def test_build_sampler_reads_folders(tiny_data: Path) -> None:
    s = build_sampler([Source("t", (str(tiny_data / "train"),))], 4, patch_size=16)
    assert s.hr_patch == 16 and len(s.pools[0]) == 3


# --- shipped weights ---------------------------------------------------------------------------

SHIPPED = [name for name, info in PRETRAINED.items() if info.available]


@pytest.mark.parametrize("name", SHIPPED or [pytest.param("none", marks=pytest.mark.skip)])
def test_shipped_weights_load_and_describe_themselves(name: str) -> None:
    model = load_pretrained(name)
    meta = read_weights_meta(name)
    info = PRETRAINED[name]
    assert meta["name"] == name and model.config.scale == info.scale
    assert meta["config"] == model.config.to_dict()
    training = meta["training"]
    for key in ("data", "steps", "batch", "patch", "hardware", "wall_s", "date", "init_from"):
        assert key in training, key
    metrics = meta["metrics"]
    primary = "Set5" if info.domain == "natural" else "aid150"
    assert metrics[primary]["psnr"] > 0 and metrics[primary]["protocol"] == "y"
    paths = " ".join(p for s in training["data"] for p in s["paths"])
    assert ("aid150" in paths) == (info.domain == "aerial")


@pytest.mark.data
@pytest.mark.skipif(not PRETRAINED["lgun-x2"].available, reason="lgun-x2 not shipped yet")
def test_shipped_x2_beats_bicubic_on_set5(shared_data: Path) -> None:
    from lgun.evaluate import evaluate_model

    ours = evaluate_model("lgun-x2", "Set5", 2, data_root=shared_data)
    bicubic = evaluate_model("bicubic", "Set5", 2, data_root=shared_data)
    assert ours["psnr"] > bicubic["psnr"] + 0.5
    # The metrics in the JSON are what the evaluation gives.
    recorded = read_weights_meta("lgun-x2")["metrics"]["Set5"]
    assert recorded["psnr"] == pytest.approx(ours["psnr"], abs=1e-3)


def test_l2_loss_trains_differently_and_is_recorded(tiny_data: Path, tmp_path: Path) -> None:
    from lgun.pretrained import weights_meta

    final = {}
    for loss in ("l1", "l2"):
        run = train(_tiny_cfg(tiny_data, tmp_path / loss, optim={"loss": loss},
                              schedule={"steps": 2}))
        final[loss] = torch.load(run / "last.pt", weights_only=True)["model"]
        assert weights_meta(run / "final.safetensors").training["recipe"]["loss"] == loss.upper()
    assert any(not torch.equal(v, final["l2"][k]) for k, v in final["l1"].items())


def test_weights_record_their_degradation_and_scores(tiny_data: Path, tmp_path: Path) -> None:
    from lgun.pretrained import metric_key, weights_meta
    from lgun.training.config import DataConfig
    from lgun.training.lineage import degradation_record
    from pipelines.record_metrics import main as record_main

    mix = {"bicubic": 0.5, "box": 0.25, "psf": 0.25}
    data = DataConfig(sources=(Source("t", (str(tiny_data / "train"),)),), degradation=mix)
    rec = degradation_record(data)
    assert rec["weights"] == mix and rec["psf_sigma"] == [0.3, 0.7]
    assert degradation_record(DataConfig()) == {"weights": {"bicubic": 1.0}}
    path = save_weights(LGUN(scale=2, **TINY), tmp_path / "w.safetensors",
                        metadata={"training": {"degradation": rec, "data": [{"name": "t"}]},
                                  "metrics": {"Set5": {"psnr": 30.0, "ssim": 0.9}}})
    assert metric_key("aid150") == "aid150" and metric_key("aid150", "box") == "aid150@box"
    assert record_main([str(path), "--dataset", str(tiny_data / "val"),
                        "--degradation", "bicubic", "box", "--threads", "1"]) == 0
    meta = weights_meta(path)
    assert meta.degradation == mix
    val = str(tiny_data / "val")
    assert set(meta.tested_on) == {"Set5", val}
    assert set(meta.tested_on[val]) == {"bicubic", "box"} and meta.tested_on["Set5"] == {
        "bicubic": 30.0}
    assert meta.metrics[f"{val}@box"]["degradation"] == "box"
    assert weights_meta("lgun-x2").degradation == {"bicubic": 1.0}  # records before the field


def test_half_storage_loads_back_as_float32(tmp_path: Path) -> None:
    from lgun.pretrained import load_weights

    model = LGUN(scale=2, **TINY)
    a = save_weights(model, tmp_path / "a.safetensors")
    b = save_weights(model, tmp_path / "b.safetensors", storage="float16")
    assert b.stat().st_size < 0.6 * a.stat().st_size
    loaded, meta = load_weights(b)
    assert meta.extra["storage"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x), atol=2e-3)
    with pytest.raises(ValueError, match="storage"):
        save_weights(model, tmp_path / "c.safetensors", storage="bfloat16")
    assert PublishConfig().storage == "float16"
