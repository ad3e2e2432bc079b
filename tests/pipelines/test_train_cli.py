"""``python -m pipelines.train``: overrides, recipes, dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lgun.model import LGUNConfig
from pipelines.train import apply_overrides, load_config, main, parse_value

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.toml") if p.name != "batch_example.toml")


def test_cli_overrides(tmp_path: Path) -> None:
    assert parse_value("3") == 3 and parse_value("1e-4") == 1e-4 and parse_value("auto") == "auto"
    assert parse_value("[0.9, 0.99]") == [0.9, 0.99] and parse_value("true") is True
    toml = tmp_path / "c.toml"
    toml.write_text('name = "x"\n[schedule]\nsteps = 5\n[model]\nchannels = 32\n')
    cfg = load_config(toml, ["schedule.steps=7", "model.num_blocks=2", "resume=auto",
                             "optim.betas=[0.8, 0.9]"])
    assert cfg.schedule.steps == 7 and cfg.model == LGUNConfig(channels=32, num_blocks=2)
    assert cfg.resume == "auto" and cfg.optim.betas == (0.8, 0.9)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(ValueError, match="unknown"):
        load_config(toml, ["stepz=1"])


def test_recipes_load_and_do_not_publish_by_default() -> None:
    assert {p.name for p in RECIPES} >= {"natural.toml", "aerial.toml", "aerial_sensor.toml",
                                         "gpu_window.toml"}
    for path in RECIPES:
        cfg = load_config(path)
        assert cfg.publish.name == "", path.name  # publishing is asked for with --set
        assert cfg.optim.name == "adamw", path.name  # the recipe of the shipped weights


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_per_scale_overrides_of_the_recipes(scale: int) -> None:
    natural = load_config(CONFIGS / "natural.toml",
                          [f"scale={scale}", f"name=natural-x{scale}", "init_from=lgun-x2",
                           f"publish.name=lgun-x{scale}"])
    assert natural.scale == natural.model.scale == scale
    assert natural.publish.name == f"lgun-x{scale}"
    aerial = load_config(CONFIGS / "aerial.toml",
                         [f"scale={scale}", f"init_from=lgun-x{scale}",
                          f"publish.name=lgun-aid-x{scale}"])
    assert aerial.eval.dataset == aerial.publish.dataset == "aid150"
    assert [s.weight for s in aerial.data.sources] == [0.7, 0.3]
    sensor = load_config(CONFIGS / "aerial_sensor.toml",
                         [f"scale={scale}", f"init_from=lgun-aid-x{scale}"])
    assert [s.name for s in sensor.data.sources] == ["aid150", "rsscn7", "natural"]
    assert set(sensor.data.degradation) == {"bicubic", "box", "psf", "psf_bicubic"}
    assert sensor.data.patch_size % scale == 0
    other = {2: 3, 3: 4, 4: 2}[scale]
    with pytest.raises(ValueError, match="scale"):  # a shipped name of another scale
        load_config(CONFIGS / "natural.toml", [f"scale={scale}", f"publish.name=lgun-x{other}"])


def test_dry_run_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(CONFIGS / "natural.toml"), "--set", "optim.learning_rate=1e-4",
                 "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["optim"]["learning_rate"] == 1e-4 and printed["scale"] == 2


def test_bad_key_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(CONFIGS / "natural.toml"), "--set", "optim.lr=1e-4", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.lr" in err


@pytest.mark.data
@pytest.mark.parametrize("recipe", [p for p in RECIPES if p.name != "gpu_window.toml"],
                         ids=lambda p: p.name)
def test_every_source_of_a_recipe_has_images_for_its_patches(recipe: Path,
                                                             shared_data: Path) -> None:
    """Each pool needs images at least one HR patch wide, at every scale (headers only)."""
    from PIL import Image

    from lgun.data import list_images, lr_patch_size

    cfg = load_config(recipe)
    for source in cfg.data.sources:
        sides = []
        for folder in source.paths:
            for path in list_images(shared_data / folder):
                with Image.open(path) as im:
                    sides.append(min(im.size))
        assert sides, f"{recipe.name}: {source.name} has no images"
        for scale in (2, 3, 4):
            hr = lr_patch_size(cfg.data.patch_size, scale) * scale
            assert max(sides) >= hr, f"{recipe.name}: no {source.name} image fits {hr} px x{scale}"
