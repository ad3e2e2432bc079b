"""Shared pytest fixtures: the shared data root and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$GEOSR_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("GEOSR_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set GEOSR_DATA)")
    return root
