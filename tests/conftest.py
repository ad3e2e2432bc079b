"""Shared fixtures of the whole suite: the shared data root and the synthetic-raster factory.

Markers (declared in pyproject.toml, which says what each costs): ``slow`` and ``gpu`` are
deselected by default; ``cluster``, ``signals``, ``notebooks`` and ``data`` run by default
and can be left out with ``-m 'not cluster'`` and the like. A test that takes the
``shared_data`` fixture is marked ``data`` here, so the fixture and the marker agree.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geosr.testing import make_raster as _make_raster
from lgun.paths import default_data_root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (``lgun.paths.default_data_root``); skips when absent."""
    root = default_data_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set GEOSR_DATA)")
    return root


RasterFactory = Callable[..., Path]


@pytest.fixture
def make_raster(tmp_path: Path) -> RasterFactory:
    """``geosr.testing.make_raster`` with paths relative to ``tmp_path``.

    ``make_raster("in/s0.tif", (3, 40, 50), seed=0, gain=250, offset=1, nodata=0)``
    """

    def make(name: str | Path, shape: tuple[int, int, int], **kwargs: Any) -> Path:
        return _make_raster(tmp_path / name, shape, **kwargs)

    return make


@pytest.fixture
def make_scenes(make_raster: RasterFactory) -> Callable[..., list[Path]]:
    """``n`` uint8 RGB scenes ``s{i}.tif`` (seed ``i``, nodata 0) in a folder of tmp_path.

    The default recipe (``* 250 + 1``) keeps every pixel valid.
    """

    def make(folder: str | Path, n: int = 3, size: tuple[int, int] = (40, 50), *,
             gain: float = 250, offset: float = 1) -> list[Path]:
        return [make_raster(Path(folder) / f"s{i}.tif", (3, *size), seed=i, gain=gain,
                            offset=offset, nodata=0) for i in range(n)]

    return make


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
