"""Self-describing weights: save/load round trip, sha256 check, shipped table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import lgun
from lgun import LGUN, WeightsError, load_pretrained, read_weights_meta, save_weights

TINY = dict(channels=16, num_blocks=2, num_heads=4)


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LGUN(scale=3, variant="single-topk", **TINY).eval()
    path = save_weights(model, tmp_path / "m", metadata={"training": {"steps": 2}})
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded = load_pretrained(path)
    assert loaded.config == model.config
    assert not loaded.training
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    meta = read_weights_meta(path)
    assert meta["training"] == {"steps": 2} and len(meta["sha256"]) == 64
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]  # what loading checks


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    path = save_weights(LGUN(scale=2, **TINY), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_pretrained(path)


def test_config_that_does_not_fit_the_tensors_is_refused(tmp_path: Path) -> None:
    path = save_weights(LGUN(scale=2, **TINY), tmp_path / "m.safetensors")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["config"]["scale"] = 4
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not match"):
        load_pretrained(path)


def test_unknown_names_and_missing_files_raise_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="unknown weights"):
        load_pretrained("no-such-model")
    with pytest.raises(WeightsError, match="not found"):
        load_pretrained(tmp_path / "absent.safetensors")


def test_shipped_table_names() -> None:
    names = set(lgun.PRETRAINED)
    assert names == {f"lgun{d}-x{s}" for d in ("", "-aid") for s in (2, 3, 4)}
    for info in lgun.PRETRAINED.values():
        assert info.name.endswith(f"x{info.scale}")
        assert info.domain == ("aerial" if "-aid-" in info.name else "natural")


@pytest.mark.parametrize("info", lgun.list_pretrained(available_only=True), ids=lambda i: i.name)
def test_every_shipped_weight_loads_and_matches_its_row(info: lgun.PretrainedInfo) -> None:
    model = load_pretrained(info.name)
    assert model.config.scale == info.scale
    meta = read_weights_meta(info.name)
    assert meta["name"] == info.name
    assert "training" in meta and "metrics" in meta
    with torch.no_grad():
        y = model(torch.rand(1, 3, 8, 8))
    assert y.shape == (1, 3, 8 * info.scale, 8 * info.scale)


def test_listed_but_unshipped_name_says_so() -> None:
    missing = [i for i in lgun.PRETRAINED.values() if not i.available]
    if not missing:
        pytest.skip("every listed weight is shipped")
    with pytest.raises(WeightsError, match="not shipped"):
        load_pretrained(missing[0].name)
