"""Optimiser and weight EMA of a run (``OptimConfig``)."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from lgun.training.config import OPTIMIZERS, OptimConfig

__all__ = ["configure_optimizer", "make_ema", "make_optimizer", "update_ema"]


# Devices with torch's fused Adam/AdamW kernel. The default on a CPU is a Python loop of
# ~10 tensor ops per parameter (LGUN has 468 parameter tensors); the fused kernel does the
# same update (up to fp32 rounding) in one call (`pipelines.bench_train` times the step).
_FUSED_DEVICES = ("cpu", "cuda")


def _fused(params: list[torch.nn.Parameter]) -> bool:
    return bool(params) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point()
                                for p in params)


def make_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig
                   ) -> torch.optim.Optimizer:
    """The configured optimiser (``optim.name``) at the peak learning rate.

    The parameters must already be on the training device: the fused kernel is chosen by it.
    """
    params = list(params)
    return OPTIMIZERS[optim.name](params, lr=optim.learning_rate, betas=optim.betas,
                                  weight_decay=optim.weight_decay, fused=_fused(params))


def configure_optimizer(opt: torch.optim.Optimizer, optim: OptimConfig) -> None:
    """Apply the configured recipe to ``opt``'s groups (after ``load_state_dict``, which
    restores the saved groups' values: a checkpoint of an "adam" run resumed as "adamw" would
    otherwise keep the coupled L2 term). The learning rate is set at every step anyway."""
    for g in opt.param_groups:
        g["weight_decay"], g["betas"] = optim.weight_decay, optim.betas
        if "decoupled_weight_decay" in g:
            g["decoupled_weight_decay"] = optim.name == "adamw"
        # A checkpoint's groups also carry its "fused"/"foreach" choice (older runs: None);
        # the kernel follows this run's device, and the fused kernel wants ``step`` there too.
        g["fused"], g["foreach"] = _fused(g["params"]), None
        for p in g["params"] if g["fused"] else ():
            st = opt.state.get(p, {})
            if "step" in st:
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


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
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"EMA has {len(ema_params)} parameters, the model {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1 - d)  # one call, not one per parameter
