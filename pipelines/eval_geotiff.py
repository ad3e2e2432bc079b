"""``python -m pipelines.eval_geotiff FILES... --scale 4 --model M``: SR scores on real rasters.

The benchmarks of ``lgun.evaluate`` make LR with bicubic ``imresize``. A sensor with coarser
pixels integrates the same ground over larger footprints, so here LR is the *area average* of
the HR raster on the exactly aligned coarse grid, and each model is scored on the raster's own
pixels, through the same library call users make (``geosr.upscale``). Per file:

1. HR: the raster, or its central ``--max-side`` window, cropped to a multiple of ``scale``
   and written to a plain GeoTIFF (no overviews: GDAL would otherwise serve the reduced read
   from an existing overview, made with whatever resampling its producer chose). An alpha
   band becomes the crop's mask and is neither resampled nor scored.
2. LR: that HR read with ``out_shape = HR / scale`` and ``Resampling.average`` (GDAL's block
   mean), with transform ``HR transform x Affine.scale(scale)``. An LR pixel is valid only if
   its whole ``scale x scale`` block is valid (nodata value, mask band or alpha); invalid LR
   pixels get the nodata value when the source has one, else an internal mask.
3. SR: ``geosr.upscale(LR, scale=scale, model=M)`` for every ``--model`` and the classical
   baselines (``--baselines``, default ``nearest,bicubic,lanczos``; nearest is the floor).
   The SR grid must equal the HR grid (same shape and transform; checked).
4. Scores on that grid, with ``scale`` border pixels removed (as the SR literature) and every
   pixel excluded that is invalid in HR or SR: PSNR and SSIM (``lgun.metrics``; its SSIM
   definition, restricted to fully valid 11x11 windows when a mask is present) per band, then
   averaged over bands. The data range is 255 for uint8; for any other dtype it is the valid
   min..max of that HR band in the window (reported as ``range_source = "data"``). For uint8
   rasters with red, green, blue bands (colour interpretation, or ``--rgb 1,2,3``) the Y
   (BT.601 luma, ``lgun.metrics.rgb_to_y``) PSNR/SSIM is reported too.

Usage::

    OMP_NUM_THREADS=1 python -m pipelines.eval_geotiff $GEOSR_DATA/geotiff/rio-cogeo/\\
image_2000px.tif --scale 4 --model lgun-aid-x4 --model lgun-x4 --max-side 1024 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Classical methods scored beside the models unless ``--baselines`` says otherwise.
DEFAULT_BASELINES = ("nearest", "bicubic", "lanczos")
#: SSIM window side of ``lgun.metrics`` (a masked window must be valid throughout).
SSIM_WINDOW = 11


@dataclass(frozen=True)
class Pair:
    """An HR crop on disk and its area-averaged LR.

    Attributes:
        hr_path: The HR crop (plain GeoTIFF).
        lr_path: The LR GeoTIFF given to ``geosr.upscale``.
        window: ``(col_off, row_off, width, height)`` of the crop in the source.
        rgb: 1-based red, green, blue bands for the Y score, or ``None``.
    """

    hr_path: Path
    lr_path: Path
    window: tuple[int, int, int, int]
    rgb: tuple[int, int, int] | None


def central_window(width: int, height: int, scale: int, max_side: int | None
                   ) -> tuple[int, int, int, int]:
    """The central crop, at most ``max_side`` per side, both sides multiples of ``scale``."""
    w = min(width, max_side or width)
    h = min(height, max_side or height)
    w, h = w - w % scale, h - h % scale
    if w < scale or h < scale:
        raise ValueError(f"raster of {width}x{height} is smaller than scale {scale}")
    return (width - w) // 2, (height - h) // 2, w, h


def _valid(ds: Any, window: Any = None) -> np.ndarray:
    """(H, W) bool: valid in every band (nodata, mask band or alpha, per GDAL's masks)."""
    return np.all(ds.read_masks(window=window) > 0, axis=0)


def _rgb_bands(dtype: str, colorinterp: Sequence[Any], rgb: Sequence[int] | None
               ) -> tuple[int, int, int] | None:
    from rasterio.enums import ColorInterp

    if dtype != "uint8":  # the Y of BT.601 is defined on 0..255
        return None
    if rgb is not None:
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    order = {ci: i + 1 for i, ci in reversed(list(enumerate(colorinterp)))}
    bands = tuple(order.get(c) for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue))
    return bands if None not in bands else None  # type: ignore[return-value]


def make_pair(src: str | Path, workdir: Path, scale: int, *, max_side: int | None = None,
              rgb: Sequence[int] | None = None) -> Pair:
    """Write the HR crop of ``src`` and its ``scale`` x coarser area average into ``workdir``.

    Raises:
        ValueError: a raster smaller than ``scale``.
    """
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.transform import Affine
    from rasterio.windows import Window

    stem = Path(src).stem
    hr_path, lr_path = workdir / f"{stem}_hr.tif", workdir / f"{stem}_lr_x{scale}.tif"
    with rasterio.open(src) as ds:
        window = central_window(ds.width, ds.height, scale, max_side)
        win = Window(*window)
        bands = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha]
        data = ds.read(bands, window=win)
        # An alpha band's mask is every band's mask; it leaves as the crop's mask band.
        valid = np.all(ds.read_masks(bands, window=win) > 0, axis=0)
        colorinterp = [ds.colorinterp[b - 1] for b in bands]
        profile = {"driver": "GTiff", "width": window[2], "height": window[3],
                   "count": len(bands), "dtype": ds.dtypes[0], "crs": ds.crs,
                   "transform": ds.window_transform(win), "nodata": ds.nodata}
    rgb_bands = _rgb_bands(profile["dtype"], colorinterp, rgb)
    with rasterio.open(hr_path, "w", **profile) as dst:
        dst.write(data)
        if profile["nodata"] is None and not valid.all():
            dst.write_mask(valid.astype(np.uint8) * 255)
        dst.colorinterp = colorinterp
    h, w = window[3] // scale, window[2] // scale
    with rasterio.open(hr_path) as hr:
        lr = hr.read(out_shape=(hr.count, h, w), resampling=Resampling.average)
    # (H, W) -> (H/s, s, W/s, s): an LR pixel is valid if its whole block is.
    lr_valid = valid.reshape(h, scale, w, scale).all(axis=(1, 3))
    if profile["nodata"] is not None:
        lr[:, ~lr_valid] = np.asarray(profile["nodata"]).astype(lr.dtype)
    lr_profile = {**profile, "width": w, "height": h,
                  "transform": profile["transform"] @ Affine.scale(scale)}
    with rasterio.open(lr_path, "w", **lr_profile) as dst:
        dst.write(lr)
        if profile["nodata"] is None and not lr_valid.all():
            dst.write_mask(lr_valid.astype(np.uint8) * 255)
        dst.colorinterp = colorinterp
    return Pair(hr_path, lr_path, window, rgb_bands)


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D float64 array with the 1-D window ``g``."""
    n = g.size
    rows = sum(g[k] * x[k : x.shape[0] - n + 1 + k] for k in range(n))
    return sum(g[k] * rows[:, k : x.shape[1] - n + 1 + k] for k in range(n))


def _ssim_window() -> np.ndarray:
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-(x * x) / (2 * 1.5**2))  # sigma 1.5, as lgun.metrics
    return g / g.sum()


def masked_ssim(a: np.ndarray, b: np.ndarray, valid: np.ndarray, data_range: float) -> float:
    """``lgun.metrics.ssim`` of one band, averaged over the 11x11 windows that are all valid.

    With every pixel valid this is ``lgun.metrics.ssim(a, b, crop_border=0, y_only=False)``.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    g = _ssim_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a * mu_a
    var_b = _filter_valid(b * b, g) - mu_b * mu_b
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    # A window counts if all its pixels are valid: its box sum of the mask is the full area.
    ones = np.ones(SSIM_WINDOW)
    inside = _filter_valid(valid.astype(np.float64), ones) > SSIM_WINDOW**2 - 0.5
    if not inside.any():
        return float("nan")
    return float(ssim_map[inside].mean())


def band_scores(a: np.ndarray, b: np.ndarray, valid: np.ndarray, data_range: float
                ) -> tuple[float, float]:
    """PSNR (dB) and SSIM of one band over its valid pixels (``lgun.metrics`` if all valid)."""
    from lgun.metrics import psnr, ssim

    if valid.all():
        return (psnr(a, b, crop_border=0, y_only=False, data_range=data_range),
                ssim(a, b, crop_border=0, y_only=False, data_range=data_range))
    diff = a[valid].astype(np.float64) - b[valid].astype(np.float64)
    mse = float(np.mean(diff * diff))
    p = float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)
    return float(p), masked_ssim(a, b, valid, data_range)


def score(hr: np.ndarray, sr: np.ndarray, valid: np.ndarray, scale: int, dtype: str,
          rgb: tuple[int, int, int] | None) -> dict[str, Any]:
    """Scores of SR against HR, both ``(C, H, W)`` on the same grid (see the docstring)."""
    from lgun.metrics import rgb_to_y

    c = scale  # border removed on each side
    hr, sr, valid = hr[:, c:-c, c:-c], sr[:, c:-c, c:-c], valid[c:-c, c:-c]
    if not valid.any():
        raise ValueError("no valid pixel left to score")
    if dtype == "uint8":
        ranges, source = [255.0] * hr.shape[0], "dtype"
    else:
        ranges = [float(band[valid].max()) - float(band[valid].min()) for band in hr]
        ranges, source = [r if r > 0 else 1.0 for r in ranges], "data"
    bands = [band_scores(h, s, valid, r) for h, s, r in zip(hr, sr, ranges, strict=True)]
    out: dict[str, Any] = {
        "psnr": float(np.mean([p for p, _ in bands])),
        "ssim": float(np.nanmean([s for _, s in bands])),
        "per_band": [{"psnr": p, "ssim": s, "data_range": r}
                  for (p, s), r in zip(bands, ranges, strict=True)],
        "range_source": source, "valid_pixels": int(valid.sum()),
    }
    if rgb is not None:
        idx = [i - 1 for i in rgb]
        # (3, H, W) -> (H, W, 3) for rgb_to_y
        y_hr, y_sr = (rgb_to_y(np.moveaxis(x[idx], 0, -1)) for x in (hr, sr))
        out["y_psnr"], out["y_ssim"] = band_scores(y_hr, y_sr, valid, 255.0)
    return out


def evaluate_file(src: str | Path, scale: int, models: Sequence[str], workdir: Path, *,
                  max_side: int | None = None, rgb: Sequence[int] | None = None,
                  device: str = "auto") -> dict[str, Any]:
    """Make the LR of ``src``, super-resolve it with every model, and score each result."""
    import rasterio

    import geosr

    pair = make_pair(src, workdir, scale, max_side=max_side, rgb=rgb)
    with rasterio.open(pair.hr_path) as hr_ds:
        hr, hr_valid, grid = hr_ds.read(), _valid(hr_ds), (hr_ds.shape, hr_ds.transform)
        dtype = hr_ds.dtypes[0]
    rows = []
    for model in models:
        sr_path = workdir / f"{pair.hr_path.stem}_sr_{Path(model).stem}.tif"
        t0 = time.perf_counter()
        result = geosr.upscale(pair.lr_path, sr_path, scale=scale, model=model,
                               device=device, overwrite=True)
        seconds = time.perf_counter() - t0
        with rasterio.open(sr_path) as sr_ds:
            if sr_ds.shape != grid[0] or not sr_ds.transform.almost_equals(grid[1]):
                raise RuntimeError(f"{model}: SR grid {sr_ds.shape} {sr_ds.transform} is not "
                                   f"the HR grid {grid[0]} {grid[1]}")
            sr, sr_valid = sr_ds.read(), _valid(sr_ds)
            sha256 = sr_ds.tags().get("GEOSR_WEIGHTS_SHA256", "none")
        scores = score(hr, sr, hr_valid & sr_valid, scale, dtype, pair.rgb)
        rows.append({"model": model, "model_name": result.model, "weights_sha256": sha256,
                     "seconds": round(seconds, 2), **scores})
    return {"file": str(src), "scale": scale, "window": list(pair.window), "dtype": dtype,
            "bands": int(hr.shape[0]), "rgb": list(pair.rgb) if pair.rgb else None,
            "crop_border": scale, "degradation": "area average (Resampling.average)",
            "models": rows}


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """One line per (file, model): band-mean PSNR/SSIM, Y PSNR/SSIM where RGB, seconds."""
    lines = [f"{'file':<40} {'window':>19} {'model':<14} {'PSNR':>6} {'SSIM':>6} "
             f"{'Y PSNR':>6} {'Y SSIM':>6} {'s':>6}"]
    for r in results:
        win = "{}+{}+{}x{}".format(*r["window"])
        for m in r["models"]:
            y = (f"{m['y_psnr']:6.2f} {m['y_ssim']:6.4f}" if "y_psnr" in m
                 else f"{'-':>6} {'-':>6}")
            lines.append(f"{Path(r['file']).name[-40:]:<40} {win:>19} {m['model'][:14]:<14} "
                         f"{m['psnr']:6.2f} {m['ssim']:6.4f} {y} {m['seconds']:6.1f}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.eval_geotiff",
        description="Score SR models on rasters made coarser by area averaging "
                    "(see the module docstring).")
    p.add_argument("files", nargs="+", type=Path, help="rasters to evaluate (HR ground truth)")
    p.add_argument("--scale", type=int, required=True, help="integer factor (2, 3, 4)")
    p.add_argument("--model", action="append", default=[],
                   help="a model geosr.upscale accepts (weights name or path); repeatable")
    p.add_argument("--baselines", default=",".join(DEFAULT_BASELINES),
                   help="comma-separated classical methods to score too ('' for none)")
    p.add_argument("--max-side", type=int, default=None,
                   help="evaluate the central window of at most this many HR pixels per side")
    p.add_argument("--rgb", default=None,
                   help="1-based red,green,blue bands for the Y score (default: colour interp.)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the HR/LR/SR GeoTIFFs here (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad arguments or inputs)."""
    from geosr.errors import GeosrError

    args = _parser().parse_args(argv)
    baselines = [b for b in args.baselines.split(",") if b]
    models = list(dict.fromkeys([*baselines, *args.model]))
    rgb = [int(b) for b in args.rgb.split(",")] if args.rgb else None
    if not models or args.scale < 2 or (rgb is not None and len(rgb) != 3):
        print("python -m pipelines.eval_geotiff: error: need a model or baseline, "
              "--scale >= 2 and --rgb R,G,B", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="eval_geotiff_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for f in args.files:
            try:
                results.append(evaluate_file(f, args.scale, models, workdir,
                                             max_side=args.max_side, rgb=rgb,
                                             device=args.device))
            except (GeosrError, ValueError, OSError) as e:  # RasterioIOError is an OSError
                print(f"python -m pipelines.eval_geotiff: error: {f}: {e}", file=sys.stderr)
                return 2
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
