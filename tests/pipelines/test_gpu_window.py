"""``python -m pipelines.gpu_window``: the window's code path on CPU (``--smoke``, synthetic
data, no shared data needed), what travels, and publishing only what beats the weights it
would replace (always into temporary folders, never into lgun/weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import lgun.pretrained
from lgun.evaluate import DATASETS
from lgun.pretrained import WEIGHTS_DIR, load_weights, sha256_file
from pipelines.gpu_pack import (
    AERIAL_SUBSETS,
    SETS,
    copy_aerial,
    make_synthetic_data,
)
from pipelines.gpu_window import (
    AERIAL_SCORES,
    CHECK_NAME,
    CONFIGS,
    LOG_NAME,
    PLAN,
    main,
    out_of_memory,
    with_batch_fallback,
)
from pipelines.train import load_config
from pipelines.window_publish import (
    CANDIDATES,
    MAX_GATE_LOSS,
    gate_passes,
    publish_candidates,
    unpack_candidates,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def window(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The returned folder of one smoke window (the command a GPU machine runs, on CPU)."""
    out = tmp_path_factory.mktemp("window")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "pipelines.gpu_window", "--out", str(out), "--smoke"],
                   cwd=REPO, env=env, check=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def cands(window: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The window's candidate pairs, out of its zip."""
    dest = tmp_path_factory.mktemp("cands")
    unpack_candidates(window, dest)
    return dest


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_synthetic_data(tmp_path / "data")


def _copy_pair(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for ext in (".safetensors", ".json"):
        shutil.copy(src.with_suffix(ext), dest)


def test_smoke_window_returns_loadable_candidates(window: Path, cands: Path) -> None:
    names = sorted(p.name for p in window.iterdir())
    assert names == sorted([CHECK_NAME, LOG_NAME, CANDIDATES])  # a GPU machine returns <= 8
    assert sorted(p.name for p in cands.iterdir()) == sorted(
        f"{s.name}{ext}" for s in PLAN for ext in (".json", ".safetensors"))
    check = json.loads((window / CHECK_NAME).read_text())
    assert check["smoke"] and check["all_passed"] and set(check["models"]) == {"lgun-x2",
                                                                               "lgun-x4"}
    for m in check["models"].values():
        assert [p["path"] for p in m["paths"]] == ["fp32", "bf16", "fp16"]
        assert all(t["seconds"] > 0 and t["mpix_s"] > 0 for t in m["throughput"])
    assert "SMOKE RUN" in (window / LOG_NAME).read_text()
    for stage in PLAN:
        w = load_weights(cands / f"{stage.name}.safetensors")
        assert w.model.config.scale == stage.scale and w.meta.name == stage.name
        assert set(w.meta.metrics) == set(stage.scores) and w.meta.training["steps"] == 3
        assert w.meta.extra["gpu_window"]["smoke"] is True
    x3 = load_weights(cands / "lgun-x3.safetensors").meta.training
    assert x3["init_from"].startswith("lgun-x3") and "all tensors" in x3["init_from"]  # restart
    aid = load_weights(cands / "lgun-aid-x4.safetensors").meta
    assert {m["degradation"] for k, m in aid.metrics.items() if "@" in k} == {"box", "psf"}
    assert "box" in json.dumps(aid.training["degradation"])  # trained on the sensor mixture
    assert {s["name"] for s in aid.training["data"]} == {"aid150", "rsscn7", "natural"}


def test_aerial_images_that_travel_are_the_recipes(tmp_path: Path, data: Path) -> None:
    for stage in PLAN:
        recipe = load_config(CONFIGS / stage.recipe)
        folders = {p for s in recipe.data.sources if s.name != "natural" for p in s.paths}
        assert folders <= set(AERIAL_SUBSETS), stage.recipe  # every source travels
        for key in stage.scores + stage.gate:
            ds = key.partition("@")[0]
            assert ds in SETS or DATASETS[ds] in AERIAL_SUBSETS, key
    out = copy_aerial(data, tmp_path / "a", {"aerial/aid150/train": 1})
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "aerial/aid150/train/c0/a0.jpg", "aerial/aid150/train/c1/a0.jpg"]
    with pytest.raises(FileNotFoundError, match="no images"):
        copy_aerial(data, tmp_path / "b", {"aerial/nowhere": 1})


def test_gate_rule() -> None:
    floor = {"a": 24.0, "b": 24.0}
    assert gate_passes({"a": 25.0, "b": 25.0}, None, floor)
    assert not gate_passes({"a": 25.0, "b": 23.9}, None, floor)  # below bicubic on one
    old = {"a": 25.0, "b": 25.0}
    assert gate_passes({"a": 25.2, "b": 24.9}, old, floor)  # mean up, small loss
    assert not gate_passes({"a": 25.5, "b": 25.0 - MAX_GATE_LOSS - 0.01}, old, floor)
    assert not gate_passes({"a": 25.0, "b": 25.0}, old, floor)  # a tie is not better


def test_publish_keeps_better_weights_and_replaces_worse(
        cands: Path, tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str],
        zeroed_rec: Callable[..., Path]) -> None:
    shipped = sha256_file(WEIGHTS_DIR / "lgun-x2.safetensors")
    pub = tmp_path / "published"
    _copy_pair(WEIGHTS_DIR / "lgun-x2.safetensors", pub)
    # A candidate worse than the weights there: kept.
    worse = zeroed_rec(cands / "lgun-x2.safetensors", tmp_path / "worse")
    rows = publish_candidates(worse.parent, weights_dir=pub, data_root=data)
    assert [r["decision"] for r in rows] == ["kept"] and rows[0]["new"] < rows[0]["old"]
    assert sha256_file(pub / "lgun-x2.safetensors") == shipped
    # Worse weights there: the candidate replaces them, with its CPU Set5 score.
    zeroed_rec(pub / "lgun-x2.safetensors", pub)
    _copy_pair(cands / "lgun-x2.safetensors", tmp_path / "candidate")
    assert main(["publish", str(tmp_path / "candidate"), "--weights-dir", str(pub),
                 "--data-root", str(data)]) == 0
    assert "published" in capsys.readouterr().out
    meta = load_weights(pub / "lgun-x2.safetensors").meta
    assert meta.metrics["Set5"]["device"] == "cpu" and meta.extra["gpu_window"]["smoke"]
    assert meta.extra["storage"] == "float16"  # as the CPU recipes publish (half the size in git)
    assert sha256_file(WEIGHTS_DIR / "lgun-x2.safetensors") == shipped  # never touched


def test_smoke_candidates_never_replace_the_shipped_weights(
        cands: Path, tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch,
        zeroed_rec: Callable[..., Path]) -> None:
    shipped = tmp_path / "shipped"  # stands in for lgun/weights
    _copy_pair(WEIGHTS_DIR / "lgun-x2.safetensors", shipped)
    zeroed_rec(shipped / "lgun-x2.safetensors", shipped)
    before = sha256_file(shipped / "lgun-x2.safetensors")
    monkeypatch.setattr(lgun.pretrained, "WEIGHTS_DIR", shipped)
    _copy_pair(cands / "lgun-x2.safetensors", tmp_path / "candidate")
    rows = publish_candidates(tmp_path / "candidate", data_root=data)
    assert rows[0]["decision"] == "kept (smoke candidate)" and rows[0]["new"] > rows[0]["old"]
    assert sha256_file(shipped / "lgun-x2.safetensors") == before


def test_help_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("run", "prepare", "publish"))


def test_publish_reads_the_zip_and_gates_aerial_candidates_on_their_scores(
        window: Path, tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str],
        zeroed_rec: Callable[..., Path], aerial_rasters: Callable[..., list[Path]]) -> None:
    pub = tmp_path / "published"
    _copy_pair(WEIGHTS_DIR / "lgun-aid-x4.safetensors", pub)
    zeroed_rec(pub / "lgun-aid-x4.safetensors", pub)  # REC zeroed: far below bicubic
    shutil.copy(pub / "lgun-aid-x4.safetensors", window / "stale.safetensors")  # not in the zip
    # No rasters for the GeoTIFF gate: the aerial candidate is held back, however good.
    assert main(["publish", str(window), "--weights-dir", str(pub), "--data-root",
                 str(data)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == {s.name for s in PLAN}  # the zip's candidates, nothing else
    assert rows["lgun-aid-x4"].endswith("kept (GeoTIFF gate: rasters missing)")
    aerial_rasters(data)
    assert main(["publish", str(window), "--weights-dir", str(pub), "--data-root",
                 str(data)]) == 0
    out = capsys.readouterr().out
    assert "GeoTIFF gate: passed" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("lgun-")}
    assert "+".join(AERIAL_SCORES) in rows["lgun-aid-x4"]
    assert rows["lgun-aid-x4"].endswith("published")
    meta = load_weights(pub / "lgun-aid-x4.safetensors").meta
    assert {k for k, m in meta.metrics.items() if m.get("device") == "cpu"} == set(AERIAL_SCORES)
    assert meta.metrics["aid150@psf"]["degradation"] == "psf"


def test_a_stage_out_of_device_memory_runs_again_at_half_the_batch() -> None:
    tried: list[int] = []

    def run(batch: int) -> int:
        tried.append(batch)
        if batch > 20:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch

    assert with_batch_fallback(run, 96, what="stage") == 12 and tried == [96, 48, 24, 12]
    assert out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not out_of_memory(RuntimeError("shape mismatch"))

    def broken(batch: int) -> int:
        tried.append(batch)
        raise ValueError("not a memory error")

    tried.clear()
    with pytest.raises(ValueError):  # anything else fails the stage at once
        with_batch_fallback(broken, 96, what="stage")
    assert tried == [96]

    def never_fits(batch: int) -> int:
        tried.append(batch)
        raise torch.OutOfMemoryError("CUDA out of memory")

    tried.clear()
    with pytest.raises(torch.OutOfMemoryError):  # down to one sample, then the stage fails
        with_batch_fallback(never_fits, 4, what="stage")
    assert tried == [4, 2, 1]
