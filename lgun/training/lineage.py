"""What a set of weights records about how it was made (``training`` in its JSON).

The record names the run, its data and recipe, the hardware, and its parent: the ``training``
record of the weights it started from, so that a chain of fine-tunes and restarts can be
followed back (``total_steps`` adds the parent's).
"""

from __future__ import annotations

import time
from typing import Any

from lgun.pretrained import read_weights_meta
from lgun.training.config import OPTIMIZERS, DataConfig, OptimConfig, ScheduleConfig

__all__ = ["degradation_record", "make_run_id", "parent_of", "training_record"]


def make_run_id(name: str) -> str:
    """``name@<UTC start time>``: identifies one run across its resumes."""
    return f"{name}@{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def parent_of(init_from: str) -> dict[str, Any] | None:
    """What ``init_from`` was trained on (its run, data and total steps), for the lineage."""
    if not init_from:
        return None
    t = read_weights_meta(init_from).get("training", {})
    return {"weights": init_from, "run_id": t.get("run_id"), "data": t.get("data"),
            "total_steps": t.get("total_steps", t.get("steps")), "scale": t.get("scale"),
            "parent": t.get("parent")}


def degradation_record(data: DataConfig) -> dict[str, Any]:
    """How the LR patches were made: the kind weights, and the parameters that apply."""
    mix = data.degradation_mix()
    rec: dict[str, Any] = {"weights": dict(mix.weights)}
    if not mix.is_bicubic_only:
        rec.update(psf_sigma=list(mix.psf_sigma), noise_std=mix.noise_std,
                   jpeg_quality=mix.jpeg_quality, jpeg_prob=mix.jpeg_prob)
    return rec


def training_record(
    *,
    run_id: str,
    step: int,
    scale: int,
    hr_patch: int,
    data: DataConfig,
    optim: OptimConfig,
    schedule: ScheduleConfig,
    hardware: str,
    wall_s: float,
    init_note: str,
    parent: dict[str, Any] | None,
    seed: int,
) -> dict[str, Any]:
    """The ``training`` record of weights saved after ``step`` steps of run ``run_id``."""
    return {"run_id": run_id, "data": [s.to_dict() for s in data.sources], "steps": step,
            "batch": data.batch_size, "patch": [hr_patch, hr_patch], "scale": scale,
            "degradation": degradation_record(data),
            "recipe": {"optimizer": OPTIMIZERS[optim.name].__name__,
                       "betas": list(optim.betas),
                       "weight_decay": optim.weight_decay, "learning_rate": optim.learning_rate,
                       "schedule": f"cosine to {schedule.min_learning_rate} over "
                                   f"{schedule.steps} steps or {schedule.max_minutes} min",
                       "warmup_steps": schedule.warmup_steps, "loss": optim.loss.upper(),
                       "ema_decay": optim.ema_decay},
            "hardware": hardware,
            "wall_s": round(wall_s, 1),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "init_from": init_note,
            "parent": parent, "total_steps": step + ((parent or {}).get("total_steps") or 0),
            "seed": seed}
