"""LGUN: Local Global Union Network for lightweight single-image super-resolution.

Depends on torch (and numpy/pillow for data and evaluation) only.
"""

from lgun.model import LGUN, VARIANTS, LGUNConfig
from lgun.pretrained import (
    PRETRAINED,
    PretrainedInfo,
    WeightsError,
    list_pretrained,
    load_pretrained,
    read_weights_meta,
    save_weights,
)

__all__ = [
    "LGUN",
    "LGUNConfig",
    "PRETRAINED",
    "PretrainedInfo",
    "VARIANTS",
    "WeightsError",
    "list_pretrained",
    "load_pretrained",
    "read_weights_meta",
    "save_weights",
]
__version__ = "0.1.0"
