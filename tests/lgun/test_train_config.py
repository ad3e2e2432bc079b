"""TrainConfig: typed sub-configs, one clear ValueError per unknown key or bad value."""

from __future__ import annotations

import pytest

from lgun.data import Source
from lgun.model import LGUNConfig
from lgun.train import DataConfig, OptimConfig, ScheduleConfig, TrainConfig


def test_defaults_round_trip_through_plain_data() -> None:
    cfg = TrainConfig(scale=3, model=LGUNConfig(channels=16, num_heads=4),
                      optim=OptimConfig(name="adamw", betas=[0.8, 0.9]))
    assert cfg.model.scale == 3 and cfg.optim.betas == (0.8, 0.9)
    d = cfg.to_dict()
    assert "scale" not in d["model"] and d["optim"]["betas"] == [0.8, 0.9]
    assert TrainConfig.from_dict(d) == cfg
    assert isinstance(cfg.data.sources[0], Source)


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"steps": 3}, ["steps", "schedule.steps"]),  # a flat key of the older layout
        ({"every": 3}, ["eval.every"]),  # in [eval] and [checkpoint]: the first is named
        ({"optim": {"lr": 1e-4}}, ["optim.lr", "learning_rate"]),
        ({"model": {"chanels": 16}}, ["chanels"]),
        ({"data": {"sources": [{"name": "a", "pth": "x"}]}}, ["data.sources[0]", "pth"]),
        ({"publish": {"name": "lgun-x2", "when": "always"}}, ["publish.when"]),
        ({"optim": 3}, ["[optim]", "table"]),
    ],
)
def test_unknown_keys_are_refused_by_name(raw: dict, names: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(raw)
    message = str(e.value)
    assert "\n" not in message
    for name in names:
        assert name in message


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ({"scale": 5}, "scale"),
        ({"optim": {"name": "sgd"}}, "optim.name"),
        ({"optim": {"loss": "l3"}}, "optim.loss"),
        ({"optim": {"learning_rate": "fast"}}, "optim.learning_rate"),
        ({"optim": {"betas": [0.9]}}, "optim.betas"),
        ({"optim": {"ema_decay": 1.0}}, "optim.ema_decay"),
        ({"schedule": {"steps": 0}}, "schedule.steps"),
        ({"schedule": {"steps": 2.5}}, "schedule.steps"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
        ({"data": {"sources": []}}, "data.sources"),
        ({"data": {"sources": [{"name": "a", "paths": ["x"], "weight": -1}]}}, "weight"),
        ({"runtime": {"amp": "yes"}}, "runtime.amp"),
        ({"init": "zeros"}, "init"),
        ({"model": {"scale": 3}}, "model.scale"),
        ({"scale": 4, "publish": {"name": "lgun-x2"}}, "publish.name"),
    ],
)
def test_bad_values_are_one_clear_error(raw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name.replace(".", r"\.").replace("[", r"\[")):
        TrainConfig.from_dict(raw)


def test_sub_configs_check_themselves() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(name="sgd")
    with pytest.raises(ValueError, match="schedule.warmup_steps"):
        ScheduleConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match="data.patch_size"):
        DataConfig(patch_size="64")
