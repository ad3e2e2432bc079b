"""Areas of interest: read a polygon, reproject it, turn its extent into a window.

GeoJSON (a geometry, Feature or FeatureCollection; lon/lat WGS 84 per RFC 7946,
or the legacy ``crs`` member) is read with the standard library and shapely.
Other vector formats (Shapefile, GeoPackage, ...) are read with pyogrio when it
is installed, else with GDAL's ``ogr2ogr`` converting to GeoJSON. The union of
the polygons is densified, reprojected to the raster CRS (pyproj), mapped to
pixel coordinates through the inverse geotransform (rotations included) and its
bounding box, rounded outwards and clipped to the raster, is the window that
is super-resolved.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rasterio.windows import Window

from geosr.errors import InputError, OptionError, one_line

WGS84 = "OGC:CRS84"


def _geojson_geometries(doc: Any) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        raise OptionError(f"AOI must be a GeoJSON object, got a JSON {type(doc).__name__}")
    t = doc.get("type")
    if t == "FeatureCollection":
        features = doc.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
            raise OptionError("AOI FeatureCollection must hold a list of Features")
        return [f["geometry"] for f in features if f.get("geometry")]
    if t == "Feature":
        return [doc["geometry"]] if doc.get("geometry") else []
    if t in ("Polygon", "MultiPolygon", "GeometryCollection"):
        return [doc]
    raise OptionError(f"AOI must be a polygon (GeoJSON type {t!r} is not)")


def _geojson_crs(doc: Any) -> str:
    crs = doc.get("crs") if isinstance(doc, dict) else None
    if isinstance(crs, dict) and isinstance(crs.get("properties"), dict):
        name = crs["properties"].get("name")
        if name:
            return str(name)
    return WGS84


def _read_with_ogr(path: Path) -> dict[str, Any]:
    try:
        import pyogrio  # type: ignore[import-not-found]
    except ImportError:
        pyogrio = None
    if pyogrio is not None:  # pragma: no cover - optional dependency
        import shapely

        meta, _, geoms, _ = pyogrio.raw.read(str(path))
        shapes = [shapely.from_wkb(g) for g in geoms if g is not None]
        return {"type": "FeatureCollection",
                "features": [{"type": "Feature", "geometry": shapely.geometry.mapping(s)}
                             for s in shapes],
                "_crs": meta.get("crs")}
    exe = shutil.which("ogr2ogr")
    if exe is None:
        raise OptionError(f"cannot read {path}: install pyogrio or GDAL's ogr2ogr, or use GeoJSON")
    res = subprocess.run(
        [exe, "-f", "GeoJSON", "-t_srs", "EPSG:4326", "-lco", "COORDINATE_PRECISION=15",
         "/vsistdout/", str(path)],
        capture_output=True, text=True, check=False,
    )
    if res.returncode != 0:
        # ogr2ogr lists every driver it tried ("  -> `HTTP'"); keep its first real message.
        lines = [ln.strip() for ln in res.stderr.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("->") and ln != "FAILURE:"]
        msg = lines[0] if lines else "unreadable"
        if msg.startswith("Unable to open datasource"):
            msg = "not a vector file GDAL can open (GeoJSON, Shapefile, GeoPackage, ...)"
        raise OptionError(f"cannot read AOI {path}: {msg}")
    return json.loads(res.stdout)


def read_aoi(path: str | Path) -> tuple[Any, str]:
    """Read the polygons of a vector file.

    Returns:
        ``(geometry, crs)``: the union of the polygons (shapely) and its CRS.

    Raises:
        OptionError: missing or unreadable file, no polygon in it.
    """
    import shapely
    from shapely.geometry import shape

    p = Path(path)
    if not p.is_file():
        raise OptionError(f"AOI file not found: {p}")
    if p.suffix.lower() in (".geojson", ".json"):
        try:
            doc = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OptionError(f"AOI {p} is not valid GeoJSON: {e}") from e
        crs = _geojson_crs(doc)
    else:
        doc = _read_with_ogr(p)
        crs = doc.pop("_crs", None) or WGS84
    try:
        geoms = [shape(g) for g in _geojson_geometries(doc)]
        polys = [g for g in geoms
                 if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
        if not polys:
            raise OptionError(f"AOI {p} contains no polygon")
        if not all(math.isfinite(v) for g in polys for v in g.bounds):
            raise OptionError(f"AOI {p} has coordinates that are not finite numbers")
        return shapely.union_all(polys), crs
    except OptionError:
        raise
    except Exception as e:  # noqa: BLE001 - shapely/GEOS raise many types on bad geometry
        raise OptionError(f"AOI {p} has an invalid geometry: {one_line(e)}") from e


def aoi_window(src: Any, path: str | Path) -> Window:
    """The window of ``src`` covering the extent of the AOI polygon(s) in ``path``.

    Raises:
        InputError: the raster has no geotransform or CRS to place the AOI.
        OptionError: unreadable AOI, or an AOI outside the raster.
    """
    import shapely
    from pyproj import CRS, Transformer

    if src.transform.is_identity:
        raise InputError("the raster has no geotransform, so an AOI cannot be placed on it")
    if src.crs is None:
        raise InputError("the raster has no CRS, so an AOI cannot be reprojected onto it")
    geom, crs = read_aoi(path)
    try:
        transformer = Transformer.from_crs(CRS.from_user_input(crs),
                                           CRS.from_user_input(src.crs.to_wkt()),
                                           always_xy=True)
    except Exception as e:  # pyproj raises several types
        raise OptionError(f"cannot reproject the AOI from {crs}: {e}") from e
    # Densify so that edges follow the curvature of the target projection.
    minx, miny, maxx, maxy = geom.bounds
    step = max(maxx - minx, maxy - miny) / 64 or 1.0
    try:
        dense = shapely.segmentize(geom, step)
        coords = shapely.get_coordinates(dense)
        xs, ys = transformer.transform(coords[:, 0], coords[:, 1])
    except Exception as e:  # noqa: BLE001 - GEOS/pyproj refuse absurd coordinates
        raise OptionError(f"cannot place the AOI on the raster: {one_line(e)}") from e
    inv = ~src.transform
    cols, rows = [], []
    for x, y in zip(xs, ys, strict=True):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        c, r = inv @ (x, y)
        cols.append(c)
        rows.append(r)
    if not cols:
        raise OptionError("the AOI cannot be projected onto the raster CRS")
    # Round outwards, forgiving reprojection round-off on edges that sit on pixel edges.
    eps = 1e-3
    c0 = max(0, math.floor(min(cols) + eps))
    r0 = max(0, math.floor(min(rows) + eps))
    c1 = min(src.width, math.ceil(max(cols) - eps))
    r1 = min(src.height, math.ceil(max(rows) - eps))
    if c1 <= c0 or r1 <= r0:
        raise OptionError("the AOI does not intersect the raster")
    return Window(c0, r0, c1 - c0, r1 - r0)
