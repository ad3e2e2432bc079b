"""``python -m pipelines.record_metrics``: score weights and record the scores in their JSON.

    python -m pipelines.record_metrics WEIGHTS.safetensors --dataset aid150 rsscn7 \\
        --degradation bicubic box psf [--bicubic-baseline] [--threads N]

Runs ``lgun.evaluate.evaluate_model`` (Y channel, the benchmark protocol) for every dataset and
degradation and writes each result into the ``metrics`` of the weights' JSON under
``lgun.pretrained.metric_key`` (``aid150`` for bicubic LR, ``aid150@box``, ...): the scores
``geosr info`` shows beside the model ("tested on"). The safetensors file and its digest are not
touched; the JSON is replaced atomically. ``--bicubic-baseline`` also prints bicubic
interpolation's score on each pair, for the gain. Prints one line per pair.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lgun.degrade import DEGRADATIONS


def record(weights: Path, results: list[dict[str, Any]]) -> Path:
    """Write ``results`` (``evaluate_model`` dicts) into the ``metrics`` of ``weights``' JSON."""
    from lgun.pretrained import metric_entry, metric_key

    doc_path = weights.with_suffix(".json")
    doc = json.loads(doc_path.read_text())
    metrics = dict(doc.get("metrics") or {})
    for r in results:
        metrics[metric_key(r["dataset"], r["degradation"])] = metric_entry(r)
    doc["metrics"] = metrics
    tmp = doc_path.with_name(doc_path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, doc_path)
    return doc_path


def main(argv: list[str] | None = None) -> int:
    """Command line; exit status 2 on a bad weights file or dataset."""
    p = argparse.ArgumentParser(prog="python -m pipelines.record_metrics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", type=Path, help="a .safetensors file with its .json beside it")
    p.add_argument("--dataset", nargs="+", required=True)
    p.add_argument("--degradation", nargs="+", default=["bicubic"], choices=DEGRADATIONS)
    p.add_argument("--bicubic-baseline", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args(argv)
    import torch

    from lgun.evaluate import EvaluationError, evaluate_model
    from lgun.pretrained import WeightsError, load_weights

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        model, meta = load_weights(a.weights)
        results = []
        for ds in a.dataset:
            for deg in a.degradation:
                r = evaluate_model(model, ds, meta.scale, degradation=deg)
                base = (evaluate_model("bicubic", ds, meta.scale, degradation=deg)["psnr"]
                        if a.bicubic_baseline else None)
                results.append(r)
                print(f"{ds:<8} {deg:<8} x{meta.scale} {r['psnr']:.3f} dB / {r['ssim']:.4f}"
                      + (f"  (bicubic {base:.3f}, gain {r['psnr'] - base:+.3f})"
                         if base is not None else ""), flush=True)
    except (EvaluationError, WeightsError, OSError) as e:
        print(f"python -m pipelines.record_metrics: error: {e}", file=sys.stderr)
        return 2
    print(f"recorded in {record(a.weights, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
