"""Train LGUN: resume exactly, validate, publish weights only when they improve.

``train(cfg)`` reads top to bottom; each step delegates to one module of ``lgun.training``:
``config`` (what to run), ``warmstart`` (the starting model and its least-squares REC),
``optim`` and ``schedule`` (the recipe), ``checkpoint`` (exact resume), ``lineage`` (what the
weights record), ``publish`` (validation and publishing), ``progress`` (the bar).

A run lives in ``cfg.run_dir``::

    config.json        the resolved TrainConfig (written at every start/resume)
    last.pt            checkpoint (``lgun.training.checkpoint``)
    log.jsonl          one JSON line per validation
    final.safetensors  the evaluated model at the end (+ .json, via ``save_weights``)

Messages go to the ``lgun.train`` logger (``python -m pipelines.train`` prints them on stderr).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lgun import cpu_kernels
from lgun.data import build_sampler
from lgun.device import describe_hardware, resolve_device
from lgun.fast_train import native_convs, optimize_for_training
from lgun.paths import default_data_root
from lgun.pretrained import save_weights
from lgun.training.batches import BatchStream
from lgun.training.checkpoint import RunState, load_checkpoint, resume_path, save_checkpoint
from lgun.training.config import (
    LOSSES,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    OptimConfig,
    PublishConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)
from lgun.training.lineage import make_run_id, parent_of, training_record
from lgun.training.optim import configure_optimizer, make_ema, make_optimizer, update_ema
from lgun.training.progress import ProgressBar
from lgun.training.publish import publish, validate
from lgun.training.schedule import learning_rate, progress
from lgun.training.warmstart import build_model, fit_new_reconstruction, has_new_reconstruction

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "OptimConfig",
    "PublishConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "TrainConfig",
    "train",
]

log = logging.getLogger("lgun.train")


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training as configured; returns the run directory.

    Raises:
        FileNotFoundError: a missing resume checkpoint or training folder.
        lgun.device.DeviceError: an unknown or unavailable device.
    """
    # 1. Where: threads, device, run directory.
    if cfg.runtime.num_threads > 0:
        torch.set_num_threads(cfg.runtime.num_threads)
    device = resolve_device(cfg.runtime.device)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    # 2. Data and the starting model (REC fitted when new, unless resuming).
    data_root = cfg.data.root or None
    sampler = build_sampler(cfg.data.sources, cfg.scale, patch_size=cfg.data.patch_size,
                            data_root=data_root or default_data_root(), seed=cfg.seed,
                            degradation=cfg.data.degradation_mix())
    model, init_note = build_model(cfg.model, init_from=cfg.init_from, init=cfg.init,
                                   seed=cfg.seed)
    ckpt_path = resume_path(cfg.resume, run_dir)
    if cfg.init == "fit" and ckpt_path is None and has_new_reconstruction(cfg.init_from,
                                                                          cfg.scale):
        init_note += fit_new_reconstruction(model, sampler, cfg.fit_batches)
        log.info("init: %s", init_note)
    model.to(device)
    if cfg.runtime.fast_kernels and device.type == "cpu":
        model = optimize_for_training(model)  # same parameters, state_dict and gradients
        n, why = native_convs(model), cpu_kernels.build_error()
        log.info("depthwise convs: %s", f"{n} on lgun.cpu_kernels" if n else f"oneDNN ({why})")

    # 3. Recipe: optimiser and EMA; a checkpoint restores them with the run's state.
    opt = make_optimizer(model.parameters(), cfg.optim)
    ema = make_ema(model, cfg.optim.ema_decay)
    state = RunState(run_id=make_run_id(cfg.name), init_note=init_note,
                     parent=parent_of(cfg.init_from))
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path, model=model, optimizer=opt, ema=ema)
        configure_optimizer(opt, cfg.optim)  # the checkpoint's groups may hold another recipe
        log.info("resumed %s at step %d", ckpt_path, state.step)
    net = _accelerate(model, device, compile_model=cfg.runtime.compile)
    use_amp = cfg.runtime.amp and device.type == "cuda"
    loss_fn = LOSSES[cfg.optim.loss]
    eval_model = ema if ema is not None else model
    t_start = time.time()

    def wall() -> float:
        return state.wall_before + time.time() - t_start

    def checkpoint() -> None:
        save_checkpoint(run_dir, state, model=model, optimizer=opt, ema=ema, wall_s=wall(),
                        progress=progress(state.step, wall(), cfg.schedule),
                        config=cfg.to_dict(), keep_every=cfg.checkpoint.keep_every)

    def record() -> dict[str, Any]:
        return training_record(
            run_id=state.run_id, step=state.step, scale=cfg.scale, hr_patch=sampler.hr_patch,
            data=cfg.data, optim=cfg.optim, schedule=cfg.schedule,
            hardware=describe_hardware(device), wall_s=wall(), init_note=state.init_note,
            parent=state.parent, seed=cfg.seed)

    def validate_and_publish(final: bool) -> None:
        _validate_and_publish(eval_model, state, cfg.eval, cfg.publish, cfg.scale, final=final,
                              run_dir=run_dir, wall_s=wall(), record=record, device=device,
                              data_root=data_root)
        model.train()

    # 4. The loop: one batch per step, a function of (seed, step).
    bar = ProgressBar(state.step, cfg.schedule.steps, cfg.runtime.log_every)
    batches = BatchStream(sampler, cfg.data.batch_size, state.step, cfg.schedule.steps,
                          workers=cfg.runtime.data_workers, pin_memory=device.type == "cuda")
    first_step = state.step
    model.train()
    # The worker processes end with the loop, also when a step fails (a GPU window retries a
    # stage that ran out of memory with a smaller batch, in the same process).
    try:
        while progress(state.step, wall(), cfg.schedule) < 1.0:
            rate = learning_rate(state.step, wall(), cfg.schedule, cfg.optim.learning_rate)
            for g in opt.param_groups:
                g["lr"] = rate
            lr_b, hr_b = next(batches)
            lr_t = lr_b.to(device, non_blocking=True)
            hr_t = hr_b.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_fn(net(lr_t).float(), hr_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            if ema is not None:
                update_ema(ema, model, cfg.optim.ema_decay, state.step)
            state.step += 1
            bar.update(state.step - 1, loss.item(), opt.param_groups[0]["lr"])
            done = progress(state.step, wall(), cfg.schedule) >= 1.0
            if state.step % cfg.checkpoint.every == 0 and not done:
                checkpoint()
            if cfg.eval.every and state.step % cfg.eval.every == 0 and not done:
                validate_and_publish(final=False)
    finally:
        bar.close()
        batches.close()
    log.info("data: %.1f s waiting for %d batches (%d worker processes)", batches.wait_s,
             state.step - first_step, cfg.runtime.data_workers)
    checkpoint()

    # 5. The end: final weights (before the slow final evaluation, so that follow-up runs can
    # start from them), final validation and publishing, then both again with the history.
    def save_final() -> None:
        save_weights(eval_model, run_dir / "final.safetensors", name=cfg.name,
                     metadata={"training": record(), "history": state.history})

    save_final()
    validate_and_publish(final=True)
    checkpoint()
    save_final()
    return run_dir


def _accelerate(model: torch.nn.Module, device: torch.device, *, compile_model: bool
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable the loop runs: on CUDA with TF32 matmuls, compiled if asked."""
    if device.type != "cuda":
        return model
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.compile(model) if compile_model else model


def _validate_and_publish(
    model: torch.nn.Module,
    state: RunState,
    val: EvalConfig,
    pub: PublishConfig,
    scale: int,
    *,
    final: bool,
    run_dir: Path,
    wall_s: float,
    record: Callable[[], dict[str, Any]],
    device: torch.device,
    data_root: str | None,
) -> None:
    """Validate on ``val.dataset``, log it (``log.jsonl``, ``state.history``), and publish at
    the end, or at every validation with ``pub.during`` when the validation is the full
    publishing dataset."""
    r = validate(model, val.dataset, scale, device=device, data_root=data_root,
                 limit=val.limit or None)
    rec = {"step": state.step, "dataset": val.dataset, **r, "wall_s": round(wall_s, 1)}
    state.history.append(rec)
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    log.info("step %d: %s x%d %.3f dB / %.4f (n=%d)", state.step, val.dataset, scale,
             r["psnr"], r["ssim"], r["n"])
    full_primary = val.dataset == pub.dataset and not val.limit
    if not pub.name or not (final or (pub.during and full_primary)):
        return
    metrics = {pub.dataset: r} if full_primary else {
        pub.dataset: validate(model, pub.dataset, scale, device=device, data_root=data_root)}
    publish(model, pub, scale, record(), metrics, device=device, data_root=data_root,
            complete=final)
