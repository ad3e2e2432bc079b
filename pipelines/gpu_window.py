"""``python -m pipelines.gpu_window``: one GPU window of at most ~9 minutes, in one command.

``prepare`` (here: the pack and the sets that travel, under .pack/), then ``run`` (the default
command, on the GPU: ``--out DIR [--minutes 8] [--compile]``), then ``publish DIR`` (here).
docs/TRAINING.md gives the procedure. Within ``--minutes`` in all, the window runs

1. the CUDA check of ``pipelines.gpu_cuda_check`` (<= 90 s) -> ``DIR/gpu_check.json``;
2. the stages of ``PLAN``, each ``lgun.train.train`` time-boxed to its share of the minutes
   left (run folders under ``runs/gpu_window/``, never returned; nothing is published there);
3. Set5/Set14/B100 (Y) of every candidate on the GPU -> ``DIR/<name>.safetensors`` + ``.json``;

8 files in ``DIR`` with ``gpu_window.log``. ``--smoke``: the same code on CPU in under 2
minutes, on synthetic images. Only ``lgun`` is imported (the GPU machine has no rasterio).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lgun.paths import default_data_root

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / ".pack" / "natural.zip"  # /.pack/ is gitignored: it travels as `carry`
BENCH = REPO / ".pack" / "benchmark"  # the data root layout: natural/benchmark/<set>/HR
RECIPE = REPO / "pipelines" / "configs" / "gpu_window.toml"  # the recipe every stage shares
SETS = ("Set5", "Set14", "B100")
MIB = 1 << 20
TRAVEL_LIMIT = 64 * MIB  # working tree + carried paths, on the way to a GPU machine
TRAVEL_MARGIN = 4 * MIB  # for files that others add before the window
PACK_PATCH = 192  # crop side: a multiple of 2, 3 and 4, larger than every HR patch of PLAN
LOG_NAME, CHECK_NAME = "gpu_window.log", "gpu_check.json"
END_MARGIN_S = 15.0  # left unplanned at the end of the window
SMOKE_STEPS, SMOKE_BATCH, SMOKE_PATCH = 3, 2, 32

log = logging.getLogger("pipelines.gpu_window")


@dataclass(frozen=True)
class Stage:
    """One training stage of a window (warm-up, cosine, EMA: from the recipe)."""

    name: str  # weight name of the candidate, and of the shipped weights it may replace
    scale: int
    # A weight name: this window's weights of that name if any, else the shipped ones (at
    # another scale all but ``rec.*`` is copied, REC least-squares fitted: warmstart.py).
    init_from: str
    # Fraction of the training time left when the stage starts, renormalised over the stages
    # still to run (an early or late end moves time to the later ones).
    share: float
    batch_size: int
    patch_size: int  # HR side; the pack's crops are PACK_PATCH
    learning_rate: float  # peak


# The plan. Batches and patches are UNTESTED choices for one H200 and a 0.7M-parameter model:
# the CPU recipe (batch 8-16 of 64-pixel HR patches) would leave the GPU mostly idle, so 4-8x
# the patches per step and 2-6x the pixels per patch; the LR patches (64, 48, 40) keep the LR
# pixels per step about equal (131k, 147k, 102k). The patches leave the crops room to move
# (LR 64 of 96, 48 of 64, 40 of 48 positions per side).
PLAN: tuple[Stage, ...] = (
    # x2 body first: the x3/x4 trained from a better x2 body gained ~1 dB on 2026-11-26
    # (docs/TRAINING_LOG.md). A warm restart of the shipped x2 at a lower peak, as the CPU
    # restart that gained 0.09 dB (2e-4 at batch 8; a bit higher for batch 32).
    Stage("lgun-x2", 2, "lgun-x2", 0.40, 32, 128, 3e-4),
    # x4 from the new x2 body, REC refitted (the CPU x4 made most of its gain in 1000 steps).
    Stage("lgun-x4", 4, "lgun-x2", 0.35, 64, 160, 5e-4),
    # x3 last and shortest: the same body, the smallest gain per minute so far.
    Stage("lgun-x3", 3, "lgun-x2", 0.25, 64, 144, 5e-4),
    # AERIAL SLOT (not run: its recipe does not exist yet). lgun-aid-x2/x3/x4 fine-tunes from
    # this window's natural candidates need an aerial pack (one more `carry` path, within the
    # 64 MiB), a share here, and room among the 8 returned files (or a second window).
    # Stage("lgun-aid-x2", 2, "lgun-x2", 0.?, ?, ?, ?),
)


# ------------------------------------------------ What travels: the pack and the benchmark sets


def copy_benchmark(src_root: Path, dest: Path) -> Path:
    """Copy Set5/Set14/B100 HR into ``dest`` (the data root's layout). Set5 (validated in
    training) and grey images are copied as they are; other RGB images become lossless WebP
    (~35% smaller than PNG, checked to decode to the same pixels): more room for the pack."""
    from PIL import Image

    from lgun.evaluate import DATASETS, load_dataset

    for ds in SETS:
        folder = dest / DATASETS[ds]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for _, path in load_dataset(ds, src_root):
            with Image.open(path) as im:
                im.load()
            buf = io.BytesIO()
            if ds != "Set5" and im.mode == "RGB":
                im.save(buf, "WEBP", lossless=True, quality=50, method=4)
                with Image.open(buf) as back:
                    if np.array_equal(np.asarray(back.convert("RGB")), np.asarray(im)):
                        (folder / f"{path.stem}.webp").write_bytes(buf.getvalue())
                        continue
            shutil.copyfile(path, folder / path.name)
    return dest


def materialise_benchmark(bench: Path, dest: Path) -> list[str]:
    """Decode the carried sets into a data root at ``dest`` (PNG); returns the sets there.
    A set that fails to decode is left out whole (logged): no score is of a partial set."""
    from PIL import Image

    from lgun.evaluate import DATASETS

    present = []
    for ds in SETS:
        src, out = bench / DATASETS[ds], dest / DATASETS[ds]
        try:
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.iterdir()):
                if f.suffix != ".webp":
                    shutil.copyfile(f, out / f.name)
                    continue
                with Image.open(f) as im:
                    im.save(out / f"{f.stem}.png", compress_level=1)
            present.append(ds)
        except Exception:
            log.exception("benchmark %s unavailable", ds)
            shutil.rmtree(out, ignore_errors=True)
    return present


def travelling_bytes() -> int:
    """Bytes of the working tree that travel: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((REPO / n).stat().st_size for n in set(names) if n and (REPO / n).is_file())


def prepare(data_root: Path, *, max_mib: float) -> None:
    """Write ``.pack/benchmark`` and ``.pack/natural.zip``, the pack sized to what is left."""
    from lgun.pack import build_pack
    from lgun.training.config import NATURAL_SOURCES

    copy_benchmark(data_root, BENCH)
    tree = travelling_bytes()
    bench = sum(f.stat().st_size for f in BENCH.rglob("*") if f.is_file())
    budget = int(min(max_mib * MIB, TRAVEL_LIMIT - TRAVEL_MARGIN - tree - bench))
    header = build_pack(PACK, NATURAL_SOURCES, patch=PACK_PATCH, per_image=2,
                        max_bytes=budget, data_root=data_root)
    pack = PACK.stat().st_size
    print(f"tree {tree / MIB:.1f} MiB + benchmark {bench / MIB:.1f} MiB + pack {pack / MIB:.1f}"
          f" MiB ({len(header['crop_source'])} crops {PACK_PATCH}x{PACK_PATCH}) = "
          f"{(tree + bench + pack) / MIB:.1f} MiB of {TRAVEL_LIMIT // MIB}")


def make_synthetic_data(root: Path) -> Path:
    """A tiny data root of random blocks with softened edges (training folder and the three
    sets), on which a trained LGUN beats bicubic as on natural images."""
    from PIL import Image, ImageFilter

    from lgun.evaluate import DATASETS

    rng = np.random.default_rng(0)
    files = [(f"natural/train/T91/t{i}.png", 96, 120, False) for i in range(4)] + [
        (f"{DATASETS[ds]}/{i}.png", 48, 60, ds == "Set14" and i == 1)  # one grey image
        for ds in SETS for i in range(2)]
    for name, h, w, grey in files:
        small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.NEAREST)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        im.filter(ImageFilter.GaussianBlur(0.8)).convert("L" if grey else "RGB").save(root / name)
    return root


# ---------------------------------------------------------------------------------- The window


def stage_config(base: Any, stage: Stage, *, init_from: str, minutes: float, pack: Path,
                 data_root: Path, run_dir: Path, device: str, smoke: bool,
                 compile_model: bool) -> Any:
    """The recipe's ``TrainConfig`` with the stage's values; publishing off."""
    from lgun.data import Source

    r = dataclasses.replace
    return r(base, name=f"gpu-{stage.name}", scale=stage.scale, init_from=init_from, resume="",
             out_dir=str(run_dir), fit_batches=1 if smoke else base.fit_batches,
             data=r(base.data, sources=(Source("natural", (os.path.relpath(pack),)),),
                    root=str(data_root), batch_size=SMOKE_BATCH if smoke else stage.batch_size,
                    patch_size=SMOKE_PATCH if smoke else stage.patch_size),
             optim=r(base.optim, learning_rate=stage.learning_rate),
             schedule=r(base.schedule, max_minutes=float(minutes),
                        steps=SMOKE_STEPS if smoke else base.schedule.steps),
             eval=r(base.eval, every=0, dataset="Set5"),
             publish=r(base.publish, name="", dir=""),  # never publish on the GPU machine
             runtime=r(base.runtime, device=device, compile=compile_model,
                       log_every=1 if smoke else base.runtime.log_every))


def run_stage(cfg: Any, stage: Stage, *, out: Path, sets: Sequence[str], window: dict
              ) -> dict[str, Any]:
    """Train, evaluate on ``sets``, write the candidate pair; returns its summary."""
    import torch

    from lgun.pretrained import load_weights, save_weights
    from lgun.train import train
    from lgun.training.publish import validate

    t0 = time.time()
    run_dir = train(cfg)
    t1 = time.time()
    device = torch.device(cfg.runtime.device)
    final = load_weights(run_dir / "final.safetensors", device=device)
    metrics = {ds: {**validate(final.model, ds, stage.scale, device=device,
                               data_root=cfg.data.root), "device": str(device)} for ds in sets}
    save_weights(final.model, out / f"{stage.name}.safetensors", name=stage.name, metadata={
        "training": final.meta.training, "history": final.meta.extra.get("history", []),
        "metrics": metrics, "gpu_window": {**window, "stage": dataclasses.asdict(stage),
                                           "init_from": cfg.init_from}})
    return {"stage": stage.name, "run_dir": str(run_dir), "init_from": cfg.init_from, "steps":
            final.meta.training.get("steps"), "train_s": round(t1 - t0, 1),
            "loop_s": final.meta.training.get("wall_s"), "eval_s": round(time.time() - t1, 1),
            **{ds: m["psnr"] for ds, m in metrics.items()}}


def run_window(out: Path, *, minutes: float, smoke: bool, compile_model: bool, device: str,
               runs_dir: Path | None) -> int:
    """The whole window; returns the exit status (1 when a stage produced no candidate).
    ``main`` sends the log lines to ``out/gpu_window.log`` and stderr."""
    from lgun.data import Source
    from lgun.pack import build_pack
    from pipelines.gpu_cuda_check import run_check
    from pipelines.train import load_config

    t_start = time.time()
    deadline = t_start + minutes * 60 - END_MARGIN_S
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="gpu_window_") as tmp_name:
        tmp = Path(tmp_name)
        if smoke:  # the same path on CPU: synthetic images, a tiny pack, a temporary run folder
            src = make_synthetic_data(tmp / "src")
            pack = tmp / "natural.zip"
            build_pack(pack, [Source("natural", ("natural/train/T91",))], patch=48,
                       per_image=4, max_bytes=4 * MIB, data_root=src)
            bench, runs = copy_benchmark(src, tmp / "benchmark"), tmp / "runs"
        else:
            pack, bench, runs = PACK, BENCH, (runs_dir or Path("runs/gpu_window")) / stamp
            if not (pack.is_file() and bench.is_dir()):
                log.error("%s or %s missing: run `python -m pipelines.gpu_window prepare` "
                          "and carry .pack", pack, bench)
                return 2
        data_root = tmp / "data"
        sets = materialise_benchmark(bench, data_root)
        os.environ["GEOSR_DATA"] = str(data_root)
        window = {"smoke": smoke, "minutes": minutes, "compile": compile_model,
                  "device": device, "started": stamp}
        log.info("window %s%s (pack %.1f MiB, sets %s)", json.dumps(window), " SMOKE RUN: CPU,"
                 " synthetic data" if smoke else "", pack.stat().st_size / MIB, ",".join(sets))
        try:
            check = run_check(out / CHECK_NAME, device=device, smoke=smoke, data_root=data_root)
            log.info("check: all passed %s (%.0f s)", check["all_passed"], check["seconds"])
        except Exception:
            log.exception("check failed; training goes on")

        base = load_config(RECIPE)
        eval_s, overhead_s = (5.0, 5.0) if smoke else (25.0, 20.0)  # refined by each stage
        done: dict[str, Path] = {}
        rows = []
        for i, stage in enumerate(PLAN):
            left = PLAN[i:]
            train_s = (deadline - time.time() - len(left) * (eval_s + overhead_s)) * (
                stage.share / sum(s.share for s in left))
            if train_s < 10 and not smoke:
                log.error("stage %s skipped: %.0f s left to train", stage.name, train_s)
                continue
            init = str(done.get(stage.init_from, stage.init_from))
            cfg = stage_config(base, stage, init_from=init, minutes=max(train_s, 1) / 60,
                               pack=pack, data_root=data_root, run_dir=runs / stage.name,
                               device=device, smoke=smoke, compile_model=compile_model)
            log.info("stage %s: x%d from %s, %.0f s of training, batch %d, patch %d, lr %g",
                     stage.name, stage.scale, init, train_s, cfg.data.batch_size,
                     cfg.data.patch_size, stage.learning_rate)
            try:
                row = run_stage(cfg, stage, out=out, sets=sets, window=window)
            except Exception:
                log.exception("stage %s failed", stage.name)
                continue
            # Later stages start from the run's final weights (the path is in their lineage).
            done[stage.name] = Path(row.pop("run_dir")) / "final.safetensors"
            rows.append(row)
            eval_s = row["eval_s"]  # x2 evaluates the most LR pixels: a bound for the rest
            overhead_s = max(overhead_s, row["train_s"] - (row["loop_s"] or 0))
            log.info("stage %s: %s", stage.name, json.dumps(row))
        log.info("window done in %.0f s: %d of %d candidates in %s", time.time() - t_start,
                 len(rows), len(PLAN), out)
    return 0 if len(rows) == len(PLAN) else 1


# ----------------------------------------------------------- Publishing, back on the CPU machine


def publish_candidates(folder: Path, *, weights_dir: Path | None = None,
                       data_root: Path | None = None, dataset: str = "Set5"
                       ) -> list[dict[str, Any]]:
    """Score each candidate of ``folder`` and the weights it would replace on ``dataset`` here
    (CPU); publish it (``save_weights``) only if it beats them and bicubic. Smoke candidates
    are never written into the shipped weights (only into a ``weights_dir``)."""
    import torch

    from lgun.evaluate import evaluate_model
    from lgun.pretrained import WEIGHTS_DIR, load_pretrained, load_weights, save_weights
    from lgun.training.publish import validate

    cpu = torch.device("cpu")
    rows = []
    for cand in sorted(folder.glob("*.safetensors")):
        new = load_weights(cand)  # sha256-checked
        name, scale = new.meta.name, new.meta.scale
        target = (weights_dir or WEIGHTS_DIR) / f"{name}.safetensors"
        score = validate(new.model, dataset, scale, device=cpu, data_root=data_root)
        old = (validate(load_pretrained(target), dataset, scale, device=cpu, data_root=data_root)
               ["psnr"] if target.is_file() else -math.inf)
        floor = round(evaluate_model("bicubic", dataset, scale, data_root=data_root)["psnr"], 4)
        smoke = bool(new.meta.extra.get("gpu_window", {}).get("smoke"))
        publish = score["psnr"] > max(old, floor) and not (smoke and weights_dir is None)
        if publish:  # the CPU score replaces the GPU one; the other sets keep theirs
            metrics = {**new.meta.metrics, dataset: {**score, "device": "cpu"}}
            save_weights(new.model, target, name=name, metadata={
                "training": new.meta.training, **new.meta.extra, "metrics": metrics})
        rows.append({"name": name, "old": old, "new": score["psnr"], "bicubic": floor,
                     "gpu": new.meta.metrics.get(dataset, {}).get("psnr", math.nan),
                     "decision": "published" if publish else
                     ("kept (smoke candidate)" if smoke and score["psnr"] > max(old, floor)
                      else "kept"), "target": str(target)})
    print(f"{'weights':<12} {dataset + ' old':>10} {'new (CPU)':>10} {'new (GPU)':>10} "
          f"{'bicubic':>8}  decision")
    for r in rows:
        print(f"{r['name']:<12} {r['old']:>10.4f} {r['new']:>10.4f} {r['gpu']:>10.4f} "
              f"{r['bicubic']:>8.4f}  {r['decision']}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; ``run`` is the default command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("run", "prepare", "publish", "-h", "--help"):
        args.insert(0, "run")
    p = argparse.ArgumentParser(prog="python -m pipelines.gpu_window",
                                description="One GPU window: prepare here, run (the default "
                                            "command) on the GPU, publish here.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="(default) check, train the plan, evaluate; on the GPU")
    r.add_argument("--out", type=Path, required=True, help="folder of the returned files")
    r.add_argument("--minutes", type=float, default=None,
                   help="wall budget of the whole window (default 8; smoke 1.5)")
    r.add_argument("--smoke", action="store_true", help="same path on CPU, tiny sizes")
    r.add_argument("--compile", action="store_true", help="torch.compile (its time counts)")
    r.add_argument("--device", default="cuda", help="training/check device (default cuda)")
    r.add_argument("--runs-dir", type=Path, help="default runs/gpu_window/<UTC time>")
    pr = sub.add_parser("prepare", help="build .pack/natural.zip and .pack/benchmark here")
    pr.add_argument("--data-root", type=Path, help="default: $GEOSR_DATA")
    pr.add_argument("--max-mib", type=float, default=35.0, help="pack size cap (MiB)")
    pu = sub.add_parser("publish", help="publish the candidates of DIR that beat the shipped")
    pu.add_argument("folder", type=Path, help="the window's DIR")
    pu.add_argument("--weights-dir", type=Path, help="publish here, not into lgun/weights")
    pu.add_argument("--data-root", type=Path, help="default: $GEOSR_DATA")
    a = p.parse_args(args)
    if a.command == "prepare":
        prepare(a.data_root or default_data_root(), max_mib=a.max_mib)
        return 0
    if a.command == "publish":
        publish_candidates(a.folder, weights_dir=a.weights_dir, data_root=a.data_root)
        return 0
    minutes = a.minutes if a.minutes is not None else (1.5 if a.smoke else 8.0)
    a.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", handlers=[logging.FileHandler(a.out / LOG_NAME),
                                                      logging.StreamHandler(sys.stderr)])
    return run_window(a.out, minutes=minutes, smoke=a.smoke, compile_model=a.compile,
                      device="cpu" if a.smoke else a.device, runs_dir=a.runs_dir)


if __name__ == "__main__":
    sys.exit(main())
