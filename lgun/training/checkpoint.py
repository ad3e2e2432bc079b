"""Checkpoints of a run: ``last.pt`` (atomic), kept copies, and exact resume.

A checkpoint holds tensors and plain Python values only, so it is read with
``torch.load(weights_only=True)``::

    model, optimizer, ema     state dicts (ema None without an EMA)
    step, wall_s              optimiser steps done, wall seconds of all parts of the run
    schedule                  {"progress": fraction of the run done}
    torch_rng                 torch's CPU RNG state
    run_id, init_from         the run's identity and what it started from
    history, parent           JSON: the validations so far, the parent's training record
    config, model_config      JSON: the TrainConfig and LGUNConfig (for reading, not resuming)

Training batches are a function of ``(seed, step)`` (``lgun.data.PairSampler``), so restoring
these values reproduces an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lgun.model import LGUN

__all__ = ["RunState", "load_checkpoint", "resume_path", "save_checkpoint"]


@dataclass
class RunState:
    """The plain values a run carries across interruptions.

    Attributes:
        run_id: Identity of the run (kept by every resume).
        init_note: What the model started from (for the lineage).
        parent: Training record of the weights it started from (None for a fresh model).
        step: Optimiser steps done.
        wall_before: Wall seconds of the earlier parts of the run.
        history: One record per validation.
    """

    run_id: str
    init_note: str
    parent: dict[str, Any] | None
    step: int = 0
    wall_before: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def resume_path(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``resume`` is a file, a run directory, "auto"
    (``run_dir/last.pt`` if present) or "" (none).

    Raises:
        FileNotFoundError: an explicit checkpoint that does not exist.
    """
    if not resume:
        return None
    if resume == "auto":
        p = run_dir / "last.pt"
        return p if p.is_file() else None
    p = Path(resume)
    p = p / "last.pt" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {p}")
    return p


def save_checkpoint(
    run_dir: Path,
    state: RunState,
    *,
    model: LGUN,
    optimizer: torch.optim.Optimizer,
    ema: torch.nn.Module | None,
    wall_s: float,
    progress: float,
    config: dict[str, Any],
    keep_every: int = 0,
) -> Path:
    """Write ``run_dir/last.pt`` atomically (a kill mid-write never leaves a broken file),
    and a copy ``step_XXXXXX.pt`` when ``keep_every`` divides the step."""
    path = run_dir / "last.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "schedule": {"progress": progress}, "step": state.step,
        "ema": ema.state_dict() if ema is not None else None,
        "torch_rng": torch.get_rng_state(), "wall_s": wall_s,
        "run_id": state.run_id, "init_from": state.init_note,
        "history": json.dumps(state.history), "parent": json.dumps(state.parent),
        "config": json.dumps(config),
        "model_config": json.dumps(model.config.to_dict()),
    }, tmp)
    os.replace(tmp, path)
    if keep_every and state.step % keep_every == 0:
        shutil.copyfile(path, run_dir / f"step_{state.step:06d}.pt")
    return path


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: torch.nn.Module | None,
) -> RunState:
    """Restore tensors and torch's RNG from ``path``; return the run's plain values.

    The optimiser gets the saved groups back as they were: re-apply the configured recipe
    afterwards (``lgun.training.optim.configure_optimizer``).
    """
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if ema is not None and ck.get("ema") is not None:
        ema.load_state_dict(ck["ema"])
    torch.set_rng_state(ck["torch_rng"])
    return RunState(run_id=ck["run_id"], init_note=ck["init_from"],
                    parent=json.loads(ck.get("parent", "null")),  # as when the run started
                    step=int(ck["step"]), wall_before=float(ck["wall_s"]),
                    history=json.loads(ck["history"]))
