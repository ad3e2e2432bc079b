"""Where the shared data lives: the one place that decides it (no torch import)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Image files the training data and the evaluation folders are read from (Pillow decodes all).
IMAGE_SUFFIXES = frozenset({".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"})


def default_data_root() -> Path:
    """``$GEOSR_DATA`` if set, else ``../shared/data`` beside the repository checkout."""
    env = os.environ.get("GEOSR_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def find_data_root(marker: str = "") -> Path | None:
    """``default_data_root()`` if it exists (and holds ``marker``, a sub-folder), else None."""
    root = default_data_root()
    return root if (root / marker).is_dir() else None
