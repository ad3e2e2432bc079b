"""``python -m pipelines.ensemble_evidence``: does the self-ensemble's spread predict its error?

For each image of an evaluation set, with the protocol of ``lgun.evaluate`` (uint8 HR,
modcropped; LR = MATLAB bicubic ``imresize``; ``scale`` border pixels cropped; Y channel):

* the 8 dihedral views of LR go through the model (``lgun.ensemble``); their mean, clipped,
  x255 and rounded to uint8, is the ensemble SR (exactly what ``lgun.evaluate
  --self-ensemble`` scores); view 0 alone is the single-model SR;
* per pixel, the *disagreement* is the population std of the 8 predictions' Y (unclipped, on
  the 0..255 scale) and the *error* is |Y(ensemble SR) - Y(HR)|.

Over all pixels of all images it reports the Pearson and Spearman correlation of
disagreement and error (and the mean of per-image Pearson, since a pooled correlation can come
from differences between images alone), and the MAE/PSNR of the ``--top`` fraction (default
10%) of pixels with the largest disagreement against the rest, beside the same fraction
chosen by the error itself (the best any per-pixel ranking could do).

``--limit N`` keeps N images evenly spaced over the sorted set (indices ``i * n // N``), so a
subset is deterministic and spans every class folder of aid150/rsscn7.

Usage::

    OMP_NUM_THREADS=1 python -m pipelines.ensemble_evidence --model lgun-x4 --dataset Set5 \\
        --scale 4
    OMP_NUM_THREADS=1 python -m pipelines.ensemble_evidence --model lgun-aid-x4 \\
        --dataset aid150 --scale 4 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Per-pixel arrays of one image: disagreement and error (cropped, flattened, float32), and
#: the image's PSNR (Y) for the single model and the ensemble.
ImageEvidence = dict[str, Any]


def select(items: list[Any], limit: int | None) -> list[Any]:
    """``limit`` items evenly spaced over ``items`` (all of them when ``limit`` is None)."""
    n = len(items)
    if limit is None or limit >= n:
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return [items[i * n // limit] for i in range(limit)]


def _luma(grey: bool) -> tuple[np.ndarray, float]:
    """Weights and offset mapping RGB on 0..255 to the channel the Y protocol scores."""
    from lgun.metrics import rgb_to_grey, rgb_to_y

    f = rgb_to_grey if grey else rgb_to_y
    eye = np.eye(3, dtype=np.float64).reshape(3, 1, 3) * 255.0  # three (1, 3) pure primaries
    offset = float(f(np.zeros((1, 1, 3)))[0, 0])
    weights = np.array([float(f(eye[i : i + 1])[0, 0]) - offset for i in range(3)]) / 255.0
    return weights, offset


def image_evidence(
    model: Callable[[Any], Any], hr: np.ndarray, scale: int, *, max_batch: int = 8
) -> ImageEvidence:
    """Disagreement, error and PSNRs of one HR image (see the module docstring).

    Args:
        model: A torch callable (1, 3, h, w) in [0, 1] -> (1, 3, s*h, s*w).
        hr: uint8 HR, (H, W) grey or (H, W, 3), already modcropped to ``scale``.
        scale: SR factor; also the cropped border.
        max_batch: Rows per model call (``lgun.ensemble.iter_view_predictions``).
    """
    import torch

    from lgun.ensemble import RunningMoments, iter_view_predictions
    from lgun.imresize import imresize
    from lgun.metrics import psnr, rgb_to_grey, rgb_to_y

    grey = hr.ndim == 2
    lr = imresize(hr, 1 / scale)
    rgb = np.repeat(lr[..., None], 3, axis=2) if grey else lr
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
    weights, offset = _luma(grey)
    w = torch.tensor(weights, dtype=torch.float32).view(1, 3, 1, 1) * 255
    rgb_moments, y_moments = RunningMoments(1), RunningMoments(1)
    single = None
    for index, rows, p in iter_view_predictions(model, x, max_batch=max_batch):
        rgb_moments.update(rows, p)
        y_moments.update(rows, (p.float() * w).sum(1, keepdim=True))  # (1, 1, sH, sW)
        if index == 0:
            single = p
    assert rgb_moments.mean is not None and single is not None

    def to_uint8(t: torch.Tensor) -> np.ndarray:  # as lgun.evaluate: clip, x255, round
        return t[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    # The protocol's Y: a grey HR is scored on its own values against the SR's grey level.
    luma = rgb_to_grey if grey else rgb_to_y
    hr_y = rgb_to_y(hr)
    c = slice(scale, -scale)
    sr = to_uint8(rgb_moments.mean)
    return {
        "disagreement": y_moments.std()[0, 0][c, c].numpy().ravel(),
        "error": np.abs(luma(sr) - hr_y)[c, c].astype(np.float32).ravel(),
        "psnr_single": psnr(hr_y, luma(to_uint8(single)), crop_border=scale),
        "psnr_ensemble": psnr(hr_y, luma(sr), crop_border=scale),
    }


def _psnr_of(err: np.ndarray) -> float:
    mse = float(np.mean(np.square(err, dtype=np.float64)))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def summarize(evidence: Sequence[ImageEvidence], top: float = 0.1) -> dict[str, Any]:
    """Correlations and top-fraction statistics over all pixels of ``evidence``.

    Returns:
        ``{"pixels", "pearson", "spearman", "pearson_per_image_mean", "top", "groups":
        {"uncertain", "rest", "all", "worst"}}``; each group has ``pixels``, ``mae``, ``psnr``,
        ``se_share`` (its share of the total squared error) and ``mean_disagreement``.
        ``uncertain``: the ``top`` fraction with the largest disagreement; ``worst``: the same
        count with the largest error (the oracle ranking).
    """
    from scipy.stats import rankdata

    if not 0 < top < 1:
        raise ValueError(f"top must be in (0, 1), got {top}")
    d = np.concatenate([e["disagreement"] for e in evidence]).astype(np.float64)
    err = np.concatenate([e["error"] for e in evidence]).astype(np.float64)
    k = max(1, round(top * d.size))
    # Stable sorts: ties (e.g. flat areas where all views agree) are broken the same way.
    by_d = np.argsort(-d, kind="stable")
    by_err = np.argsort(-err, kind="stable")
    total_se = float(np.sum(err**2)) or 1.0

    def group(idx: np.ndarray) -> dict[str, float]:
        e = err[idx]
        return {
            "pixels": int(idx.size),
            "mae": float(e.mean()),
            "psnr": _psnr_of(e),
            "se_share": float(np.sum(e**2)) / total_se,
            "mean_disagreement": float(d[idx].mean()),
        }

    per_image = [np.corrcoef(e["disagreement"], e["error"])[0, 1] for e in evidence]
    return {
        "pixels": int(d.size),
        "pearson": float(np.corrcoef(d, err)[0, 1]),
        "spearman": float(np.corrcoef(rankdata(d), rankdata(err))[0, 1]),
        "pearson_per_image_mean": float(np.nanmean(per_image)),
        "top": top,
        "groups": {
            "uncertain": group(by_d[:k]),
            "rest": group(by_d[k:]),
            "all": group(np.arange(d.size)),
            "worst": group(by_err[:k]),
        },
    }


def run(
    model: str | Path | Callable[[Any], Any],
    dataset: str,
    scale: int,
    *,
    data_root: str | Path | None = None,
    limit: int | None = None,
    top: float = 0.1,
) -> dict[str, Any]:
    """Evidence for ``model`` (weights name/path or torch callable) on ``dataset``."""
    import torch

    from lgun.evaluate import load_dataset, read_image
    from lgun.imresize import modcrop
    from lgun.pretrained import load_pretrained

    name = str(model) if isinstance(model, (str, Path)) else type(model).__name__
    net = load_pretrained(model).eval() if isinstance(model, (str, Path)) else model
    items = select(load_dataset(dataset, data_root), limit)
    start = time.perf_counter()
    with torch.no_grad():
        evidence = [image_evidence(net, modcrop(read_image(p), scale), scale) for _, p in items]
    result = summarize(evidence, top)
    return {
        "model": name,
        "dataset": dataset,
        "scale": scale,
        "protocol": "y",
        "crop_border": scale,
        "n": len(items),
        "limit": limit,
        "psnr_single": float(np.mean([e["psnr_single"] for e in evidence])),
        "psnr_ensemble": float(np.mean([e["psnr_ensemble"] for e in evidence])),
        **result,
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_table(r: dict[str, Any]) -> str:
    """The result as a plain-text table."""
    pct = round(100 * r["top"])
    lines = [
        f"model {r['model']}  dataset {r['dataset']}  x{r['scale']}  n {r['n']}  "
        f"pixels {r['pixels']} (Y, crop {r['crop_border']})  {r['seconds']} s",
        f"PSNR single {r['psnr_single']:.3f}  ensemble {r['psnr_ensemble']:.3f}  "
        f"(+{r['psnr_ensemble'] - r['psnr_single']:.3f} dB)",
        f"disagreement vs |error|: Pearson {r['pearson']:.3f}  Spearman {r['spearman']:.3f}  "
        f"per-image Pearson mean {r['pearson_per_image_mean']:.3f}",
        f"{'pixels':<28} {'MAE':>6} {'PSNR':>7} {'SE share':>9} {'mean std':>9}",
    ]
    labels = {
        "uncertain": f"top {pct}% by disagreement",
        "rest": f"other {100 - pct}%",
        "all": "all",
        "worst": f"top {pct}% by error (oracle)",
    }
    for key, label in labels.items():
        g = r["groups"][key]
        lines.append(f"{label:<28} {g['mae']:6.3f} {g['psnr']:7.2f} {g['se_share']:9.3f} "
                     f"{g['mean_disagreement']:9.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m pipelines.ensemble_evidence",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="shipped weights name or .safetensors path")
    p.add_argument("--dataset", required=True, help="Set5, Set14, B100, aid150, rsscn7 or a folder")
    p.add_argument("--scale", required=True, type=int)
    p.add_argument("--data-root", type=Path, default=None, help="shared data ($GEOSR_DATA)")
    p.add_argument("--limit", type=int, default=None, help="N images evenly spaced over the set")
    p.add_argument("--top", type=float, default=0.1, help="fraction flagged as uncertain")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    from lgun.evaluate import EvaluationError
    from lgun.pretrained import WeightsError

    try:
        result = run(args.model, args.dataset, args.scale, data_root=args.data_root,
                     limit=args.limit, top=args.top)
    except (EvaluationError, WeightsError, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
