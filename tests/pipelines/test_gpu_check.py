"""``python -m pipelines.gpu_check --dry-run``: the GPU check's code path on CPU (a generated
scene, the CLI in this process and with a one-worker local cluster), and what travels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipelines.gpu_check import RESULT_NAME, WHEELS, compare, main, make_scene, within_tolerance


@pytest.mark.cluster
def test_dry_run_writes_a_passing_result(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--dry-run", "--size", "96"]) == 0
    res = json.loads((tmp_path / RESULT_NAME).read_text())
    assert res["ok"] and res["dry_run"] and res["scene"]["size"] == 96
    assert res["reference"]["pass"] and res["reference"]["identical"]  # cpu vs cpu
    assert res["device"]["status"] == 0 and res["device"]["output_mpix_per_s"] > 0
    assert res["gpu_workers"]["args"][:2] == ["--workers", "1"]
    assert res["gpu_workers"]["identical"]  # the cluster run writes the same pixels
    assert res["model_only"]["output_mpix_per_s"] > 0


def test_scene_and_comparison(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "s.tif", 160, bands=4)
    with rasterio.open(scene) as ds:
        x = ds.read()
        assert (ds.count, ds.dtypes[0], ds.block_shapes[0]) == (4, "uint16", (512, 512))
    assert x.std() > 1000 and len(np.unique(x)) > 1000  # structure, not a flat field
    other = tmp_path / "o.tif"
    with rasterio.open(scene) as ds, rasterio.open(other, "w", **ds.profile) as out:
        out.write(ds.read() + 1)
    cmp = compare(scene, other)
    assert not cmp["identical"] and cmp["max_abs_diff"] == pytest.approx(1 / 65535)
    assert 90 < cmp["psnr_db"] < 100 and within_tolerance(cmp)
    assert within_tolerance(compare(scene, scene))
    assert not within_tolerance({"equal_shape": False})


def test_the_wheels_are_pinned_once() -> None:
    names = [w.split("==")[0] for w in WHEELS]
    assert all("==" in w for w in WHEELS) and len(set(names)) == len(names)
    assert {"rasterio", "dask", "distributed", "dask-cuda"} <= set(names)
