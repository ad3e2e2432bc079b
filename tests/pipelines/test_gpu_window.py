"""``python -m pipelines.gpu_window``: the window's code path on CPU (``--smoke``, synthetic
data, no shared data needed), what travels, and publishing only what beats the weights it
would replace (always into temporary folders, never into lgun/weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lgun.pretrained
from lgun.evaluate import DATASETS
from lgun.pretrained import WEIGHTS_DIR, load_weights, save_weights, sha256_file
from pipelines.gpu_window import (
    CHECK_NAME,
    LOG_NAME,
    PLAN,
    SETS,
    copy_benchmark,
    main,
    make_synthetic_data,
    materialise_benchmark,
    publish_candidates,
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


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_synthetic_data(tmp_path / "data")


def _degraded(src: Path, dest: Path) -> Path:
    """A copy of the weights at ``src`` (same name and metadata) whose REC outputs zeros."""
    w = load_weights(src)
    with torch.no_grad():
        w.model.rec[0].weight.zero_()
        w.model.rec[0].bias.zero_()
    return save_weights(w.model, dest / src.name, name=w.meta.name, metadata={
        "training": w.meta.training, "metrics": w.meta.metrics, **w.meta.extra})


def _copy_pair(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for ext in (".safetensors", ".json"):
        shutil.copy(src.with_suffix(ext), dest)


def test_smoke_window_returns_loadable_candidates(window: Path) -> None:
    names = sorted(p.name for p in window.iterdir())
    assert len(names) <= 8  # what a GPU machine returns
    assert names == sorted([CHECK_NAME, LOG_NAME, *(f"{s.name}{ext}" for s in PLAN
                                                    for ext in (".json", ".safetensors"))])
    check = json.loads((window / CHECK_NAME).read_text())
    assert check["smoke"] and check["all_passed"] and set(check["models"]) == {"lgun-x2",
                                                                               "lgun-x4"}
    for m in check["models"].values():
        assert [p["path"] for p in m["paths"]] == ["fp32", "bf16", "fp16"]
        assert all(t["seconds"] > 0 and t["mpix_s"] > 0 for t in m["throughput"])
    assert "SMOKE RUN" in (window / LOG_NAME).read_text()
    for stage in PLAN:
        w = load_weights(window / f"{stage.name}.safetensors")
        assert w.model.config.scale == stage.scale and w.meta.name == stage.name
        assert set(w.meta.metrics) == set(SETS) and w.meta.training["steps"] == 3
        assert w.meta.extra["gpu_window"]["smoke"] is True
    x4 = load_weights(window / "lgun-x4.safetensors").meta.training
    assert "lgun-x2" in x4["init_from"] and "all but rec." in x4["init_from"]  # the new body


def test_benchmark_travels_losslessly(tmp_path: Path, data: Path) -> None:
    bench = copy_benchmark(data, tmp_path / "bench")
    assert {p.suffix for p in (bench / DATASETS["Set5"]).iterdir()} == {".png"}
    assert {p.suffix for p in (bench / DATASETS["B100"]).iterdir()} == {".webp"}
    assert materialise_benchmark(bench, tmp_path / "root") == list(SETS)
    for ds in SETS:
        for src in sorted((data / DATASETS[ds]).iterdir()):
            with Image.open(src) as a, Image.open(tmp_path / "root" / DATASETS[ds] /
                                                  src.name) as b:
                assert a.mode == b.mode  # a grey image stays grey (the Y protocol needs it)
                assert np.array_equal(np.asarray(a), np.asarray(b))


def test_publish_keeps_better_weights_and_replaces_worse(
        window: Path, tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = sha256_file(WEIGHTS_DIR / "lgun-x2.safetensors")
    pub = tmp_path / "published"
    _copy_pair(WEIGHTS_DIR / "lgun-x2.safetensors", pub)
    # A candidate worse than the weights there: kept.
    worse = _degraded(window / "lgun-x2.safetensors", tmp_path / "worse")
    rows = publish_candidates(worse.parent, weights_dir=pub, data_root=data)
    assert [r["decision"] for r in rows] == ["kept"] and rows[0]["new"] < rows[0]["old"]
    assert sha256_file(pub / "lgun-x2.safetensors") == shipped
    # Worse weights there: the candidate replaces them, with its CPU Set5 score.
    _degraded(pub / "lgun-x2.safetensors", pub)
    _copy_pair(window / "lgun-x2.safetensors", tmp_path / "candidate")
    assert main(["publish", str(tmp_path / "candidate"), "--weights-dir", str(pub),
                 "--data-root", str(data)]) == 0
    assert "published" in capsys.readouterr().out
    meta = load_weights(pub / "lgun-x2.safetensors").meta
    assert meta.metrics["Set5"]["device"] == "cpu" and meta.extra["gpu_window"]["smoke"]
    assert sha256_file(WEIGHTS_DIR / "lgun-x2.safetensors") == shipped  # never touched


def test_smoke_candidates_never_replace_the_shipped_weights(
        window: Path, tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "shipped"  # stands in for lgun/weights
    _copy_pair(WEIGHTS_DIR / "lgun-x2.safetensors", shipped)
    _degraded(shipped / "lgun-x2.safetensors", shipped)
    before = sha256_file(shipped / "lgun-x2.safetensors")
    monkeypatch.setattr(lgun.pretrained, "WEIGHTS_DIR", shipped)
    _copy_pair(window / "lgun-x2.safetensors", tmp_path / "candidate")
    rows = publish_candidates(tmp_path / "candidate", data_root=data)
    assert rows[0]["decision"] == "kept (smoke candidate)" and rows[0]["new"] > rows[0]["old"]
    assert sha256_file(shipped / "lgun-x2.safetensors") == before


def test_help_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("run", "prepare", "publish"))
