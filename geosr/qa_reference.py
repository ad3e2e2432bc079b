"""What ``geosr qa`` adds with an uncertainty map or a reference raster.

* ``uncertainty_share`` (``--uncertainty U.tif``): the share of valid output pixels whose
  8-view disagreement (the map of ``geosr upscale --ensemble --uncertainty``) exceeds a
  threshold, per band and over all bands. The default threshold is 2% of each band's
  radiometric range (``band_ranges``: the run's recorded mapping ``hi - lo``, else the
  sample type's range).
* ``reference_metrics`` (``--reference HR.tif``, a raster on the output grid): PSNR and
  SSIM of the output and of a bicubic upscale of the source against it, per band, and
  ``classify_detail``'s split of where the output departs from bicubic into correct,
  omitted and hallucinated detail, after opensr-test (Aybar et al., 2024, "A Comprehensive
  Benchmark for Optical Remote Sensing Image Super-Resolution", IEEE GRSL). The exact
  definitions and where they differ from opensr-test are in docs/geosr.md ("geosr qa").

Both stream over row strips (with a halo for the bicubic kernel and the SSIM window), so
memory does not depend on the raster size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from geosr.errors import InputError, OptionError
from geosr.io import open_source, read_window
from geosr.masks import MaskInfo, describe_masks, fill_invalid, read_valid, upsample_nearest

#: ``--uncertainty-threshold`` default: 2% of each band's radiometric range.
DEFAULT_UNCERTAINTY_THRESHOLD = "2%"
#: opensr-test's per-class parameters (its ``Config`` defaults ``im_score``, ``om_score``,
#: ``ha_score``).
GAMMA_IMPROVEMENT, GAMMA_OMISSION, GAMMA_HALLUCINATION = 0.05, 0.05, 0.05
#: A pixel has detail at stake when the output, bicubic or the reference differ by more
#: than this fraction of the band's range (opensr-test's gradient threshold, fixed here).
DETAIL_TOLERANCE = 0.01
#: SSIM as Wang et al. (2004): 11 x 11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
#: Provenance tags an uncertainty map must share with the output it belongs to.
_SHARED_TAGS = ("GEOSR_SOURCE", "GEOSR_SOURCE_WINDOW", "GEOSR_MODEL", "GEOSR_WEIGHTS_SHA256",
                "GEOSR_SCALE", "GEOSR_TILE_SIZE", "GEOSR_OVERLAP")
#: Input rows of halo around each strip: bicubic needs 2, the SSIM window 5 output rows.
_HALO = 8


def _finite(values: list[float]) -> list[float | None]:
    """JSON has no NaN or infinity: ``None`` instead (e.g. PSNR of identical bands)."""
    return [v if math.isfinite(v) else None for v in values]


def _pct(part: np.ndarray, whole: np.ndarray) -> list[float]:
    with np.errstate(invalid="ignore", divide="ignore"):
        return [float(v) for v in 100.0 * part / whole]


def band_ranges(text: str | None, dtype: str, n: int) -> list[float]:
    """Width of each band's radiometric range (``GEOSR_RADIOMETRY``, the run's recorded
    mapping), else the range of the sample type (1 for floats)."""
    import json

    try:
        pairs = json.loads(text) if text else None
        widths = [float(hi) - float(lo) for lo, hi in pairs] if pairs else []
    except (ValueError, TypeError):
        widths = []
    if len(widths) != n or not all(math.isfinite(v) and v > 0 for v in widths):
        dt = np.dtype(dtype)
        full = float(np.iinfo(dt).max) - float(np.iinfo(dt).min) if dt.kind in "iu" else 1.0
        widths = [full] * n
    return widths


def parse_threshold(text: str | float) -> tuple[float, bool]:
    """``"2%"`` -> ``(2.0, True)`` (percent of the band's range); ``"5"`` -> ``(5.0, False)``
    (output stored units).

    Raises:
        OptionError: not a non-negative number, with or without ``%``.
    """
    s = str(text).strip()
    relative = s.endswith("%")
    try:
        value = float(s[:-1] if relative else s)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise OptionError(f"--uncertainty-threshold must be a number >= 0 in output units "
                          f"or a percentage of the band's range such as 2%, got {text!r}")
    return value, relative


@dataclass
class UncertaintyShare:
    """Result of ``uncertainty_share``.

    Attributes:
        path: The uncertainty map.
        threshold: ``--uncertainty-threshold`` as given (``2%`` or output units).
        threshold_units: The threshold of each band, in output stored units.
        mean: Mean disagreement of each band over its valid pixels.
        percent: Valid pixels of each band above the threshold, percent.
        overall_percent: The same over all bands' valid pixels.
    """

    path: str
    threshold: str
    threshold_units: list[float]
    mean: list[float]
    percent: list[float]
    overall_percent: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["percent"] = _finite(self.mean), _finite(self.percent)
        d["overall_percent"] = _finite([self.overall_percent])[0]
        return d

    def lines(self) -> list[str]:
        per_band = ", ".join(f"b{i + 1}: {p:.3g}%" for i, p in enumerate(self.percent))
        units = ", ".join(f"{t:.4g}" for t in self.threshold_units)
        return [f"uncertainty:     {self.overall_percent:.3g}% of valid pixels disagree by "
                f"more than {self.threshold} ({units} output units) ({per_band}); "
                f"mean {', '.join(f'{m:.4g}' for m in self.mean)}"]


def _check_grid(what: str, ds: Any, d_ds: Any, dst: str, n: int) -> None:
    """One error line unless ``ds`` lies on the output grid with at least ``n`` bands."""
    if ((ds.width, ds.height) != (d_ds.width, d_ds.height)
            or not ds.transform.almost_equals(d_ds.transform)
            or (ds.crs is None) != (d_ds.crs is None) or (ds.crs and ds.crs != d_ds.crs)):
        raise InputError(
            f"{what} {ds.name} ({ds.width} x {ds.height}, {ds.crs}, origin "
            f"{ds.transform.c:.6g},{ds.transform.f:.6g}, pixel {ds.transform.a:.6g}) is not on "
            f"the output grid of {dst} ({d_ds.width} x {d_ds.height}, {d_ds.crs}, origin "
            f"{d_ds.transform.c:.6g},{d_ds.transform.f:.6g}, pixel {d_ds.transform.a:.6g})")
    if ds.count < n:
        raise InputError(f"{what} {ds.name} has {ds.count} band(s); {dst} has {n}")


def uncertainty_share(path: str | Path, d_ds: Any, *, n: int, ranges: list[float],
                      threshold: str | float = DEFAULT_UNCERTAINTY_THRESHOLD,
                      d_mask: MaskInfo, strip_rows: int = 256) -> UncertaintyShare:
    """Share of valid output pixels whose ensemble disagreement exceeds ``threshold``.

    Args:
        path: The uncertainty map of the output (``geosr upscale --uncertainty``).
        d_ds: The open output.
        n: Output bands checked (map band ``i`` belongs to output band ``i``).
        ranges: Radiometric range width of each band (the base of a ``%`` threshold).
        threshold: ``"X%"`` of each band's range, or a value in output stored units.
        d_mask: The output's masks (``describe_masks``).
        strip_rows: Output rows per streaming strip.

    Raises:
        InputError: not an uncertainty map of this output (grid, bands, tags).
        OptionError: a bad threshold.
    """
    value, relative = parse_threshold(threshold)
    thr = np.array([value * r / 100 if relative else value for r in ranges])
    over, total, spread_sum = np.zeros(n), np.zeros(n), np.zeros(n)
    with open_source(path) as u_ds:
        _check_grid("uncertainty map", u_ds, d_ds, d_ds.name, n)
        tags, d_tags = u_ds.tags(), d_ds.tags()
        if "GEOSR_BAND_MEANING" not in tags:
            raise InputError(f"{path} is not a geosr uncertainty map (no GEOSR_BAND_MEANING "
                             "tag; write one with geosr upscale --ensemble --uncertainty)")
        for k in _SHARED_TAGS:
            if k in tags and k in d_tags and tags[k] != d_tags[k]:
                raise InputError(f"{path} is not the uncertainty map of {d_ds.name}: its {k} "
                                 f"{tags[k]!r} != {d_tags[k]!r}")
        idx = tuple(range(1, n + 1))
        for r in range(0, d_ds.height, strip_rows):
            win = Window(0, r, d_ds.width, min(strip_rows, d_ds.height - r))
            u = read_window(u_ds, idx, win).astype(np.float64)
            valid = read_valid(d_ds, idx, win, read_window(d_ds, idx, win), d_mask)
            valid &= np.isfinite(u)
            over += (valid & (u > thr[:, None, None])).reshape(n, -1).sum(axis=1)
            total += valid.reshape(n, -1).sum(axis=1)
            spread_sum += np.where(valid, u, 0.0).reshape(n, -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = [float(v) for v in spread_sum / total]
    return UncertaintyShare(
        path=str(path), threshold=f"{value:g}%" if relative else f"{value:g}",
        threshold_units=[float(t) for t in thr], mean=mean, percent=_pct(over, total),
        overall_percent=_pct(over.sum(keepdims=True), total.sum(keepdims=True))[0])


#: ``classify_detail`` labels.
NO_DETAIL, CORRECT, OMITTED, HALLUCINATED = -1, 0, 1, 2


def classify_detail(sr: np.ndarray, bicubic: np.ndarray, ref: np.ndarray, valid: np.ndarray,
                    tolerance: np.ndarray | float) -> np.ndarray:
    """opensr-test's per-pixel correctness classes, per band (L1 distances).

    ``d_ref = |bicubic - ref|``, ``d_im = |sr - ref|``, ``d_om = |sr - bicubic|``; pixels
    where all three are ``<= tolerance`` (or invalid) have no detail at stake. Otherwise,
    with ``a = d_im / d_ref`` and ``b = d_om / d_ref`` and ``H = a + b - 1``:
    improvement ``a + b (1 - exp(-g_im H))``, omission ``b + a (1 - exp(-g_om H))``,
    hallucination ``exp(-g_ha a b)``; the smallest of the three names the class.

    Args:
        sr, bicubic, ref: (C, H, W) output, bicubic upscale of the source, reference.
        valid: (C, H, W) pixels valid in all three.
        tolerance: Per band (C, 1, 1) or scalar, in the arrays' units.

    Returns:
        (C, H, W) int8: ``CORRECT``, ``OMITTED``, ``HALLUCINATED`` or ``NO_DETAIL``.
    """
    s, b_, h = (np.asarray(a, dtype=np.float64) for a in (sr, bicubic, ref))
    d_ref, d_im, d_om = np.abs(b_ - h), np.abs(s - h), np.abs(s - b_)
    at_stake = valid & ((d_ref > tolerance) | (d_im > tolerance) | (d_om > tolerance))
    # Where bicubic already equals the reference any departure is invented: a, b -> inf.
    floor = np.maximum(d_ref, 1e-12 * (1.0 + np.abs(h)))
    a, b = d_im / floor, d_om / floor
    with np.errstate(over="ignore", invalid="ignore"):
        hh = a + b - 1
        im = a + b * (1 - np.exp(-GAMMA_IMPROVEMENT * hh))
        om = b + a * (1 - np.exp(-GAMMA_OMISSION * hh))
        ha = np.exp(-GAMMA_HALLUCINATION * a * b)
    scores = np.nan_to_num(np.stack([im, om, ha]), nan=np.inf)
    return np.where(at_stake, np.argmin(scores, axis=0), NO_DETAIL).astype(np.int8)


@dataclass
class ReferenceMetrics:
    """Result of ``reference_metrics`` (per band unless said; percentages).

    Attributes:
        path: The reference raster.
        data_range: The range ``R`` of PSNR and SSIM (and of the split's tolerance).
        psnr, ssim: Of the output against the reference (dB; 1 = identical).
        psnr_bicubic, ssim_bicubic: Of the bicubic upscale of the source.
        detail_percent: Valid pixels with detail at stake (``classify_detail``).
        correct_percent, omitted_percent, hallucinated_percent: Shares of those pixels.
        overall: The split over all bands' pixels (the same four keys).
    """

    path: str
    data_range: list[float]
    psnr: list[float]
    psnr_bicubic: list[float]
    ssim: list[float]
    ssim_bicubic: list[float]
    detail_percent: list[float]
    correct_percent: list[float]
    omitted_percent: list[float]
    hallucinated_percent: list[float]
    overall: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        d = {k: _finite(v) if isinstance(v, list) and k != "path" else v
             for k, v in asdict(self).items()}
        d["overall"] = dict(zip(self.overall, _finite(list(self.overall.values())),
                                strict=True))
        return d

    def lines(self) -> list[str]:
        def row(sr: list[float], bic: list[float], fmt: str) -> str:
            return ", ".join(f"b{i + 1}: {a:{fmt}} (bicubic {b:{fmt}})"
                             for i, (a, b) in enumerate(zip(sr, bic, strict=True)))

        o = self.overall
        return [
            f"reference:       {self.path}",
            f"PSNR vs ref:     {row(self.psnr, self.psnr_bicubic, '.2f')} dB",
            f"SSIM vs ref:     {row(self.ssim, self.ssim_bicubic, '.4f')}",
            f"detail vs bicubic: {o['detail_percent']:.3g}% of valid pixels at stake: "
            f"correct {o['correct_percent']:.3g}%, omitted {o['omitted_percent']:.3g}%, "
            f"hallucinated {o['hallucinated_percent']:.3g}%",
        ]


def _bicubic(lr: np.ndarray, valid: np.ndarray, scale: int, dtype: str) -> np.ndarray:
    """The project's bicubic (``ClassicalUpscaler``) of stored values, as ``-m bicubic``
    writes them: invalid pixels filled first, then rounded and clipped for integers."""
    from geosr.models import ClassicalUpscaler

    x = fill_invalid(lr.astype(np.float32), valid)
    out = ClassicalUpscaler(scale)(x[None])[0].astype(np.float64)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        out = np.clip(np.round(out), np.iinfo(dt).min, np.iinfo(dt).max)
    return out


def _ssim_sums(x: np.ndarray, y: np.ndarray, valid: np.ndarray, rows: slice,
               data_range: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per band: sum and count of the SSIM map over the pixels of output ``rows`` (of the
    strip) whose whole window is valid."""
    from scipy.ndimage import correlate1d

    k = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-(k * k) / (2 * SSIM_SIGMA**2))
    g /= g.sum()

    def filt(a: np.ndarray, w: np.ndarray) -> np.ndarray:  # 'valid' separable filter
        m = SSIM_WINDOW // 2
        out = correlate1d(correlate1d(a, w, axis=-1, mode="constant"), w, axis=-2,
                          mode="constant")
        return out[..., m : a.shape[-2] - m, m : a.shape[-1] - m]

    x, y = np.where(valid, x, 0.0), np.where(valid, y, 0.0)
    full = filt(valid.astype(np.float64), np.ones(SSIM_WINDOW)) > SSIM_WINDOW**2 - 0.5
    mx, my = filt(x, g), filt(y, g)
    vx, vy, cov = filt(x * x, g) - mx * mx, filt(y * y, g) - my * my, filt(x * y, g) - mx * my
    r = np.asarray(data_range)[:, None, None]
    c1, c2 = (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2
    smap = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    m = SSIM_WINDOW // 2  # map row i is strip row i + m
    sel = slice(max(rows.start - m, 0), max(rows.stop - m, 0))
    keep = full[:, sel]
    return (np.where(keep, smap[:, sel], 0.0).reshape(len(r), -1).sum(axis=1),
            keep.reshape(len(r), -1).sum(axis=1))


def reference_metrics(path: str | Path, s_ds: Any, d_ds: Any, *, window: Window,
                      bands: list[int], scale: int, ranges: list[float], s_mask: MaskInfo,
                      d_mask: MaskInfo, strip_rows: int = 64) -> ReferenceMetrics:
    """PSNR, SSIM and the detail split of the output and of bicubic against a reference.

    Args:
        path: The reference raster, on the output grid; its bands 1..n are compared with
            the output's bands 1..n.
        s_ds, d_ds: The open source and output.
        window: The source window the output covers (``GEOSR_SOURCE_WINDOW``).
        bands: Source bands of the output bands.
        scale: Upscaling factor.
        ranges: ``R`` of each band (``band_ranges``).
        s_mask, d_mask: The masks of source and output (``describe_masks``).
        strip_rows: Source rows per streaming strip.

    Raises:
        InputError: a reference that is not on the output grid or has too few bands.
    """
    n, w, h = len(bands), int(window.width), int(window.height)
    idx = tuple(range(1, n + 1))
    r_ = np.asarray(ranges, dtype=np.float64)[:, None, None]
    sse = np.zeros((2, n))  # output, bicubic
    ssim_sum, ssim_n = np.zeros((2, n)), np.zeros((2, n))
    classes = np.zeros((3, n))  # correct, omitted, hallucinated
    count = np.zeros(n)
    with open_source(path) as r_ds:
        _check_grid("reference", r_ds, d_ds, d_ds.name, n)
        ref_mask = describe_masks(r_ds, idx)
        for r in range(0, h, strip_rows):
            e0, e1 = max(0, r - _HALO), min(h, r + strip_rows + _HALO)
            core = slice((r - e0) * scale, (min(h, r + strip_rows) - e0) * scale)
            lr_win = Window(window.col_off, window.row_off + e0, w, e1 - e0)
            lr = read_window(s_ds, tuple(bands), lr_win)
            lr_valid = read_valid(s_ds, tuple(bands), lr_win, lr, s_mask)
            bic = _bicubic(lr, lr_valid, scale, s_ds.dtypes[bands[0] - 1])
            hr_win = Window(0, e0 * scale, w * scale, (e1 - e0) * scale)
            out, ref = read_window(d_ds, idx, hr_win), read_window(r_ds, idx, hr_win)
            valid = (upsample_nearest(lr_valid, scale)
                     & read_valid(d_ds, idx, hr_win, out, d_mask)
                     & read_valid(r_ds, idx, hr_win, ref, ref_mask))
            out, ref = out.astype(np.float64), ref.astype(np.float64)
            valid &= np.isfinite(out) & np.isfinite(ref)
            for k, est in enumerate((out, bic)):
                total, pixels = _ssim_sums(est, ref, valid, core, ranges)
                ssim_sum[k] += total
                ssim_n[k] += pixels
                err = np.where(valid, est - ref, 0.0)[:, core]
                sse[k] += (err * err).reshape(n, -1).sum(axis=1)
            v = valid[:, core]
            count += v.reshape(n, -1).sum(axis=1)
            cls = classify_detail(out[:, core], bic[:, core], ref[:, core], v,
                                  DETAIL_TOLERANCE * r_)
            for c in (CORRECT, OMITTED, HALLUCINATED):
                classes[c] += (cls == c).reshape(n, -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        psnr = 10 * np.log10(np.asarray(ranges) ** 2 / (sse / count))
        ssim = ssim_sum / ssim_n
    stake = classes.sum(axis=0)
    split = {"detail_percent": (stake, count), "correct_percent": (classes[0], stake),
             "omitted_percent": (classes[1], stake),
             "hallucinated_percent": (classes[2], stake)}
    return ReferenceMetrics(
        path=str(path), data_range=[float(v) for v in ranges],
        psnr=[float(v) for v in psnr[0]], psnr_bicubic=[float(v) for v in psnr[1]],
        ssim=[float(v) for v in ssim[0]], ssim_bicubic=[float(v) for v in ssim[1]],
        **{k: _pct(a, b) for k, (a, b) in split.items()},
        overall={k: _pct(a.sum(keepdims=True), b.sum(keepdims=True))[0]
                 for k, (a, b) in split.items()})
