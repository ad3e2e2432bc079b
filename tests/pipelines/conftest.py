"""Fixtures of the pipeline tests: weights made worse on purpose, and rasters laid out as the
aerial rasters of the GeoTIFF gate (``pipelines.geotiff_gate``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def _zeroed_rec(src: Path, dest: Path) -> Path:
    import torch

    from lgun.pretrained import load_weights, save_weights

    w = load_weights(src)
    with torch.no_grad():
        w.model.rec[0].weight.zero_()
        w.model.rec[0].bias.zero_()
    dest.mkdir(parents=True, exist_ok=True)
    return save_weights(w.model, dest / src.name, name=w.meta.name, metadata={
        "training": w.meta.training, "metrics": w.meta.metrics, **w.meta.extra})


def _aerial_rasters(data_root: Path, side: int = 64) -> list[Path]:
    from geosr.testing import make_raster
    from pipelines.geotiff_gate import AERIAL_RASTERS

    return [make_raster(data_root / "geotiff" / rel, (4 if i == 3 else 3, side, side), seed=i)
            for i, rel in enumerate(AERIAL_RASTERS)]


@pytest.fixture
def zeroed_rec() -> Callable[[Path, Path], Path]:
    """``zeroed_rec(src, dest_dir)``: a copy of the weights at ``src`` (same name and metadata)
    whose REC outputs zeros (far below bicubic), written into ``dest_dir``."""
    return _zeroed_rec


@pytest.fixture
def aerial_rasters() -> Callable[..., list[Path]]:
    """``aerial_rasters(data_root)``: smooth uint8 rasters at the GeoTIFF gate's paths under
    ``data_root`` (the last one RGBN)."""
    return _aerial_rasters
