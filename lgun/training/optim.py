"""Optimiser and weight EMA of a run (``OptimConfig``)."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from lgun.training.config import OPTIMIZERS, OptimConfig

__all__ = ["configure_optimizer", "make_ema", "make_optimizer", "update_ema"]


def make_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig
                   ) -> torch.optim.Optimizer:
    """The configured optimiser (``optim.name``) at the peak learning rate."""
    return OPTIMIZERS[optim.name](params, lr=optim.learning_rate, betas=optim.betas,
                                  weight_decay=optim.weight_decay)


def configure_optimizer(opt: torch.optim.Optimizer, optim: OptimConfig) -> None:
    """Apply the configured recipe to ``opt``'s groups (after ``load_state_dict``, which
    restores the saved groups' values: a checkpoint of an "adam" run resumed as "adamw" would
    otherwise keep the coupled L2 term). The learning rate is set at every step anyway."""
    for g in opt.param_groups:
        g["weight_decay"], g["betas"] = optim.weight_decay, optim.betas
        if "decoupled_weight_decay" in g:
            g["decoupled_weight_decay"] = optim.name == "adamw"


def make_ema(model: torch.nn.Module, decay: float) -> torch.nn.Module | None:
    """A frozen copy of ``model`` that ``update_ema`` averages into (None when ``decay`` is 0)."""
    if decay <= 0:
        return None
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """Move ``ema`` towards ``model`` after optimiser step ``step`` (0-based).

    Short runs: a warm-up decay ``(1 + step) / (10 + step)`` keeps the EMA from lagging far
    behind early on.
    """
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(p, 1 - d)
