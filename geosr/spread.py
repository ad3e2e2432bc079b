"""The uncertainty GeoTIFF: the self-ensemble's per-pixel spread on the output grid.

``geosr upscale --ensemble --uncertainty U.tif`` writes, beside the prediction, one
float32 band per output band (alpha excluded): the population standard deviation of
the 8 dihedral views' predictions, blended across tile overlaps with the prediction's
weights and converted to the output's units. It marks where the views disagree; it is
not an error estimate (docs/ENSEMBLE.md). Invalid output pixels are NaN (the nodata).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geosr.errors import OutputError, one_line
from geosr.masks import upsample_nearest
from geosr.plan import Plan
from geosr.profile import BandMeta, output_profile, write_metadata
from geosr.radiometry import BandMapping
from geosr.tiling import Tile

#: What the uncertainty bands hold, written into the file.
BAND_MEANING = ("8-view self-ensemble disagreement (population std), output units; "
                "not an error estimate")


def spread_to_units(spread: np.ndarray, valid_hr: np.ndarray,
                    mappings: tuple[BandMapping, ...]) -> np.ndarray:
    """Model-unit spread (C, H, W) -> float32 in stored units, NaN where invalid.

    A std scales with the mapping's ``hi - lo`` and ignores its offset ``lo``.
    """
    out = np.stack([spread[c] * np.float32(m.hi - m.lo)
                    for c, m in enumerate(mappings)]).astype(np.float32)
    out[~valid_hr] = np.nan
    return out


class SpreadWriter:
    """Creates the uncertainty GeoTIFF and writes each unit's spread into it.

    Args:
        path: The (temporary) file to create.
        plan: The run's plan (grid, georeferencing, bands).
        mappings: Radiometric mapping per band.
        tags: Provenance tags (those of the prediction); ``GEOSR_BAND_MEANING`` is added.
        creation_options: GTiff creation options overriding the defaults.
        block: Block side (the prediction's), or ``None`` for the default.

    Raises:
        OutputError: the file cannot be created.
    """

    def __init__(self, path: Any, plan: Plan, mappings: tuple[BandMapping, ...], *,
                 tags: dict[str, Any], creation_options: dict[str, str],
                 block: tuple[int | None, int | None]) -> None:
        self.plan = plan
        self.mappings = mappings
        out_h, out_w = plan.out_shape
        # The prediction's options, except those of its own sample type.
        co = {k: v for k, v in creation_options.items()
              if k not in ("nbits", "pixeltype", "predictor")}
        profile = output_profile(width=out_w, height=out_h, count=len(plan.bands),
                                 dtype="float32", georef=plan.georef, nodata=float("nan"),
                                 creation_options=co, block=block)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.out = rasterio.open(path, "w", **profile)
            # A std keeps the band's unit and scale tag (physical = stored * scale) but
            # never its offset.
            bands = [BandMeta(description=f"spread of band {b}",
                              colorinterp=ColorInterp.undefined, scale=plan.meta[i].scale,
                              units=plan.meta[i].units)
                     for i, b in enumerate(plan.bands)]
            write_metadata(self.out, dataset_tags={}, bands=bands, georef=plan.georef,
                           provenance={**tags, "GEOSR_BAND_MEANING": BAND_MEANING})
        except (RasterioError, ValueError, TypeError) as e:
            raise OutputError(f"cannot create the uncertainty output: {one_line(e)}") from e

    def write(self, tile: Tile, spread: np.ndarray, valid: np.ndarray) -> None:
        """Write a blended unit's spread (C, uh*s, uw*s, model units).

        Args:
            tile: The tile whose unit this is.
            spread: The blended spread of the unit.
            valid: (C, h, w) validity of the tile's whole read window (input pixels).
        """
        s = self.plan.scale
        uh, uw = tile.rows.unit_size, tile.cols.unit_size
        ly, lx = tile.lead
        valid_hr = upsample_nearest(valid[:, ly : ly + uh, lx : lx + uw], s)
        win = Window(tile.cols.unit_start * s, tile.rows.unit_start * s, uw * s, uh * s)
        try:
            self.out.write(spread_to_units(spread, valid_hr, self.mappings), window=win)
        except RasterioError as e:
            raise OutputError(f"cannot write the uncertainty output: {one_line(e)}") from e

    def close(self) -> None:
        """Close the file (flushes it)."""
        self.out.close()
