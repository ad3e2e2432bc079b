"""Markers for the notebooks (nbmake items live in notebooks/, outside tests/conftest.py's
reach when only ``python -m pytest notebooks/`` is run)."""

import pytest


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every notebook reads the shared data; 03 starts a Dask LocalCluster.
    extra = {"03_dask_batch.ipynb": ("cluster",)}
    for item in items:
        if item.path.suffix == ".ipynb":
            for name in ("notebooks", "data", *extra.get(item.path.name, ())):
                item.add_marker(name)
