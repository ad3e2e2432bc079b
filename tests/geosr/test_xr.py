"""The ``geosr`` xarray accessor: lazy, georeferenced, equal to the file pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray
from affine import Affine

rioxarray = pytest.importorskip("rioxarray")
dask_array = pytest.importorskip("dask.array")

import geosr.xr  # noqa: E402 - registers the accessor
from geosr.api import upscale  # noqa: E402
from geosr.errors import OptionError  # noqa: E402
from geosr.models import NearestUpscaler  # noqa: E402
from geosr.testing import make_raster, tiny_lgun  # noqa: E402

TILING = {"tile_size": 32, "overlap": 4, "batch_size": 3}
# rioxarray itself composes transforms with ``*``, which affine >= 3 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")


def _raster(tmp_path: Path, dtype: str, shape: tuple[int, int, int] = (3, 61, 83)) -> Path:
    hole = (slice(5, 9), slice(10, 20))
    if dtype == "float32":
        return make_raster(tmp_path / "f.tif", shape, seed=2, dtype=dtype, gain=40, offset=-10,
                           hole=hole, hole_value=np.nan)
    return make_raster(tmp_path / f"{dtype}.tif", shape, seed=2, dtype=dtype,
                       gain=250 if dtype == "uint8" else 6000, offset=1, nodata=0, hole=hole)


def _file_result(src: Path, dst: Path, model: Any, scale: int = 2) -> tuple[np.ndarray, Any]:
    upscale(src, dst, scale=scale, model=model, **TILING)
    with rasterio.open(dst) as ds:
        return ds.read(), ds.transform


@pytest.mark.parametrize(("model", "dtype"), [
    ("bicubic", "uint8"), ("bicubic", "uint16"), ("bicubic", "float32"),
    ("tiny-lgun", "uint8"), ("tiny-lgun", "uint16"),
])
def test_accessor_equals_file_pipeline(tmp_path: Path, dtype: str, model: str) -> None:
    m: Any = tiny_lgun(2) if model == "tiny-lgun" else model
    src = _raster(tmp_path, dtype)
    ref, ref_transform = _file_result(src, tmp_path / "ref.tif", m)
    da = rioxarray.open_rasterio(src, chunks={"x": 40, "y": 25})  # awkward chunks
    out = da.geosr.upscale(scale=2, model=m, **TILING)
    assert isinstance(out.data, dask_array.Array)  # lazy
    # One output block per tile unit; LGUN's rows grow to tiles of 40 (core 32 x 2 is a
    # multiple of 16): 61 rows in two tiles instead of three of 32.
    assert out.chunks[1][0] == ((40 if model == "tiny-lgun" else 32) - 8) * 2
    values = out.values
    assert values.dtype == ref.dtype and values.shape == ref.shape
    np.testing.assert_array_equal(values, ref)  # bit for bit, NaN where invalid
    assert out.rio.transform() == ref_transform
    assert out.rio.transform() == da.rio.transform() @ Affine.scale(0.5)
    assert out.rio.crs == da.rio.crs
    assert out.rio.nodata == da.rio.nodata or (np.isnan(out.rio.nodata) and dtype == "float32")
    np.testing.assert_allclose(np.diff(out.x.values), da.rio.resolution()[0] / 2)


def test_nothing_runs_until_computed_and_numpy_input(tmp_path: Path) -> None:
    calls: list[tuple[int, ...]] = []

    class Counting(NearestUpscaler):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            calls.append(batch.shape)
            return super().__call__(batch)

    src = _raster(tmp_path, "uint8")
    ref, _ = _file_result(src, tmp_path / "ref.tif", "nearest")
    da = rioxarray.open_rasterio(src, chunks={"x": 50, "y": 50})
    lazy = da.geosr.upscale(scale=2, model=Counting(2), **TILING)
    assert calls == []
    np.testing.assert_array_equal(lazy.compute().values, ref)
    assert calls and max(c[0] for c in calls) <= TILING["batch_size"]
    eager = rioxarray.open_rasterio(src).geosr.upscale(scale=2, model="nearest", **TILING)
    assert isinstance(eager.data, np.ndarray)
    np.testing.assert_array_equal(eager.values, ref)


def test_to_raster_writes_a_georeferenced_geotiff(tmp_path: Path) -> None:
    src = _raster(tmp_path, "uint16")
    ref, ref_transform = _file_result(src, tmp_path / "ref.tif", "bicubic", scale=3)
    da = rioxarray.open_rasterio(src, chunks={"x": 64, "y": 64})
    da.geosr.upscale(scale=3, model="bicubic", **TILING).rio.to_raster(tmp_path / "xr.tif")
    with rasterio.open(tmp_path / "xr.tif") as out, rasterio.open(src) as s:
        np.testing.assert_array_equal(out.read(), ref)
        assert out.transform == ref_transform and out.crs == s.crs
        assert out.nodata == 0 and out.dtypes[0] == "uint16"
        assert out.tags()["GEOSR_MODEL"] == "bicubic" and out.tags()["GEOSR_SCALE"] == "3"


def test_two_dimensional_array_and_bad_options(tmp_path: Path) -> None:
    src = _raster(tmp_path, "uint8", shape=(1, 30, 41))
    ref, _ = _file_result(src, tmp_path / "ref.tif", "nearest")
    da = rioxarray.open_rasterio(src).squeeze("band", drop=True)
    out = da.geosr.upscale(scale=2, model="nearest", **TILING)
    assert out.dims == ("y", "x")
    np.testing.assert_array_equal(out.values, ref[0])
    with pytest.raises(OptionError, match="scale"):
        da.geosr.upscale(scale=5)
    with pytest.raises(OptionError, match="overlap"):
        da.geosr.upscale(scale=2, model="nearest", tile_size=32, overlap=8)


def test_exact_consistency_matches_the_file_pipeline(tmp_path: Path) -> None:
    src = _raster(tmp_path, "uint8")
    upscale(src, tmp_path / "ref.tif", scale=2, model="bicubic", consistency="exact", **TILING)
    with rasterio.open(tmp_path / "ref.tif") as ds:
        ref = ds.read()
    da = rioxarray.open_rasterio(src, chunks={"x": 30, "y": 30})
    out = da.geosr.upscale(scale=2, model="bicubic", consistency="exact", **TILING)
    np.testing.assert_array_equal(out.values, ref)
    assert out.attrs["GEOSR_CONSISTENCY"] == "exact"


def test_accessor_signature_is_upscale_dataarray_less_da() -> None:
    """``help(da.geosr.upscale)`` shows ``upscale_dataarray``'s keywords (all but ``da``)."""
    import inspect

    import xarray

    full = inspect.signature(geosr.xr.upscale_dataarray)
    params = list(full.parameters.values())
    assert params[0].name == "da"
    expected = full.replace(parameters=params[1:])
    unbound = inspect.signature(geosr.xr.GeosrAccessor.upscale)
    assert list(unbound.parameters)[0] == "self"
    assert unbound.replace(parameters=list(unbound.parameters.values())[1:]) == expected
    accessor = xarray.DataArray(np.zeros((2, 2))).geosr
    assert isinstance(accessor, geosr.xr.GeosrAccessor)


def test_bound_accessor_method_signature() -> None:
    import inspect

    import xarray

    full = inspect.signature(geosr.xr.upscale_dataarray)
    expected = full.replace(parameters=list(full.parameters.values())[1:])
    assert inspect.signature(xarray.DataArray(np.zeros((2, 2))).geosr.upscale) == expected


def test_uncertainty_dataset_equals_the_cli_files(tmp_path: Path) -> None:
    """``ensemble=True, uncertainty=True``: the pixels of ``geosr upscale --ensemble
    --uncertainty`` (shipped weights by name, so workers take the ``ModelRef`` path)."""
    from geosr.cli import run

    src = make_raster(tmp_path / "s.tif", (3, 36, 40), seed=2, gain=250, offset=1, nodata=0,
                      hole=(slice(3, 6), slice(4, 9)))
    dst, unc = tmp_path / "o.tif", tmp_path / "u.tif"
    assert run(["upscale", str(src), "-o", str(dst), "-s", "2", "-m", "lgun-x2", "--ensemble",
                "--uncertainty", str(unc), "--tile-size", "24", "--overlap", "4", "-q"]) == 0
    da = rioxarray.open_rasterio(src, chunks={"x": 11, "y": 7})
    ds = da.geosr.upscale(scale=2, model="lgun-x2", ensemble=True, uncertainty=True,
                          tile_size=24, overlap=4)
    assert isinstance(ds, xarray.Dataset) and set(ds.data_vars) == {"sr", "uncertainty"}
    assert isinstance(ds.uncertainty.data, dask_array.Array)  # lazy
    values = ds.compute()
    with rasterio.open(dst) as d, rasterio.open(unc) as u:
        np.testing.assert_array_equal(values.sr.values, d.read())
        np.testing.assert_array_equal(values.uncertainty.values, u.read())  # NaN where invalid
        assert ds.uncertainty.rio.transform() == u.transform == ds.sr.rio.transform()
        assert ds.uncertainty.rio.crs == u.crs
        assert u.tags()["GEOSR_BAND_MEANING"] == ds.uncertainty.attrs["GEOSR_BAND_MEANING"]
    spread = values.uncertainty.values
    assert spread.dtype == np.float32 and np.isnan(ds.uncertainty.rio.nodata)
    assert np.isnan(spread[:, 6:12, 8:18]).all() and np.nanmax(spread) > 0.5  # stored units
    assert ds.sr.attrs["GEOSR_MODEL"] == ds.attrs["GEOSR_MODEL"] == "lgun-x2+ensemble"


def test_uncertainty_with_a_model_object_float_and_two_dimensions(tmp_path: Path) -> None:
    net = tiny_lgun(2, seed=1)
    src = _raster(tmp_path, "float32", shape=(1, 30, 34))
    upscale(src, tmp_path / "o.tif", scale=2, model=net, ensemble=True,
            uncertainty=tmp_path / "u.tif", **TILING)
    da = rioxarray.open_rasterio(src).squeeze("band", drop=True)  # numpy-backed, (y, x)
    ds = da.geosr.upscale(scale=2, model=net, ensemble=True, uncertainty=True, **TILING)
    assert ds.sr.dims == ds.uncertainty.dims == ("y", "x")
    assert isinstance(ds.uncertainty.data, np.ndarray)
    with rasterio.open(tmp_path / "o.tif") as d, rasterio.open(tmp_path / "u.tif") as u:
        np.testing.assert_array_equal(ds.sr.values, d.read(1))
        np.testing.assert_array_equal(ds.uncertainty.values, u.read(1))
    plain = da.geosr.upscale(scale=2, model=net, ensemble=True, **TILING)
    assert isinstance(plain, xarray.DataArray)  # without uncertainty: the usual DataArray
    np.testing.assert_array_equal(plain.values, ds.sr.values)


def test_uncertainty_needs_the_ensemble(tmp_path: Path) -> None:
    da = rioxarray.open_rasterio(_raster(tmp_path, "uint8", shape=(1, 20, 20)))
    with pytest.raises(OptionError, match="ensemble"):
        da.geosr.upscale(scale=2, model="nearest", uncertainty=True)
    with pytest.raises(OptionError, match="true or false"):
        da.geosr.upscale(scale=2, model="nearest", ensemble=True, uncertainty="u.tif")
