"""Band selection and the strategy that feeds N bands to a model with C channels.

Bands are 1-based, as in GDAL and rasterio. By default every band except an alpha
band is selected (the alpha band is carried separately). Colour-mapped (palette)
bands hold class codes: they are upscaled by nearest neighbour, never by the model.

For a model that takes a fixed channel count (3 for LGUN) the other selected
bands are cut into model groups:

* 3 or more bands: consecutive groups of three in order; when the count is not a
  multiple of three, the last group is the last three bands (it overlaps the
  previous group) and only its new bands are kept. Every group is real spectral
  content, never padding.
* 1 or 2 bands: each band alone, replicated to three channels; the output is the
  mean of the three output channels.

A model that takes any channel count (nearest, bicubic, lanczos) gets all bands
in one group. The output always has every selected band, in the selected order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from geosr.errors import OptionError


@dataclass(frozen=True)
class BandGroup:
    """One model call's worth of bands.

    Attributes:
        inputs: Positions (0-based, in the selected bands) fed to the model as channels.
        outputs: ``(channel, position)`` pairs: output channel ``channel`` becomes
            selected band ``position``.
        mode: ``model`` (channels as given), ``replicate`` (one band copied to every
            channel, output = channel mean) or ``nearest`` (categorical bands).
    """

    inputs: tuple[int, ...]
    outputs: tuple[tuple[int, int], ...]
    mode: str = "model"


def parse_bands(spec: str | Sequence[int] | None, count: int,
                alpha_band: int | None = None) -> tuple[int, ...]:
    """Validate a band selection.

    Args:
        spec: ``"4,3,2"``, a sequence of ints, or ``None`` for all non-alpha bands.
        count: Number of bands in the raster.
        alpha_band: 1-based alpha band, which cannot be selected (it is carried).

    Raises:
        OptionError: malformed list, out-of-range or repeated index, or the alpha band.
    """
    if spec is None or spec == "":
        bands = tuple(b for b in range(1, count + 1) if b != alpha_band)
        if not bands:
            raise OptionError("the raster has no band besides its alpha band")
        return bands
    if isinstance(spec, str):
        try:
            bands = tuple(int(tok) for tok in spec.replace(" ", "").split(","))
        except ValueError as e:
            raise OptionError(
                f"bands must be a comma-separated list of integers, got {spec!r}"
            ) from e
    else:
        bands = tuple(int(b) for b in spec)
    for b in bands:
        if not 1 <= b <= count:
            raise OptionError(f"band {b} does not exist: the raster has bands 1..{count}")
        if b == alpha_band:
            raise OptionError(
                f"band {b} is the alpha band; it is carried to the output automatically"
            )
    if len(set(bands)) != len(bands):
        raise OptionError(f"band list {spec!r} repeats a band")
    return bands


def band_groups(n_bands: int, in_channels: int | None,
                categorical: Sequence[int] = ()) -> tuple[BandGroup, ...]:
    """Cut ``n_bands`` selected bands into model groups (see the module docstring).

    Args:
        n_bands: Number of selected bands.
        in_channels: Channels the model takes, or ``None`` for any count.
        categorical: Positions of palette bands (upscaled by nearest neighbour).

    Returns:
        Groups whose outputs cover every position exactly once.
    """
    cat = tuple(p for p in range(n_bands) if p in set(categorical))
    rest = [p for p in range(n_bands) if p not in set(cat)]
    groups: list[BandGroup] = []
    if cat:
        groups.append(BandGroup(cat, tuple(enumerate(cat)), "nearest"))
    if not rest:
        return tuple(groups)
    if in_channels is None:
        groups.append(BandGroup(tuple(rest), tuple(enumerate(rest))))
        return tuple(groups)
    c = in_channels
    if len(rest) < c:
        for p in rest:
            groups.append(BandGroup((p,) * c, ((0, p),), "replicate"))
        return tuple(groups)
    done: set[int] = set()
    for start in range(0, len(rest), c):
        chunk = rest[start : start + c]
        if len(chunk) < c:
            chunk = rest[-c:]
        outs = tuple((i, p) for i, p in enumerate(chunk) if p not in done)
        done.update(p for _, p in outs)
        groups.append(BandGroup(tuple(chunk), outs))
    return tuple(groups)
