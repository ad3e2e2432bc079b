"""``python -m pipelines.gpu_window``: one GPU window of at most ~9 minutes, in one command.

``prepare`` (here: what travels, under .pack/, see ``pipelines.gpu_pack``), then ``run`` (the
default command, on the GPU: ``--out DIR [--minutes 8] [--compile]``), then ``publish DIR``
(here, ``pipelines.window_publish``). docs/TRAINING.md gives the procedure. Within
``--minutes`` in all, the window runs

1. the CUDA check of ``pipelines.gpu_cuda_check`` (<= 90 s) -> ``DIR/gpu_check.json``;
2. the stages of ``PLAN``, each ``lgun.train.train`` time-boxed to its share of the minutes
   left (run folders under ``runs/gpu_window/``, never returned; nothing is published there);
3. the scores of every candidate on the GPU (its stage's ``scores``) -> the candidate pairs
   (``<name>.safetensors`` + ``.json``) in ``DIR/candidates.zip``, rewritten after each stage;

``DIR`` gets 3 files with ``gpu_window.log`` (a GPU machine returns at most 8). ``--smoke``:
the same code on CPU in under 2 minutes, on synthetic images. ``run`` imports only ``lgun``
(the GPU machine has no rasterio).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lgun.paths import default_data_root
from lgun.pretrained import parse_metric_key
from pipelines.gpu_pack import (
    AERIAL,
    BENCH,
    MIB,
    PACK,
    SETS,
    copy_aerial,
    copy_benchmark,
    make_synthetic_data,
    materialise,
    prepare,
)
from pipelines.window_publish import CANDIDATES, publish_candidates

CONFIGS = Path(__file__).resolve().parent / "configs"
LOG_NAME, CHECK_NAME = "gpu_window.log", "gpu_check.json"
END_MARGIN_S = 15.0  # left unplanned at the end of the window
SMOKE_STEPS, SMOKE_BATCH, SMOKE_PATCH = 3, 2, 32
# Batches are made ahead by worker processes (lgun.training.batches): one sensor-mixture batch
# costs a CPU core ~0.7 s, far more than its GPU step. All cores but the loop's and one spare;
# the smoke run uses one worker, so that the path runs in CI too.
DATA_WORKERS = max(1, min(14, (os.cpu_count() or 2) - 2))
AERIAL_SCORES = ("aid150", "aid150@box", "aid150@psf")  # lgun.pretrained.metric_key

log = logging.getLogger("pipelines.gpu_window")
T = TypeVar("T")


@dataclass(frozen=True)
class Stage:
    """One training stage of a window (warm-up, cosine, EMA, LR degradations: its recipe)."""

    name: str  # weight name of the candidate, and of the shipped weights it may replace
    scale: int
    # A weight name: this window's weights of that name if any, else the shipped ones (at
    # another scale all but ``rec.*`` is copied, REC least-squares fitted: warmstart.py).
    init_from: str
    # Fraction of the training time left when the stage starts, renormalised over the stages
    # still to run (an early or late end moves time to the later ones).
    share: float
    batch_size: int
    patch_size: int  # HR side; the natural pack's crops are 192, AID-150's images 150
    learning_rate: float  # peak
    recipe: str = "gpu_window.toml"  # in pipelines/configs; its "natural" source becomes the pack
    scores: tuple[str, ...] = SETS  # metric keys scored on the GPU (aerial: the carried subset)
    gate: tuple[str, ...] = ("Set5",)  # keys whose mean, on the full sets here, decides publishing


# The plan. The first window on one H200 (2026-11-30, BENCHMARKS.md, docs/TRAINING_LOG.md) ran
# four stages of 60-90 s at ~7 eager steps/s whatever the batch and patch (launch-bound: larger
# batches cost nothing) and moved annealed weights little: x2 -0.02 dB at a 3e-4 peak, x4
# +0.003, x3 +0.03; its aerial x4 lost the cloud raster to lanczos (more PSF sharpening). Hence
# fewer, longer stages with 2-4x the batch at a lower peak: half the time to x2 (the one scale
# short of its Set5 target), about a quarter each to x3 (target met since on the CPU) and to the
# aerial x4 at half its recipe's peak (short of its sensor targets). x4 (met) trains on the CPU.
# Memory bounds the batches (x2's 64^2 LR patches cost the most per sample): untried sizes, so
# a stage that runs out of device memory runs again at half the batch (with_batch_fallback).
PLAN: tuple[Stage, ...] = (
    # x2: a warm restart of the shipped x2 (the CPU restart that gained 0.09 dB peaked at 2e-4).
    Stage("lgun-x2", 2, "lgun-x2", 0.52, 96, 128, 2e-4),
    # x3: a warm restart of the shipped x3 (CPU restarts on 126/144-pixel patches still gain).
    Stage("lgun-x3", 3, "lgun-x3", 0.22, 128, 144, 2e-4),
    # The sensor-trained aerial x4 (aerial_sensor.toml: bicubic/box/PSF LR, aerial + natural
    # patches) continues the shipped one, trained with the same mixture; 144 is the largest
    # patch AID-150 allows, and small patches made the CPU run's blur estimate size-dependent
    # (docs/TRAINING_LOG.md, 2026-11-30). Publishing also runs the GeoTIFF gate.
    Stage("lgun-aid-x4", 4, "lgun-aid-x4", 0.26, 64, 144, 1e-4, recipe="aerial_sensor.toml",
          scores=AERIAL_SCORES, gate=AERIAL_SCORES),
)


def stage_config(stage: Stage, *, init_from: str, minutes: float, pack: Path, data_root: Path,
                 run_dir: Path, device: str, smoke: bool, compile_model: bool,
                 batch_size: int | None = None) -> Any:
    """The stage recipe's ``TrainConfig`` with the stage's values (``batch_size`` overrides the
    stage's), its natural source replaced by the pack (the others are data-root folders that
    travel); publishing off."""
    from pipelines.train import load_config

    base = load_config(CONFIGS / stage.recipe)
    r = dataclasses.replace
    sources = tuple(r(s, paths=(os.path.relpath(pack),)) if s.name == "natural" else s
                    for s in base.data.sources)
    return r(base, name=f"gpu-{stage.name}", scale=stage.scale, init_from=init_from, resume="",
             out_dir=str(run_dir), fit_batches=1 if smoke else base.fit_batches,
             data=r(base.data, sources=sources, root=str(data_root),
                    batch_size=batch_size or (SMOKE_BATCH if smoke else stage.batch_size),
                    patch_size=SMOKE_PATCH if smoke else stage.patch_size),
             optim=r(base.optim, learning_rate=stage.learning_rate),
             # The time box ends a real stage; a smoke stage runs its steps, whatever the load.
             schedule=r(base.schedule, max_minutes=0.0 if smoke else float(minutes),
                        steps=SMOKE_STEPS if smoke else 200_000),
             eval=r(base.eval, every=0),  # the recipe's set, at the end only
             checkpoint=r(base.checkpoint, every=500),
             publish=r(base.publish, name="", dir=""),  # never publish on the GPU machine
             runtime=r(base.runtime, device=device, amp=True, compile=compile_model,
                       data_workers=1 if smoke else DATA_WORKERS, log_every=1 if smoke else 100))


def stage_seconds(stage: Stage, left: Sequence[Stage], deadline: float, reserve_s: float
                  ) -> float:
    """The training seconds of ``stage``: its share, among the stages ``left``, of the time to
    ``deadline`` less ``reserve_s`` per stage left (its start-up and scoring)."""
    return (deadline - time.time() - len(left) * reserve_s) * (
        stage.share / sum(s.share for s in left))


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory: torch's own error, or the message
    of a library (cuDNN, cuBLAS) that failed to allocate."""
    import torch

    text = str(exc)
    return (isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower()
            or "ALLOC_FAILED" in text)


def with_batch_fallback(run: Callable[[int], T], batch: int, *, what: str) -> T:
    """``run(batch)``, halving the batch (down to 1) while the device runs out of memory: a
    window has no time to be rerun, and an out-of-memory error comes at the first step."""
    import gc

    import torch

    while True:
        try:
            return run(batch)
        except Exception as exc:
            if batch <= 1 or not out_of_memory(exc):
                raise
            log.warning("%s: out of device memory at batch %d (%s); again at batch %d", what,
                        batch, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                        batch // 2)
        batch //= 2
        gc.collect()  # the failed step's tensors, held by the traceback until here
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write_candidates(folder: Path, out: Path) -> None:
    """(Re)write ``out/candidates.zip`` from the pairs in ``folder``, atomically."""
    tmp = out / (CANDIDATES + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    os.replace(tmp, out / CANDIDATES)


def run_stage(cfg: Any, stage: Stage, *, cands: Path, scores: Sequence[str], window: dict
              ) -> dict[str, Any]:
    """Train, score ``scores``, write the candidate pair into ``cands``; returns a summary."""
    import torch

    from lgun.pretrained import load_weights, save_weights
    from lgun.train import train
    from lgun.training.publish import validate

    t0 = time.time()
    run_dir = train(cfg)
    t1 = time.time()
    device = torch.device(cfg.runtime.device)
    final = load_weights(run_dir / "final.safetensors", device=device)
    metrics = {}
    for key in scores:  # a set that cannot be scored costs its score, not the candidate
        ds, deg = parse_metric_key(key)
        try:
            metrics[key] = {**validate(final.model, ds, stage.scale, device=device,
                                       data_root=cfg.data.root, degradation=deg),
                            "device": str(device)}
        except Exception:
            log.exception("stage %s: %s not scored", stage.name, key)
    save_weights(final.model, cands / f"{stage.name}.safetensors", name=stage.name, metadata={
        "training": final.meta.training, "history": final.meta.extra.get("history", []),
        "metrics": metrics, "gpu_window": {**window, "stage": dataclasses.asdict(stage),
                                           "init_from": cfg.init_from}})
    return {"stage": stage.name, "run_dir": str(run_dir), "init_from": cfg.init_from, "steps":
            final.meta.training.get("steps"), "train_s": round(t1 - t0, 1),
            "loop_s": final.meta.training.get("wall_s"), "eval_s": round(time.time() - t1, 1),
            **{k: m["psnr"] for k, m in metrics.items()}}


def run_window(out: Path, *, minutes: float, smoke: bool, compile_model: bool, device: str,
               runs_dir: Path | None) -> int:
    """The whole window; returns the exit status (1 when a stage produced no candidate).
    ``main`` sends the log lines to ``out/gpu_window.log`` and stderr."""
    from lgun.data import Source
    from lgun.pack import build_pack
    from pipelines.gpu_cuda_check import run_check

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
            bench, aerial = copy_benchmark(src, tmp / "benchmark"), copy_aerial(src, tmp / "a")
            runs = tmp / "runs"
        else:
            pack, bench, aerial = PACK, BENCH, AERIAL
            runs = (runs_dir or Path("runs/gpu_window")) / stamp
            if not (pack.is_file() and bench.is_dir()):
                log.error("%s or %s missing: run `python -m pipelines.gpu_window prepare` "
                          "and carry .pack", pack, bench)
                return 2
        data_root = tmp / "data"
        sets = materialise(bench, aerial, data_root)
        os.environ["GEOSR_DATA"] = str(data_root)
        window = {"smoke": smoke, "minutes": minutes, "compile": compile_model,
                  "device": device, "started": stamp}
        log.info("window %s%s (pack %.1f MiB, sets %s, aerial %s)", json.dumps(window),
                 " SMOKE RUN: CPU, synthetic data" if smoke else "", pack.stat().st_size / MIB,
                 ",".join(sets), "yes" if aerial.is_dir() else "MISSING")
        try:
            check = run_check(out / CHECK_NAME, device=device, smoke=smoke, data_root=data_root)
            log.info("check: all passed %s (%.0f s)", check["all_passed"], check["seconds"])
        except Exception:
            log.exception("check failed; training goes on")

        eval_s, overhead_s = (5.0, 5.0) if smoke else (25.0, 20.0)  # refined by each stage
        done: dict[str, Path] = {}
        cands = tmp / "candidates"
        cands.mkdir()
        rows = []
        for i, stage in enumerate(PLAN):
            left, reserve_s = PLAN[i:], eval_s + overhead_s
            if (train_s := stage_seconds(stage, left, deadline, reserve_s)) < 10 and not smoke:
                log.error("stage %s skipped: %.0f s left to train", stage.name, train_s)
                continue
            init = str(done.get(stage.init_from, stage.init_from))
            # A benchmark set that did not arrive is not scored; the aerial sets always are.
            scores = [k for k in stage.scores
                      if (ds := parse_metric_key(k)[0]) in sets or ds not in SETS]

            def attempt(batch: int, stage: Stage = stage, left: tuple[Stage, ...] = left,
                        init: str = init, scores: list[str] = scores,
                        reserve_s: float = reserve_s) -> dict[str, Any]:
                train_s = stage_seconds(stage, left, deadline, reserve_s)  # a retry: what is left
                cfg = stage_config(stage, init_from=init, minutes=max(train_s, 1) / 60,
                                   pack=pack, data_root=data_root,
                                   run_dir=runs / f"{stage.name}-b{batch}", device=device,
                                   smoke=smoke, compile_model=compile_model, batch_size=batch)
                log.info("stage %s: x%d from %s, %.0f s of training, batch %d, patch %d, lr "
                         "%g, recipe %s", stage.name, stage.scale, init, train_s,
                         cfg.data.batch_size, cfg.data.patch_size, stage.learning_rate,
                         stage.recipe)
                return run_stage(cfg, stage, cands=cands, scores=scores, window=window)

            try:
                row = with_batch_fallback(attempt, SMOKE_BATCH if smoke else stage.batch_size,
                                          what=f"stage {stage.name}")
                write_candidates(cands, out)  # what a stopped window still returns
            except Exception:
                log.exception("stage %s failed", stage.name)
                continue
            # Later stages start from the run's final weights (the path is in their lineage).
            done[stage.name] = Path(row.pop("run_dir")) / "final.safetensors"
            rows.append(row)
            eval_s = max(eval_s, row["eval_s"])  # x2 scores the most LR pixels: a bound
            overhead_s = max(overhead_s, row["train_s"] - (row["loop_s"] or 0))
            log.info("stage %s: %s", stage.name, json.dumps(row))
        log.info("window done in %.0f s: %d of %d candidates in %s", time.time() - t_start,
                 len(rows), len(PLAN), out / CANDIDATES)
    return 0 if len(rows) == len(PLAN) else 1


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
    pr = sub.add_parser("prepare", help="build .pack/ (sets, aerial images, natural pack) here")
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
