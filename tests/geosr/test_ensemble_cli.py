"""``--ensemble`` and ``--uncertainty``: the 8-view self-ensemble end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geosr.api import upscale
from geosr.cli import run
from geosr.errors import OptionError
from geosr.options import RunOptions
from geosr.spread import BAND_MEANING
from geosr.testing import gdalinfo_json, tiny_lgun

Raster = Callable[..., Path]


@pytest.fixture
def scene(make_raster: Raster) -> Path:
    return make_raster("scene.tif", (3, 40, 50), seed=3, gain=250, offset=1, nodata=0,
                       hole=(slice(5, 12), slice(8, 20)))


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as d:
        return d.read()


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("geosr: error: "), err
    return lines[0]


def test_nearest_ensemble_equals_plain_and_tags_say_ensemble(scene: Path,
                                                            tmp_path: Path) -> None:
    """Nearest is equivariant under flips and quarter turns: the mean is itself."""
    assert run(["upscale", str(scene), "-o", str(tmp_path / "p.tif"), "-s", "2", "-m",
                "nearest", "-q"]) == 0
    assert run(["upscale", str(scene), "-o", str(tmp_path / "e.tif"), "-s", "2", "-m",
                "nearest", "--ensemble", "--tile-size", "24", "--overlap", "4", "-q"]) == 0
    np.testing.assert_array_equal(_read(tmp_path / "e.tif"), _read(tmp_path / "p.tif"))
    with rasterio.open(tmp_path / "e.tif") as d:
        tags = d.tags()
    assert tags["GEOSR_MODEL"] == "nearest+ensemble"
    assert "8-view self-ensemble" in tags["GEOSR_MODEL_PROVENANCE"]
    plain = RunOptions(scale=2, model="nearest")
    ens = RunOptions(scale=2, model="nearest", ensemble=True)
    from geosr.ensemble import with_ensemble
    from geosr.models import load_model

    m = load_model("nearest", 2)
    assert plain.request_tags(m) != ens.request_tags(with_ensemble(m, True))


@pytest.mark.parametrize("method", ["bicubic", "lgun"])
def test_ensemble_vs_plain_and_tiled_vs_whole(make_raster: Raster, tmp_path: Path,
                                                     method: str) -> None:
    src = make_raster("f.tif", (3, 40, 36), seed=6, dtype="float32", gain=1.0)
    model = "bicubic" if method == "bicubic" else tiny_lgun(2, seed=1)
    upscale(src, tmp_path / "plain.tif", scale=2, model=model, tile_size=512)
    upscale(src, tmp_path / "whole.tif", scale=2, model=model, tile_size=512, ensemble=True)
    upscale(src, tmp_path / "tiled.tif", scale=2, model=model, tile_size=24, overlap=4,
            ensemble=True)
    plain, whole, tiled = (_read(tmp_path / f"{n}.tif").astype(np.float64)
                           for n in ("plain", "whole", "tiled"))
    if method == "bicubic":
        # Bicubic's symmetric kernel commutes with flips and quarter turns, and its small
        # support lets blended tiles reproduce the whole image.
        np.testing.assert_allclose(whole, plain, atol=1e-5)
        np.testing.assert_allclose(tiled, whole, atol=1e-5)
    else:  # the network sees the whole tile: close, not equal (as the plain model)
        assert np.abs(whole - plain).max() > 1e-4
        assert np.abs(tiled - whole).mean() < 0.02


def test_info_says_8x(scene: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["info", str(scene), "-s", "2", "-m", "nearest", "--ensemble"]) == 0
    assert "8-view self-ensemble, ~8x model time" in capsys.readouterr().out
    assert run(["info", str(scene), "-s", "2", "-m", "nearest", "--ensemble", "--json"]) == 0
    ens = json.loads(capsys.readouterr().out)
    assert ens["ensemble"] is True
    assert run(["info", str(scene), "-s", "2", "-m", "nearest", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["ensemble"] is False
    assert (ens["memory_estimate_bytes"]["total"]
            > plain["memory_estimate_bytes"]["total"])
    assert run(["upscale", "--help"]) == 0
    assert "~8x" in " ".join(capsys.readouterr().out.split())


def test_uncertainty_nearest_is_zero_on_valid_nan_on_nodata(scene: Path,
                                                            tmp_path: Path) -> None:
    dst, unc = tmp_path / "o.tif", tmp_path / "u.tif"
    assert run(["upscale", str(scene), "-o", str(dst), "-s", "2", "-m", "nearest",
                "--ensemble", "--uncertainty", str(unc), "--tile-size", "24", "--overlap",
                "4", "-q"]) == 0
    with rasterio.open(dst) as d, rasterio.open(unc) as u:
        assert (u.width, u.height, u.transform, u.crs) == (d.width, d.height, d.transform,
                                                          d.crs)
        assert u.count == 3 and u.dtypes == ("float32",) * 3 and np.isnan(u.nodata)
        spread, valid = u.read(), d.read_masks() > 0
        tags = u.tags()
    assert np.all(spread[valid] == 0) and np.all(np.isnan(spread[~valid]))
    assert (~valid).any()
    assert tags["GEOSR_BAND_MEANING"] == BAND_MEANING
    assert tags["GEOSR_MODEL"] == "nearest+ensemble"
    gd, gu = gdalinfo_json(dst), gdalinfo_json(unc)
    assert gu["size"] == gd["size"] and gu["geoTransform"] == gd["geoTransform"]
    assert gu["coordinateSystem"]["wkt"] == gd["coordinateSystem"]["wkt"]


def test_uncertainty_in_output_units_tiled_and_cog(make_raster: Raster,
                                                   tmp_path: Path) -> None:
    """Spread = the views' std times the mapping's hi - lo; tiles blend; --cog honoured."""
    from geosr.engine import prepare_tile, run_model
    from geosr.ensemble import EnsembleUpscaler

    src = make_raster("f.tif", (3, 30, 34), seed=2, dtype="uint16", gain=4000, offset=100)
    net = tiny_lgun(2, seed=1)
    results = {}
    for name, tile in {"w": 512, "t": 24}.items():
        results[name] = upscale(src, tmp_path / f"{name}.tif", scale=2, model=net,
                                tile_size=tile, overlap=4, ensemble=True,
                                uncertainty=tmp_path / f"{name}_u.tif", cog=True)
    w, t = _read(tmp_path / "w_u.tif"), _read(tmp_path / "t_u.tif")
    mappings = results["w"].mappings
    data = _read(src)
    x = prepare_tile(data, np.ones(data.shape, bool), mappings)
    std = run_model(EnsembleUpscaler(net), [x], 1, spread=True)[0][3:]
    expected = np.stack([std[c] * (m.hi - m.lo) for c, m in enumerate(mappings)])
    np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-3)
    assert w.max() > 1.0  # stored units (the data span thousands), not [0, 1]
    assert np.abs(t - w).mean() < 0.05 * np.abs(w).mean()
    assert gdalinfo_json(tmp_path / "w_u.tif")["metadata"]["IMAGE_STRUCTURE"].get(
        "LAYOUT") == "COG"


def test_failed_run_leaves_nothing(scene: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    dst = tmp_path / "o.tif"
    rc = run(["upscale", str(scene), "-o", str(dst), "-s", "2", "-m", "nearest",
              "--ensemble", "--uncertainty", str(tmp_path / "missing" / "u.tif")])
    assert rc != 0
    _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_failure_mid_run_leaves_nothing_at_either_path(scene: Path, tmp_path: Path) -> None:
    from geosr.models import NearestUpscaler

    class Broken(NearestUpscaler):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        upscale(scene, tmp_path / "o.tif", scale=2, model=Broken(2), ensemble=True,
                uncertainty=tmp_path / "u.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_uncertainty_needs_ensemble(scene: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    rc = run(["upscale", str(scene), "-o", str(tmp_path / "o.tif"), "-s", "2", "-m",
              "nearest", "--uncertainty", str(tmp_path / "u.tif")])
    assert rc != 0
    assert "--ensemble" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(OptionError):
        RunOptions(scale=2, uncertainty="u.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_model_cache_and_descriptor_see_through_the_wrapper() -> None:
    from geosr.ensemble import EnsembleUpscaler, with_ensemble
    from geosr.model_cache import ModelRef, forget_model, worker_model
    from geosr.models import describe_model

    plain = ModelRef.for_spec("nearest", 2, "cpu")
    ens = ModelRef.for_spec("nearest", 2, "cpu", ensemble=True)
    assert plain.key != ens.key
    try:
        assert isinstance(worker_model(ens), EnsembleUpscaler)
        assert not isinstance(worker_model(plain), EnsembleUpscaler)
    finally:
        forget_model(plain.key)
        forget_model(ens.key)
    info = describe_model(with_ensemble(tiny_lgun(2), True), 2)
    assert info.neural and info.name == "tiny-lgun+ensemble"
    wrapped = with_ensemble(tiny_lgun(2), True)
    assert with_ensemble(wrapped, True) is wrapped


def test_disk_guard_counts_the_uncertainty_map(scene: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """80 x 100 x 3 uint8 output: 24 kB; its float32 spread map adds 96 kB."""
    import shutil
    from collections import namedtuple

    from geosr.errors import OutputError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 0, 50_000))
    upscale(scene, tmp_path / "plain.tif", scale=2, model="nearest", ensemble=True)
    with pytest.raises(OutputError, match="needs up to"):
        upscale(scene, tmp_path / "o.tif", scale=2, model="nearest", ensemble=True,
                uncertainty=tmp_path / "u.tif")
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "u.tif").exists()


def test_batch_ensemble_outputs_are_not_plain_ones(make_scenes: Callable[..., list[Path]],
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from geosr.batch import run_batch

    make_scenes("in", n=2)
    pattern, out = str(tmp_path / "in" / "*.tif"), tmp_path / "out"
    plain = RunOptions(scale=2, model="nearest")
    ens = RunOptions(scale=2, model="nearest", ensemble=True)
    assert [r.status for r in run_batch(pattern, out, options=plain).records] == ["ok"] * 2
    assert [r.status for r in run_batch(pattern, out, options=ens).records] == ["ok"] * 2
    assert [r.status for r in run_batch(pattern, out, options=ens).records] == ["skipped"] * 2
    with rasterio.open(out / "s0_x2.tif") as d:
        assert d.tags()["GEOSR_MODEL"] == "nearest+ensemble"
    assert run(["batch", pattern, "-d", str(out), "-s", "2", "-m", "nearest", "--ensemble",
                "-q"]) == 0
    with pytest.raises(OptionError, match="uncertainty"):
        run_batch(pattern, out, options=RunOptions(scale=2, model="nearest", ensemble=True,
                                                   uncertainty=tmp_path / "u.tif"))
