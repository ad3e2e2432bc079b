"""LGUN: Local Global Union Network for lightweight single-image super-resolution.

Depends on torch (and numpy/pillow for data and evaluation) only. Names are loaded on
first use, so ``import lgun`` and the shipped-weights table (``lgun.PRETRAINED``) do not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LGUN": "lgun.model",
    "LGUNConfig": "lgun.model",
    "VARIANTS": "lgun.model",
    "PRETRAINED": "lgun.pretrained",
    "PretrainedInfo": "lgun.pretrained",
    "WeightsError": "lgun.pretrained",
    "WeightsMeta": "lgun.pretrained",
    "LoadedWeights": "lgun.pretrained",
    "list_pretrained": "lgun.pretrained",
    "load_pretrained": "lgun.pretrained",
    "load_weights": "lgun.pretrained",
    "read_weights_meta": "lgun.pretrained",
    "save_weights": "lgun.pretrained",
    "weights_meta": "lgun.pretrained",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lgun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
