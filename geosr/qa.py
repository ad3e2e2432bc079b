"""Quality checks of a super-resolved raster against its source (``geosr qa``).

* LR consistency: the output block-averaged back to the input grid (s x s means
  over valid pixels) against the input: mean absolute error per band, in stored
  units and in physical units (scale/offset tags), and the mean spectral angle
  between the input and the re-averaged pixel vectors (degrees; 2+ bands).
* Seam score: mean absolute difference between neighbouring output pixels across
  the tile borders of the run (unit and blend-zone edges, read from the GEOSR_*
  tags) divided by the same mean everywhere else. 1.0 means the borders are as
  smooth as the rest of the image; a visible seam pushes it above 1.
* Clipped pixels (from the run's tags) and nodata coverage of input and output,
  as percentages.
* Provenance: the output must have been made from this source: its GEOSR_SOURCE
  name, its CRS and its bounds (those of the recorded source window) are compared.
* Optional (``geosr.qa_reference``): ensemble disagreement above a threshold; PSNR, SSIM
  and the opensr-test detail split against a reference raster (never judged).

A verdict judges the numbers against ``THRESHOLDS``: ``pass``, ``warn`` or ``fail``
(a provenance mismatch always fails); ``geosr qa`` exits 0, 3 or 1 accordingly.
Everything streams over row strips, so memory does not depend on the raster size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from geosr import qa_reference as qr
from geosr.errors import InputError
from geosr.io import read_window
from geosr.masks import describe_masks, read_valid
from geosr.tiling import make_grid


class SeamAccumulator:
    """Streaming seam score over row strips of an image.

    Borders lie on input-pixel edges (multiples of ``scale``), and an upscaled
    image is not stationary at the sub-pixel scale (a nearest-neighbour image only
    changes there), so the reference is the other input-pixel edges, not every pair.

    Args:
        rows: Output rows ``p`` where a border lies between rows ``p - 1`` and ``p``.
        cols: Output columns, likewise.
        scale: Upscaling factor; reference pairs are those at multiples of it.
    """

    def __init__(self, rows: tuple[int, ...], cols: tuple[int, ...], scale: int = 1) -> None:
        self.rows = set(rows)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.scale = scale
        self.border = [0.0, 0]  # sum, count
        self.other = [0.0, 0]
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._next_row = 0

    def _acc(self, d: np.ndarray, v: np.ndarray, border: np.ndarray,
             edge: np.ndarray) -> None:
        b = border & v
        o = ~border & edge & v
        self.border[0] += float(d[b].sum())
        self.border[1] += int(b.sum())
        self.other[0] += float(d[o].sum())
        self.other[1] += int(o.sum())

    def add(self, strip: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add the next strip (C, h, W) of rows (float), with optional validity."""
        x = strip.astype(np.float64)
        v = np.isfinite(x) if valid is None else (valid & np.isfinite(x))
        c, h, w = x.shape
        # Horizontal neighbours: pair (j-1, j) is diff index j-1.
        dx = np.abs(x[:, :, 1:] - x[:, :, :-1])
        vx = v[:, :, 1:] & v[:, :, :-1]
        bx = np.zeros(w - 1, dtype=bool)
        cols = self.cols[(self.cols >= 1) & (self.cols < w)]
        bx[cols - 1] = True
        ex = (np.arange(1, w) % self.scale) == 0
        self._acc(dx, vx, np.broadcast_to(bx, dx.shape), np.broadcast_to(ex, dx.shape))
        # Vertical neighbours, including the pair across the previous strip.
        if self._last is not None:
            lx, lv = self._last
            x = np.concatenate([lx, x], axis=1)
            v = np.concatenate([lv, v], axis=1)
            first = self._next_row - 1
        else:
            first = 0
        dy = np.abs(x[:, 1:] - x[:, :-1])
        vy = v[:, 1:] & v[:, :-1]
        rows_idx = np.arange(first + 1, first + 1 + dy.shape[1])
        by = np.isin(rows_idx, list(self.rows))
        ey = (rows_idx % self.scale) == 0
        self._acc(dy, vy, np.broadcast_to(by[None, :, None], dy.shape),
                  np.broadcast_to(ey[None, :, None], dy.shape))
        self._last = (x[:, -1:], v[:, -1:])
        self._next_row += h

    @property
    def score(self) -> float:
        """Border gradient energy / elsewhere (NaN when undefined)."""
        if not self.border[1] or not self.other[1] or self.other[0] == 0:
            return math.nan
        return (self.border[0] / self.border[1]) / (self.other[0] / self.other[1])


def seam_score(image: np.ndarray, rows: tuple[int, ...], cols: tuple[int, ...],
               scale: int = 1) -> float:
    """Seam score of an in-memory (C, H, W) image for the given border positions."""
    acc = SeamAccumulator(rows, cols, scale)
    acc.add(image)
    return acc.score


def block_mean(x: np.ndarray, valid: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the valid pixels of each s x s block of (C, sh, sw) arrays.

    Returns:
        ``(means, any_valid)`` of shape (C, h, w).
    """
    c, hh, ww = x.shape
    h, w = hh // scale, ww // scale
    xv = np.where(valid, x, 0.0).astype(np.float64).reshape(c, h, scale, w, scale)
    n = valid.reshape(c, h, scale, w, scale).sum(axis=(2, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = xv.sum(axis=(2, 4)) / n
    return m, n > 0


#: (warn above, fail above) for each judged quantity: LR MAE as a percentage of the
#: band's radiometric range, seam score, clipped percentage beyond the source's own
#: saturation (a source at its type's limits, e.g. bright sand at 255, is clipped where the
#: network extrapolates above it: that is not a defect of the output), extra nodata.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "mae_percent": (2.0, 10.0),
    "seam_score": (2.0, 4.0),
    "clipped_excess_percent": (1.0, 10.0),
    "nodata_percent_increase": (1.0, 10.0),
    "uncertain_percent": (10.0, math.inf),  # informs: at most a warning
}
#: Exit status of ``geosr qa`` by verdict.
EXIT_CODES = {"pass": 0, "warn": 3, "fail": 1}


@dataclass
class QAReport:
    """Results of ``qa_report``.

    Attributes:
        src: Source path.
        dst: Checked output path.
        scale: Upscaling factor.
        bands: Source bands compared with output bands 1..n.
        mae: Mean absolute LR-consistency error per band, stored units.
        mae_physical: The same in physical units (scale/offset tags).
        spectral_angle_deg: Mean spectral angle (degrees), or ``None`` for one band.
        seam_score: Border / elsewhere gradient ratio (1.0 = no seam), or NaN.
        clipped: Clipped pixels per band recorded by the run, if known.
        nodata_fraction_src: Fraction of invalid pixels in the source window.
        nodata_fraction_dst: Fraction of invalid pixels in the output.
        model: Model recorded in the output's tags.
        mae_percent: LR MAE per band as a percentage of the band's radiometric range.
        clipped_percent: Clipped pixels as a percentage of the output's band pixels.
        saturated_percent: Valid source pixels at their integer type's minimum or maximum,
            as a percentage of the source window's band pixels.
        mismatches: Provenance checks that failed (source name, CRS, bounds).
        verdict: ``pass``, ``warn`` or ``fail``.
        reasons: Why the verdict is not ``pass``.
        uncertainty, reference: ``qa_reference`` results, when asked for.
    """

    src: str
    dst: str
    scale: int
    bands: list[int]
    mae: list[float]
    mae_physical: list[float]
    spectral_angle_deg: float | None
    seam_score: float
    clipped: list[int] | None
    nodata_fraction_src: float
    nodata_fraction_dst: float
    model: str | None
    mae_percent: list[float] | None = None
    clipped_percent: float | None = None
    saturated_percent: float = 0.0
    mismatches: list[str] | None = None
    verdict: str = "pass"
    reasons: list[str] | None = None
    uncertainty: qr.UncertaintyShare | None = None
    reference: qr.ReferenceMetrics | None = None

    def judge(self) -> QAReport:
        """Set ``verdict`` and ``reasons`` from ``THRESHOLDS`` and the provenance checks."""
        values = {
            "mae_percent": max((v for v in self.mae_percent or [] if math.isfinite(v)),
                               default=math.nan),
            "seam_score": self.seam_score,
            "clipped_excess_percent": (self.clipped_percent - self.saturated_percent
                                       if self.clipped_percent is not None else math.nan),
            "nodata_percent_increase": 100 * (self.nodata_fraction_dst
                                              - self.nodata_fraction_src),
            "uncertain_percent": (self.uncertainty.overall_percent
                                  if self.uncertainty is not None else math.nan),
        }
        reasons = [f"not made from this source: {m}" for m in self.mismatches or []]
        verdict = "fail" if reasons else "pass"
        for key, (warn, fail) in THRESHOLDS.items():
            v = values[key]
            if not math.isfinite(v) or v <= warn:
                continue
            level = "fail" if v > fail else "warn"
            reasons.append(f"{key} {v:.3g} > {fail if level == 'fail' else warn:g}")
            if level == "fail" or verdict == "pass":
                verdict = level if verdict != "fail" else "fail"
        self.verdict, self.reasons = verdict, reasons
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seam_score"] = None if math.isnan(self.seam_score) else self.seam_score
        for k in ("uncertainty", "reference"):
            d[k] = None if getattr(self, k) is None else getattr(self, k).to_dict()
        return d

    def format(self) -> str:
        mae = ", ".join(f"b{b}: {v:.4g}" for b, v in zip(self.bands, self.mae, strict=True))
        sa = ("n/a (1 band)" if self.spectral_angle_deg is None
              else f"{self.spectral_angle_deg:.4f} deg")
        clipped = "unknown" if self.clipped is None else f"{sum(self.clipped)} {self.clipped}"
        if self.clipped_percent is not None:
            clipped += (f" ({self.clipped_percent:.3f}%; source at its type's limits: "
                        f"{self.saturated_percent:.3f}%)")
        if self.mae_percent:
            mae += " (" + ", ".join(f"{v:.3g}%" for v in self.mae_percent) + " of range)"
        verdict = self.verdict.upper() + (f": {'; '.join(self.reasons)}" if self.reasons else "")
        return "\n".join([
            f"source:          {self.src}",
            f"output:          {self.dst} (x{self.scale}, model {self.model or 'unknown'})",
            f"LR MAE:          {mae}",
            f"spectral angle:  {sa}",
            (f"seam score:      {self.seam_score:.3f} (1.0 = borders as smooth as elsewhere)"
             if not math.isnan(self.seam_score) else "seam score:      n/a (a single tile)"),
            f"clipped pixels:  {clipped}",
            f"nodata:          source {100 * self.nodata_fraction_src:.2f}%, "
            f"output {100 * self.nodata_fraction_dst:.2f}%",
            *(self.uncertainty.lines() if self.uncertainty is not None else []),
            *(self.reference.lines() if self.reference is not None else []),
            f"verdict:         {verdict}",
        ])


def _int_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    return [int(t) for t in text.split(",") if t.strip()]


def qa_report(src: str | Path, dst: str | Path, *, strip_rows: int = 128,
              uncertainty: str | Path | None = None,
              uncertainty_threshold: str | float = qr.DEFAULT_UNCERTAINTY_THRESHOLD,
              reference: str | Path | None = None) -> QAReport:
    """Compare a geosr output with its source (see the module docstring).

    Args:
        src: The source raster.
        dst: The super-resolved raster.
        strip_rows: Input rows per streaming strip.
        uncertainty: DST's uncertainty map (``--uncertainty`` of ``geosr upscale``).
        uncertainty_threshold: ``"X%"`` of each band's range, or output units.
        reference: A reference raster on DST's grid (``qa_reference.reference_metrics``).

    Raises:
        InputError: unreadable files or an output that does not match the source.
        OptionError: a bad ``uncertainty_threshold``.
    """
    from geosr.io import open_source

    qr.parse_threshold(uncertainty_threshold)  # a bad option fails before any reading
    with open_source(src) as s_ds, open_source(dst) as d_ds:
        tags = d_ds.tags()
        window_vals = _int_list(tags.get("GEOSR_SOURCE_WINDOW"))
        has_window = window_vals and len(window_vals) == 4
        window = Window(*window_vals) if has_window else Window(0, 0, s_ds.width, s_ds.height)
        w, h = int(window.width), int(window.height)
        scale = int(tags["GEOSR_SCALE"]) if "GEOSR_SCALE" in tags else d_ds.width // max(w, 1)
        if scale < 2 or d_ds.width != w * scale or d_ds.height != h * scale:
            raise InputError(f"{dst} ({d_ds.width} x {d_ds.height}) is not {src} window "
                             f"{w} x {h} upscaled by an integer factor")
        bands = _int_list(tags.get("GEOSR_BANDS")) or list(
            range(1, min(s_ds.count, d_ds.count) + 1))
        n = len(bands)
        if d_ds.count < n:
            raise InputError(f"{dst} has {d_ds.count} bands, expected at least {n}")
        if max(bands) > s_ds.count or min(bands) < 1:
            raise InputError(f"{dst} was made from band(s) {','.join(map(str, bands))}, but "
                             f"{src} has {s_ds.count} band(s): not its source")
        mismatches = _provenance_mismatches(s_ds, d_ds, tags, window, src)
        tile = int(tags.get("GEOSR_TILE_SIZE", 0) or 0)
        overlap = int(tags.get("GEOSR_OVERLAP", 0) or 0)
        neural = tags.get("GEOSR_WEIGHTS_SHA256", "none") != "none"  # networks grow tiles
        rows, cols = (make_grid(h, w, tile, overlap, neural=neural, scale=scale)
                      .border_positions(scale) if tile else ((), ()))
        seams = SeamAccumulator(rows, cols, scale)
        s_mask = describe_masks(s_ds, tuple(bands))
        d_bands = tuple(range(1, n + 1))
        d_mask = describe_masks(d_ds, d_bands)
        abs_sum = np.zeros(n)
        abs_phys = np.zeros(n)
        count = np.zeros(n)
        angle_sum, angle_n = 0.0, 0
        inv_src = inv_dst = sat_src = 0
        dtype = np.dtype(s_ds.dtypes[bands[0] - 1])
        limits = (np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype.kind in "iu" else None
        scales = np.array([s_ds.scales[b - 1] for b in bands])[:, None]
        offsets = np.array([s_ds.offsets[b - 1] for b in bands])[:, None]
        for r in range(0, h, strip_rows):
            rh = min(strip_rows, h - r)
            lr_win = Window(window.col_off, window.row_off + r, w, rh)
            hr_win = Window(0, r * scale, w * scale, rh * scale)
            lr = read_window(s_ds, tuple(bands), lr_win).astype(np.float64)
            lr_valid = read_valid(s_ds, tuple(bands), lr_win, lr, s_mask)
            hr_raw = read_window(d_ds, d_bands, hr_win)
            hr_valid = read_valid(d_ds, d_bands, hr_win, hr_raw, d_mask)
            hr = hr_raw.astype(np.float64)
            seams.add(hr, hr_valid)
            down, down_valid = block_mean(hr, hr_valid, scale)
            both = lr_valid & down_valid
            diff = np.abs(down - lr)
            abs_sum += np.where(both, diff, 0.0).reshape(n, -1).sum(axis=1)
            abs_phys += np.where(both, diff * np.abs(scales[:, :, None]), 0.0).reshape(n, -1).sum(1)
            count += both.reshape(n, -1).sum(axis=1)
            inv_src += int((~lr_valid).sum())
            if limits is not None:
                sat_src += int((lr_valid & ((lr == limits[0]) | (lr == limits[1]))).sum())
            inv_dst += int((~hr_valid).sum())
            if n >= 2:
                allv = both.all(axis=0)
                a = (lr * scales[:, :, None] + offsets[:, :, None])[:, allv]
                b = (down * scales[:, :, None] + offsets[:, :, None])[:, allv]
                na = np.linalg.norm(a, axis=0)
                nb = np.linalg.norm(b, axis=0)
                ok = (na > 0) & (nb > 0)
                cos = np.clip((a[:, ok] * b[:, ok]).sum(0) / (na[ok] * nb[ok]), -1.0, 1.0)
                angle_sum += float(np.degrees(np.arccos(cos)).sum())
                angle_n += int(ok.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            mae = (abs_sum / count).tolist()
            mae_phys = (abs_phys / count).tolist()
        ranges = qr.band_ranges(tags.get("GEOSR_RADIOMETRY"), s_ds.dtypes[bands[0] - 1], n)
        clipped = _int_list(tags.get("GEOSR_CLIPPED"))
        unc = None if uncertainty is None else qr.uncertainty_share(
            uncertainty, d_ds, n=n, ranges=ranges, threshold=uncertainty_threshold,
            d_mask=d_mask)
        ref = None if reference is None else qr.reference_metrics(
            reference, s_ds, d_ds, window=window, bands=bands, scale=scale, ranges=ranges,
            s_mask=s_mask, d_mask=d_mask)
        return QAReport(
            src=str(src), dst=str(dst), scale=scale, bands=list(bands),
            mae=[float(v) for v in mae], mae_physical=[float(v) for v in mae_phys],
            spectral_angle_deg=(angle_sum / angle_n if angle_n else None) if n >= 2 else None,
            seam_score=seams.score,
            clipped=clipped,
            nodata_fraction_src=inv_src / max(1, n * w * h),
            nodata_fraction_dst=inv_dst / max(1, n * w * h * scale * scale),
            model=tags.get("GEOSR_MODEL"),
            mae_percent=[100 * float(m) / r for m, r in zip(mae, ranges, strict=True)],
            clipped_percent=(100 * sum(clipped) / max(1, n * w * h * scale * scale)
                             if clipped is not None else None),
            saturated_percent=100 * sat_src / max(1, n * w * h),
            mismatches=mismatches, uncertainty=unc, reference=ref,
        ).judge()


def _provenance_mismatches(s_ds: Any, d_ds: Any, tags: dict[str, str], window: Window,
                           src: str | Path) -> list[str]:
    """Which of the output's recorded source name, CRS and bounds disagree with ``src``."""
    out = []
    recorded = tags.get("GEOSR_SOURCE")
    if recorded is not None and recorded != Path(str(src)).name:
        out.append(f"it records source {recorded!r}")
    if (s_ds.crs is None) != (d_ds.crs is None) or (s_ds.crs and s_ds.crs != d_ds.crs):
        out.append(f"CRS {d_ds.crs} != {s_ds.crs}")
    if not s_ds.transform.is_identity and not d_ds.transform.is_identity:
        t = s_ds.transform
        c0, r0 = window.col_off, window.row_off
        c1, r1 = c0 + window.width, r0 + window.height
        xs, ys = zip(*(t @ (c, r) for c in (c0, c1) for r in (r0, r1)), strict=True)
        want = (min(xs), min(ys), max(xs), max(ys))
        got = tuple(d_ds.bounds)
        tol = 0.5 * max(abs(d_ds.transform.a), abs(d_ds.transform.e))
        if any(abs(a - b) > tol for a, b in zip(want, got, strict=True)):
            out.append(f"bounds {tuple(round(v, 6) for v in got)} != "
                       f"{tuple(round(v, 6) for v in want)}")
    return out
