"""Layering: lgun needs no GIS stack, geosr imports no torch/dask/xarray at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("lgun", {"rasterio", "dask", "distributed", "xarray", "geosr", "click"}),
        ("geosr", {"torch", "dask", "distributed", "xarray", "lgun"}),
        ("geosr.cli", {"torch", "dask", "distributed", "xarray", "lgun"}),
        ("geosr.api", {"torch", "dask", "distributed", "xarray", "lgun"}),
        ("geosr.batch", {"torch", "dask", "distributed", "xarray"}),
        ("geosr.qa", {"torch", "dask", "distributed", "xarray", "lgun"}),
        ("geosr.models", {"torch", "dask", "distributed", "xarray", "lgun"}),
    ],
)
def test_import_does_not_pull_heavy_dependencies(module: str, forbidden: set[str]) -> None:
    assert not (_loaded_after_import(module) & forbidden)


def test_xr_registers_the_accessor_without_torch() -> None:
    loaded = _loaded_after_import("geosr.xr")
    assert "xarray" in loaded and not loaded & {"torch", "distributed"}
    code = "import xarray, geosr.xr; print(hasattr(xarray.DataArray([0]), 'geosr'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
