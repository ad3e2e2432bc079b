"""Course of a run (``ScheduleConfig``): progress by steps or wall time, and the learning rate."""

from __future__ import annotations

import math

from lgun.training.config import ScheduleConfig

__all__ = ["learning_rate", "lr_factor", "progress"]


def progress(step: int, wall_s: float, schedule: ScheduleConfig) -> float:
    """Fraction of the run done, by steps or by the wall-time budget, whichever is further."""
    p = step / schedule.steps
    if schedule.max_minutes > 0:
        p = max(p, wall_s / (60 * schedule.max_minutes))
    return min(1.0, p)


def lr_factor(step: int, t: float, schedule: ScheduleConfig, peak: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_steps``, then cosine in the
    progress ``t`` from 1 down to ``min_learning_rate / peak``."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    floor = schedule.min_learning_rate / peak
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def learning_rate(step: int, wall_s: float, schedule: ScheduleConfig, peak: float) -> float:
    """The learning rate of optimiser step ``step`` after ``wall_s`` seconds of the run."""
    return peak * lr_factor(step, progress(step, wall_s, schedule), schedule, peak)
