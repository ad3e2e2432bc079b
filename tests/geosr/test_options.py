"""``geosr.options.RunOptions``: defaults, validation, immutability, provenance tags."""

from __future__ import annotations

import dataclasses

import pytest

from geosr import __version__
from geosr.errors import OptionError
from geosr.models import NearestUpscaler
from geosr.options import (
    AI_NOTE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    REQUEST_TAGS,
    RunOptions,
    parse_creation_options,
)


def test_defaults() -> None:
    o = RunOptions(scale=2)
    assert (o.scale, o.model, o.bands) == (2, None, None)
    assert (o.tile_size, o.overlap, o.batch_size) == (256, 16, 4)
    assert (DEFAULT_TILE_SIZE, DEFAULT_OVERLAP, DEFAULT_BATCH_SIZE) == (256, 16, 4)
    assert o.device == "auto" and o.consistency == "none"
    assert o.creation_options == () and o.co == {}
    assert o.cog is False and o.aoi is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scale": 5}, "scale must be one of 2, 3, 4, got 5"),
    ({"scale": 1}, "scale must be one of 2, 3, 4, got 1"),
    ({"scale": True}, "scale must be one of 2, 3, 4, got True"),
    ({"scale": "2"}, "scale must be one of 2, 3, 4, got '2'"),
    ({"scale": 2.0}, "scale must be one of 2, 3, 4, got 2.0"),
    ({"scale": 2, "batch_size": 0}, "batch size must be >= 1, got 0"),
    ({"scale": 2, "consistency": "fast"}, "consistency must be one of"),
    ({"scale": 2, "tile_size": 8}, "tile size must be at least 16 pixels, got 8"),
    ({"scale": 2, "tile_size": 64, "overlap": 20}, "overlap 20 is too large for tile size 64"),
    ({"scale": 2, "overlap": -1}, "overlap must be >= 0, got -1"),
    ({"scale": 2, "creation_options": ["COMPRESS"]},
     "creation option must be KEY=VAL, got 'COMPRESS'"),
])
def test_each_invalid_value_is_an_option_error(kwargs: dict, message: str) -> None:
    with pytest.raises(OptionError) as exc:
        RunOptions(**kwargs)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)  # one line: the CLI prints it as is


def test_frozen() -> None:
    o = RunOptions(scale=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.scale = 3  # type: ignore[misc]
    other = o.with_model("bicubic")
    assert other.model == "bicubic" and o.model is None and other.scale == 2
    assert hash(RunOptions(scale=2, bands=[1, 2])) == hash(RunOptions(scale=2, bands=(1, 2)))


def test_numbers_are_normalised() -> None:
    o = RunOptions(scale=3, tile_size="64", overlap=4.0, batch_size="2", bands=[4, "3"])
    assert (o.tile_size, o.overlap, o.batch_size) == (64, 4, 2)
    assert o.bands == (4, 3)


def test_from_kwargs_none_means_default() -> None:
    o = RunOptions.from_kwargs(scale=4, model=None, bands=None, tile_size=None, overlap=None,
                               batch_size=None, device=None, creation_options=None, cog=None,
                               aoi=None, consistency=None)
    assert o == RunOptions(scale=4)
    assert RunOptions.from_kwargs(scale=2, tile_size=128, overlap=None).tile_size == 128
    with pytest.raises(OptionError, match="scale is required"):
        RunOptions.from_kwargs(scale=None)
    with pytest.raises(OptionError, match="scale is required"):
        RunOptions.from_kwargs(tile_size=64)
    with pytest.raises(OptionError, match="unknown option.*colour"):
        RunOptions.from_kwargs(scale=2, colour="red")


def test_creation_options_are_lower_case_pairs() -> None:
    o = RunOptions(scale=2, creation_options=["COMPRESS=ZSTD", "BlockXSize = 512",
                                              "SOURCE_WHITEPOINT=b=c"])
    assert o.creation_options == (("compress", "ZSTD"), ("blockxsize", "512"),
                                  ("source_whitepoint", "b=c"))
    assert o.co == {"compress": "ZSTD", "blockxsize": "512", "source_whitepoint": "b=c"}
    assert RunOptions(scale=2, creation_options={"COMPRESS": "LZW"}).creation_options == (
        ("compress", "LZW"),)
    pairs = (("compress", "DEFLATE"),)
    assert RunOptions(scale=2, creation_options=pairs).creation_options == pairs
    assert parse_creation_options(None) == {} and parse_creation_options([]) == {}


def test_tags() -> None:
    model = NearestUpscaler(2)
    tags = RunOptions(scale=2, tile_size=64, overlap=8, consistency="exact").tags(model)
    assert tags == {
        "GEOSR_VERSION": __version__,
        "GEOSR_NOTE": AI_NOTE,
        "GEOSR_MODEL": "nearest",
        "GEOSR_MODEL_PROVENANCE": model.provenance,
        "GEOSR_WEIGHTS_SHA256": "none",
        "GEOSR_SCALE": "2",
        "GEOSR_TILE_SIZE": "64",
        "GEOSR_OVERLAP": "8",
        "GEOSR_CONSISTENCY": "exact",
    }
    assert all(isinstance(v, str) for v in tags.values())


def test_request_tags_and_band_normalisation() -> None:
    model = NearestUpscaler(2)
    plain = RunOptions(scale=2).request_tags(model)
    assert set(plain) == set(REQUEST_TAGS)  # no GEOSR_BANDS without a band choice
    assert "GEOSR_NOTE" not in plain and "GEOSR_MODEL_PROVENANCE" not in plain
    assert plain["GEOSR_MODEL"] == "nearest" and plain["GEOSR_SCALE"] == "2"
    spaced = RunOptions(scale=2, bands="4, 3,2").request_tags(model)
    assert spaced["GEOSR_BANDS"] == "4,3,2"
    assert RunOptions(scale=2, bands=(4, 3, 2)).request_tags(model) == spaced
    assert {k: v for k, v in spaced.items() if k != "GEOSR_BANDS"} == plain
    # Another tiling is another request (geosr batch redoes such outputs).
    assert RunOptions(scale=2, tile_size=128).request_tags(model) != plain
