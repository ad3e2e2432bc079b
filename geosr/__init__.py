"""geosr: georeferenced super-resolution of GeoTIFF rasters.

``geosr.upscale``, ``geosr.describe``, ``geosr.run_batch``, ``geosr.load_model``,
``geosr.RunOptions``, ``geosr.GeosrError`` and ``geosr.WeightsError`` are loaded on
first use: importing geosr imports neither torch nor dask (nor the pipeline), heavy
libraries are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "upscale": "geosr.api",
    "describe": "geosr.api",
    "run_batch": "geosr.batch",
    "load_model": "geosr.models",
    "RunOptions": "geosr.options",
    "GeosrError": "geosr.errors",
    "WeightsError": "geosr.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geosr' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
