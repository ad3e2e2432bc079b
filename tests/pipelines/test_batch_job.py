"""``python -m pipelines.batch``: a batch described by a TOML file (``pipelines/configs``)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from geosr.testing import REPO_ROOT, assert_nearest_upscaled


def test_pipelines_batch_config(tmp_path: Path, make_scenes: Callable[..., list[Path]],
                                capsys: pytest.CaptureFixture) -> None:
    from pipelines.batch import main

    scenes = make_scenes("job/scenes", n=2)
    cfg = tmp_path / "job" / "batch.toml"
    cfg.write_text(textwrap.dedent("""
        sources = ["scenes/*.tif"]
        out_dir = "out"
        scale = 2
        model = "nearest"
        tile_size = 24
        overlap = 4
    """))
    assert main([str(cfg)]) == 0
    assert "2 scenes: 2 ok" in capsys.readouterr().out
    for s in scenes:
        assert_nearest_upscaled(s, tmp_path / "job" / "out" / f"{s.stem}_x2.tif")
    (tmp_path / "job" / "scenes" / "s9.tif").write_text("broken")
    assert main([str(cfg)]) == 1  # a failed scene: exit status 1
    assert main([str(cfg), "--set", "colour=1"]) == 2
    assert "unknown key(s) colour" in capsys.readouterr().err


def test_example_config_resolves() -> None:
    from pipelines.batch import load_config

    cfg = load_config(REPO_ROOT / "pipelines" / "configs" / "batch_example.toml")
    assert cfg["sources"] == [str(REPO_ROOT / "examples" / "*.tif")]
    assert cfg["scale"] == 4 and cfg["workers"] == 2
