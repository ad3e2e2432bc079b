"""``geosr.bands``: band selection and the groups of bands a model is run on."""

from __future__ import annotations

import pytest

from geosr.bands import band_groups, parse_bands
from geosr.errors import OptionError


def test_parse_bands() -> None:
    assert parse_bands("4,3,2", 4) == (4, 3, 2)
    assert parse_bands(None, 4, alpha_band=4) == (1, 2, 3)
    for bad in ("0", "5", "1,1", "a,b"):
        with pytest.raises(OptionError):
            parse_bands(bad, 4)
    with pytest.raises(OptionError, match="alpha"):
        parse_bands("4", 4, alpha_band=4)


@pytest.mark.parametrize("n", range(1, 12))
def test_band_groups_cover_every_band_once(n: int) -> None:
    groups = band_groups(n, 3)
    written = [p for g in groups for _, p in g.outputs]
    assert sorted(written) == list(range(n))
    for g in groups:
        assert len(g.inputs) == 3
        for ch, p in g.outputs:
            assert g.inputs[ch] == p
    if n >= 3:  # real spectral groups, never replication
        assert all(g.mode == "model" for g in groups)
        assert all(len(set(g.inputs)) == 3 for g in groups)
    else:
        assert all(g.mode == "replicate" for g in groups)


def test_band_groups_any_channels_and_palette() -> None:
    (g,) = band_groups(5, None)
    assert g.inputs == (0, 1, 2, 3, 4)
    groups = band_groups(2, 3, categorical=[1])
    assert groups[0].mode == "nearest" and groups[0].inputs == (1,)
    assert groups[1].mode == "replicate" and groups[1].inputs == (0, 0, 0)
