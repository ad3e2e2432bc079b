"""Checks of a weights descriptor (the JSON beside a ``.safetensors`` file) before loading.

A weights file describes itself: its architecture and the configuration its modules
are built from. Both come from a file a user may have downloaded, so they are checked
against sane bounds before any module is built or tensor read: a configuration that
would build billions of parameters fails in a moment with one line, not after minutes
with an allocation error.

Importing this module imports neither torch nor lgun.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from geosr.errors import WeightsError

#: The architecture geosr can run from a weights file.
ARCHITECTURE = "LGUN"

#: Integer fields of an LGUN configuration and their inclusive bounds. The upper bounds
#: are far above any published LGUN (64 channels, 16 blocks) and far below sizes that
#: cannot be allocated.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "scale": (2, 4),
    "in_channels": (1, 16),
    "channels": (4, 1024),
    "num_blocks": (1, 128),
    "num_heads": (1, 64),
    "se_reduction": (1, 1024),
}
#: Bounds of the FFN expansion factor.
FFN_BOUNDS = (0.25, 16.0)
#: Most token-selection stages.
MAX_TOPK_STAGES = 8


def _int_field(config: Mapping[str, Any], key: str, where: str) -> int | None:
    if key not in config:
        return None
    v = config[key]
    lo, hi = INT_BOUNDS[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise WeightsError(f"{where}: config {key} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise WeightsError(f"{where}: config {key} = {v} is outside [{lo}, {hi}]")
    return v


def check_descriptor(architecture: Any, config: Any, where: str) -> None:
    """Refuse a weights descriptor geosr cannot or should not build.

    Args:
        architecture: The document's ``architecture`` member.
        config: Its ``config`` member.
        where: The descriptor's path, for the message.

    Raises:
        WeightsError: another architecture, a config that is not an object, a field of
            the wrong type or outside its bounds, or fields that do not fit together.
    """
    if str(architecture).upper() != ARCHITECTURE:
        raise WeightsError(f"{where}: architecture {architecture!r} is not {ARCHITECTURE}, "
                           "the only one geosr runs")
    if not isinstance(config, Mapping):
        raise WeightsError(f"{where}: config must be a JSON object, got {type(config).__name__}")
    ints = {k: _int_field(config, k, where) for k in INT_BOUNDS}
    channels, heads = ints["channels"], ints["num_heads"]
    if channels is not None and heads is not None and (channels % heads or channels % 4):
        raise WeightsError(f"{where}: config channels = {channels} must be a multiple of 4 "
                           f"and of num_heads = {heads}")
    ffn = config.get("ffn_expansion")
    if ffn is not None and (isinstance(ffn, bool) or not isinstance(ffn, int | float)
                            or not math.isfinite(ffn)
                            or not FFN_BOUNDS[0] <= ffn <= FFN_BOUNDS[1]):
        raise WeightsError(f"{where}: config ffn_expansion = {ffn!r} is outside "
                           f"[{FFN_BOUNDS[0]}, {FFN_BOUNDS[1]}]")
    ratios = config.get("topk_ratios")
    if ratios is not None and (
            not isinstance(ratios, list | tuple) or not 1 <= len(ratios) <= MAX_TOPK_STAGES
            or not all(isinstance(r, int | float) and not isinstance(r, bool)
                       and math.isfinite(r) and 0 < r <= 1 for r in ratios)):
        raise WeightsError(f"{where}: config topk_ratios must be 1 to {MAX_TOPK_STAGES} "
                           f"numbers in (0, 1], got {ratios!r}")
    variant = config.get("variant")
    if variant is not None and not isinstance(variant, str):
        raise WeightsError(f"{where}: config variant must be a string, got {variant!r}")
