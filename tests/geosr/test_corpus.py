"""Corpus sweep: every file of the shared GeoTIFF corpus upscales correctly or fails cleanly.

Each file goes through the CLI (``geosr upscale --scale 2 -m nearest``). Files the
inventory marks as corrupt, or with complex samples, must fail with exactly one
``geosr: error:`` line, a non-zero status and nothing written. Every other file
must succeed, and the output is checked against the input: size, dtype, CRS,
transform (or scaled GCPs/RPCs), nodata/mask/alpha, and every valid pixel (nearest
neighbour is exact). Rasters above 1.5 Mpx are cut with an ``--aoi`` polygon of a
384 x 384 window in the raster's own CRS (which also exercises the AOI path), to
keep the sweep within CI's budget on two cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window

from geosr.cli import run
from geosr.testing import data_root

DATA = data_root()
pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(DATA is None, reason="shared data folder not found: set GEOSR_DATA or "
                       "place it at ../shared/data"),
]
BIG_PIXELS = 1_500_000
AOI_SIZE = 384


def _inventory() -> list[dict[str, str]]:
    if DATA is None:
        return []
    with open(DATA / "geotiff" / "INVENTORY.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


ROWS = _inventory()


def _must_fail(row: dict[str, str]) -> str | None:
    if row["kind"] == "CORRUPT":
        return "cannot read"
    if row["dtype"].startswith("complex"):
        return "complex"
    return None


def _aoi_for(src: rasterio.DatasetReader, path: Path) -> Window:
    """A GeoJSON polygon (in the raster's CRS) of a central window; returns the window."""
    w = Window((src.width - AOI_SIZE) // 2, (src.height - AOI_SIZE) // 2, AOI_SIZE, AOI_SIZE)
    t = src.transform
    # Corners nudged 0.25 px inwards: the AOI's extent rounds out to exactly ``w``.
    c0, r0 = w.col_off + 0.25, w.row_off + 0.25
    c1, r1 = w.col_off + w.width - 0.25, w.row_off + w.height - 0.25
    ring = [list(t @ (c, r)) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))]
    path.write_text(json.dumps({
        "type": "Feature", "properties": {},
        "crs": {"type": "name", "properties": {"name": src.crs.to_wkt()}},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }))
    return w


@pytest.mark.parametrize("row", ROWS, ids=[r["file"].removeprefix("geotiff/") for r in ROWS])
def test_corpus_file(row: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert DATA is not None
    src_path = DATA / row["file"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = out_dir / "x2.tif"
    args = ["upscale", str(src_path), "-o", str(dst), "--scale", "2", "-m", "nearest",
            "--tile-size", "256", "--overlap", "8", "--no-progress"]
    window = None
    with rasterio.open(src_path) as src:
        if src.width * src.height > BIG_PIXELS and not src.transform.is_identity:
            window = _aoi_for(src, tmp_path / "aoi.geojson")
            args += ["--aoi", str(tmp_path / "aoi.geojson")]
    rc = run(args)
    err = capsys.readouterr().err
    expected_error = _must_fail(row)
    if expected_error:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc != 0 and len(lines) == 1, err
        assert lines[0].startswith("geosr: error:") and expected_error in lines[0], err
        assert list(out_dir.iterdir()) == [], "a failed run left files behind"
        return
    assert rc == 0, err
    assert [p.name for p in out_dir.iterdir()] == ["x2.tif"]
    _check_output(src_path, dst, window)


def _check_output(src_path: Path, dst: Path, window: Window | None) -> None:
    with rasterio.open(src_path) as s, rasterio.open(dst) as d:
        win = window or Window(0, 0, s.width, s.height)
        alpha = [i for i, ci in enumerate(s.colorinterp, 1) if ci == ColorInterp.alpha]
        bands = [b for b in range(1, s.count + 1) if b not in alpha]
        assert (d.width, d.height) == (win.width * 2, win.height * 2)
        assert d.count == len(bands) + len(alpha)
        assert d.dtypes[0] == s.dtypes[0]
        assert d.tags()["GEOSR_MODEL"] == "nearest"
        # Georeferencing.
        if not s.transform.is_identity:
            origin = Affine.translation(win.col_off, win.row_off)
            assert d.transform.almost_equals(s.transform @ origin @ Affine.scale(0.5))
            assert d.crs == s.crs
        elif s.gcps[0]:
            sg, dg = s.gcps[0], d.gcps[0]
            expected = [v for g in sg for v in (g.row * 2, g.col * 2, g.x, g.y)]
            assert [v for g in dg for v in (g.row, g.col, g.x, g.y)] == pytest.approx(expected)
        elif s.rpcs:
            assert d.rpcs.line_scale == pytest.approx(2 * s.rpcs.line_scale)
        # Nodata, masks, alpha.
        if s.nodata is not None and not alpha:
            assert d.nodata == s.nodata or (np.isnan(d.nodata) and np.isnan(s.nodata))
        if MaskFlags.per_dataset in s.mask_flag_enums[0] and not alpha:
            assert MaskFlags.per_dataset in d.mask_flag_enums[0]
        if alpha:
            assert d.colorinterp[-1] == ColorInterp.alpha
            np.testing.assert_array_equal(d.read(d.count)[::2, ::2], s.read(alpha[0], window=win))
        # Pixels: nearest neighbour is exact on valid pixels; invalid ones stay invalid.
        src = s.read(bands, window=win, masked=True)
        out = d.read(list(range(1, len(bands) + 1)), masked=True)[:, ::2, ::2]
        src_valid = ~np.ma.getmaskarray(src)
        if np.issubdtype(src.dtype, np.floating):
            src_valid &= np.isfinite(src.filled(0))
        out_valid = ~np.ma.getmaskarray(out)
        if np.issubdtype(out.dtype, np.floating):
            out_valid &= np.isfinite(out.filled(0))
        np.testing.assert_array_equal(out_valid, src_valid)
        a = src.data[src_valid].astype(np.float64)
        b = out.data[src_valid].astype(np.float64)
        if np.issubdtype(src.dtype, np.integer):
            np.testing.assert_array_equal(b, a)
        elif a.size:
            tol = 1e-6 * max(1.0, float(np.ptp(a)))
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=tol)
