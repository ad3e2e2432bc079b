"""The output's georeferencing, creation options and metadata, as plain data.

* Georeferencing: ``transform * Affine.scale(1 / scale)`` of the processed window
  (rotated and south-up transforms included), same CRS, same bounds. GCP-only
  rasters keep their GCPs with pixel/line multiplied by ``scale``; RPC-only rasters
  keep their RPCs with the image offsets and scales adjusted (see ``scale_rpcs``).
* Creation options: tiled (blocks of one tiling unit, ``(tile_size - 2*overlap) * scale``
  when that is a multiple of 16, else 512), DEFLATE with a predictor, ``BIGTIFF=IF_SAFER``,
  and on the streamed path ``NUM_THREADS`` (GDAL compresses blocks on that many threads;
  not stored in the file); ``--co KEY=VAL`` overrides any of them, as in ``rio``.
* Metadata: dataset and band tags, band descriptions, colour interpretation,
  colour map, scale/offset, units and nodata are copied; provenance tags
  ``GEOSR_*`` say what produced the pixels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp
from rasterio.rpc import RPC
from rasterio.windows import Window

from geosr.errors import InputError


@dataclass(frozen=True)
class Georef:
    """How the output is located: an affine transform, GCPs or RPCs.

    Attributes:
        kind: ``transform``, ``gcps`` or ``rpcs``.
        crs: The CRS (of the transform or of the GCPs), or ``None``.
        transform: Output transform (identity unless ``kind == "transform"``).
        gcps: Scaled ground control points.
        rpcs: Scaled rational polynomial coefficients.
    """

    kind: str
    crs: Any
    transform: Affine
    gcps: tuple[GroundControlPoint, ...] = ()
    rpcs: RPC | None = None


def source_georef_kind(src: Any) -> str:
    """``transform``, ``gcps``, ``rpcs`` or ``none`` for an open dataset."""
    if not src.transform.is_identity:
        return "transform"
    if src.gcps[0]:
        return "gcps"
    if src.rpcs:
        return "rpcs"
    return "none"


def scale_rpcs(rpcs: RPC, scale: int) -> RPC:
    """RPCs of the image upscaled by ``scale``.

    RPC line/sample coordinates put pixel centres at integers, so an input
    coordinate ``x`` becomes ``scale * x + (scale - 1) / 2``.
    """
    d = rpcs.to_dict()
    half = (scale - 1) / 2.0
    d["line_off"] = d["line_off"] * scale + half
    d["samp_off"] = d["samp_off"] * scale + half
    d["line_scale"] = d["line_scale"] * scale
    d["samp_scale"] = d["samp_scale"] * scale
    return RPC(**d)


def output_georef(src: Any, window: Window, scale: int) -> Georef:
    """The output georeferencing for ``window`` of ``src`` upscaled by ``scale``.

    Raises:
        InputError: a GCP- or RPC-georeferenced raster with a sub-window (AOI).
    """
    kind = source_georef_kind(src)
    full = (window.col_off, window.row_off, window.width, window.height) == (
        0, 0, src.width, src.height)
    if kind in ("gcps", "rpcs") and not full:
        raise InputError(
            f"the raster is georeferenced by {kind.upper()} only, so an AOI cannot be cut "
            "from it; warp it first (gdalwarp) or run without --aoi"
        )
    if kind == "gcps":
        gcps, crs = src.gcps
        scaled = tuple(
            GroundControlPoint(row=g.row * scale, col=g.col * scale, x=g.x, y=g.y, z=g.z,
                               id=g.id, info=g.info)
            for g in gcps
        )
        return Georef("gcps", crs, Affine.identity(), gcps=scaled)
    if kind == "rpcs":
        return Georef("rpcs", src.crs, Affine.identity(), rpcs=scale_rpcs(src.rpcs, scale))
    # Composed here rather than with ``src.window_transform``, whose ``*`` operator is
    # deprecated in affine 3 and warns on every call.
    origin = Affine.translation(window.col_off, window.row_off)
    transform = src.transform @ origin @ Affine.scale(1.0 / scale)
    return Georef(kind, src.crs, transform)


def _block(n: int, preferred: int = 512) -> int:
    """Block side: ``preferred`` or, for small rasters, the size rounded up to 16."""
    return min(preferred, max(16, -(-n // 16) * 16))


def output_profile(*, width: int, height: int, count: int, dtype: str, georef: Georef,
                   nodata: float | None, creation_options: Mapping[str, str],
                   block: tuple[int | None, int | None] = (None, None),
                   threads: int = 1) -> dict[str, Any]:
    """A rasterio profile for the output GeoTIFF.

    Args:
        block: Preferred block height and width (the tiling's unit size, so units are
            whole blocks: ``TileGrid.output_blocks``); ``None``: 512. ``--co
            BLOCKXSIZE/BLOCKYSIZE`` win over it.
        threads: GDAL compression threads (``NUM_THREADS``) when above 1; ``--co
            NUM_THREADS`` wins over it.
    """
    floating = np.issubdtype(np.dtype(dtype), np.floating)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": georef.crs if georef.kind in ("transform", "rpcs") else None,
        "transform": georef.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": _block(width, block[1] or 512),
        "blockysize": _block(height, block[0] or 512),
        "compress": "deflate",
        "predictor": 3 if floating else 2,
        "bigtiff": "IF_SAFER",
        "interleave": "pixel",
    }
    if georef.kind != "transform":
        profile.pop("transform")
    if threads > 1:
        profile["num_threads"] = str(threads)
    profile.update(creation_options)  # keys are lower case (geosr.creation)
    return profile


#: Tags that describe the source pixels or its overviews and would be wrong for the output.
_STALE_TAGS = ("STATISTICS_", "OVR_RESAMPLING_ALG")


def output_dataset_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The source's dataset tags that still describe the output."""
    return {k: v for k, v in tags.items() if not k.startswith(_STALE_TAGS)}


@dataclass(frozen=True)
class BandMeta:
    """Per-band metadata copied from the source.

    Attributes:
        description: Band description (or ``None``).
        colorinterp: Colour interpretation.
        tags: Band tags (default domain).
        scale: Scale tag.
        offset: Offset tag.
        units: Units.
        colormap: Colour map, for palette bands.
    """

    description: str | None
    colorinterp: ColorInterp
    tags: dict[str, str] = field(default_factory=dict)
    scale: float = 1.0
    offset: float = 0.0
    units: str | None = None
    colormap: dict[int, tuple[int, ...]] | None = None


def band_meta(src: Any, band: int) -> BandMeta:
    """Metadata of 1-based ``band`` of ``src``."""
    ci = src.colorinterp[band - 1]
    cmap = None
    if ci == ColorInterp.palette:
        try:
            cmap = src.colormap(band)
        except ValueError:
            cmap = None
    return BandMeta(
        description=src.descriptions[band - 1],
        colorinterp=ci,
        tags={k: v for k, v in src.tags(band).items() if not k.startswith(_STALE_TAGS)},
        scale=float(src.scales[band - 1]),
        offset=float(src.offsets[band - 1]),
        units=src.units[band - 1] or None,
        colormap=cmap,
    )


def write_metadata(dst: Any, *, dataset_tags: Mapping[str, str], bands: list[BandMeta],
                   provenance: Mapping[str, Any], georef: Georef) -> None:
    """Write tags, band metadata and GCPs/RPCs to an open output dataset."""
    tags = dict(dataset_tags)
    tags.update({k: _tag_value(v) for k, v in provenance.items()})
    dst.update_tags(**tags)
    for i, m in enumerate(bands, start=1):
        if m.description:
            dst.set_band_description(i, m.description)
        if m.tags:
            dst.update_tags(i, **m.tags)
        if m.units:
            dst.set_band_unit(i, m.units)
        if m.colormap:
            dst.write_colormap(i, m.colormap)
    dst.scales = tuple(m.scale for m in bands)
    dst.offsets = tuple(m.offset for m in bands)
    dst.colorinterp = tuple(m.colorinterp for m in bands)
    if georef.kind == "gcps":
        dst.gcps = (list(georef.gcps), georef.crs)
    elif georef.kind == "rpcs":
        dst.rpcs = georef.rpcs


def _tag_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))
