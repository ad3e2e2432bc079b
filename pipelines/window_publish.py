"""Publishing a GPU window's candidates, back on the CPU machine (``gpu_window publish DIR``).

Each candidate of ``DIR`` (its ``candidates.zip``) is scored again here, on the full sets and
the CPU, on its stage's gate, beside the weights it would replace and bicubic; it is written
over them only if the gate's mean beats theirs, every gate score beats bicubic's, none falls
more than ``MAX_GATE_LOSS`` below theirs, and, for aerial weights, it passes the GeoTIFF gate
of ``pipelines.geotiff_gate`` (real rasters, which the AID-150 gate cannot see).
docs/TRAINING.md gives the procedure.
"""

from __future__ import annotations

import math
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lgun.pretrained import parse_metric_key
from pipelines import geotiff_gate

#: The zip the window writes its candidate pairs into (``<name>.safetensors`` + ``.json``).
CANDIDATES = "candidates.zip"
# No gate score may fall more than this below the shipped weights' (a sensor model may trade a
# little of the bicubic-LR protocol for box/PSF LR, never much).
MAX_GATE_LOSS = 0.3


def unpack_candidates(folder: Path, dest: Path) -> list[Path]:
    """The candidates' ``.safetensors`` of a window's folder: the pairs of its ``candidates.zip``
    extracted into ``dest`` (plain file names only); loose pairs in ``folder`` only where it has
    no zip (pairs lying beside a window's zip are not that window's candidates)."""
    if not (folder / CANDIDATES).is_file():
        return sorted(folder.glob("*.safetensors"))
    with zipfile.ZipFile(folder / CANDIDATES) as zf:
        for name in zf.namelist():
            if not re.fullmatch(r"[\w.-]+\.(safetensors|json)", name):
                raise ValueError(f"{folder / CANDIDATES}: unexpected member {name!r}")
            (dest / name).write_bytes(zf.read(name))
    return sorted(dest.glob("*.safetensors"))


def _scores(model: Any, keys: Sequence[str], scale: int, data_root: Path | None
            ) -> dict[str, dict[str, Any]]:
    import torch

    from lgun.training.publish import validate

    return {k: validate(model, parse_metric_key(k)[0], scale, device=torch.device("cpu"),
                        data_root=data_root, degradation=parse_metric_key(k)[1]) for k in keys}


def gate_passes(new: dict[str, float], old: dict[str, float] | None,
                floor: dict[str, float]) -> bool:
    """The publishing rule on gate PSNRs: the mean beats the shipped weights' (``old``, None
    when there are none), every score beats bicubic's (``floor``), and none falls more than
    ``MAX_GATE_LOSS`` below the shipped one."""
    above = all(new[k] > floor[k] for k in new)
    if old is None:
        return above
    return (above and sum(new.values()) / len(new) > sum(old.values()) / len(old)
            and all(new[k] >= old[k] - MAX_GATE_LOSS for k in new))


def _geotiff_gate(cand: Path, against: Path | None, scale: int, data_root: Path | None) -> str:
    """Run ``pipelines.geotiff_gate`` (table printed); "" when it passes, else the reason."""
    try:
        rasters = geotiff_gate.raster_paths(data_root)
    except FileNotFoundError:  # only the corpus' absence; errors while scoring propagate
        return "GeoTIFF gate: rasters missing"
    passed, table = geotiff_gate.check(cand, against, scale, rasters)
    print(f"{cand.stem}:\n{table}")
    return "" if passed else "GeoTIFF gate failed"


def publish_candidates(folder: Path, *, weights_dir: Path | None = None,
                       data_root: Path | None = None) -> list[dict[str, Any]]:
    """Score each candidate of ``folder`` and the weights it would replace on its stage's gate
    (full sets, CPU, here); publish it (``save_weights``) only if the gate's mean beats theirs,
    every gate score beats bicubic's, none falls more than ``MAX_GATE_LOSS`` below theirs and,
    for aerial weights, it passes the GeoTIFF gate. Smoke candidates are never written into
    the shipped weights (only into a ``weights_dir``)."""
    from lgun.evaluate import evaluate_model
    from lgun.pretrained import WEIGHTS_DIR, load_pretrained, load_weights, save_weights
    from lgun.training.config import PublishConfig

    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_candidates_") as tmp:
        for cand in unpack_candidates(folder, Path(tmp)):
            new = load_weights(cand)  # sha256-checked
            name, scale = new.meta.name, new.meta.scale
            stage = new.meta.extra.get("gpu_window", {}).get("stage", {})
            gate = tuple(stage.get("gate", ("Set5",)))
            target = (weights_dir or WEIGHTS_DIR) / f"{name}.safetensors"
            score = _scores(new.model, gate, scale, data_root)
            old = (_scores(load_pretrained(target), gate, scale, data_root)
                   if target.is_file() else {})
            floor = {k: evaluate_model("bicubic", parse_metric_key(k)[0], scale,
                                       data_root=data_root, degradation=parse_metric_key(k)[1]
                                       )["psnr"] for k in gate}
            psnr = {w: {k: v["psnr"] for k, v in d.items()} for w, d in (("new", score),
                                                                          ("old", old))}
            mean = {w: sum(d.values()) / len(d) if d else -math.inf for w, d in psnr.items()}
            better = gate_passes(psnr["new"], psnr["old"] or None, floor)
            rasters = ""  # why the GeoTIFF gate held an aerial candidate back
            if better and geotiff_gate.applies_to(name):
                rasters = _geotiff_gate(cand, target if target.is_file() else None, scale,
                                        data_root)
            smoke = bool(new.meta.extra.get("gpu_window", {}).get("smoke"))
            publish = better and not rasters and not (smoke and weights_dir is None)
            if publish:  # the CPU scores replace the GPU ones; the other sets keep theirs
                metrics = {**new.meta.metrics, **{k: {**v, "device": "cpu"}
                                                  for k, v in score.items()}}
                save_weights(new.model, target, name=name, storage=PublishConfig().storage,
                             metadata={"training": new.meta.training, **new.meta.extra,
                                       "metrics": metrics})
            gpu = [new.meta.metrics.get(k, {}).get("psnr", math.nan) for k in gate]
            rows.append({"name": name, "gate": "+".join(gate), "old": mean["old"],
                         "new": mean["new"], "bicubic": sum(floor.values()) / len(gate),
                         "gpu": sum(gpu) / len(gate), "decision": "published" if publish else
                         f"kept ({rasters})" if rasters else
                         ("kept (smoke candidate)" if smoke and better else "kept"),
                         "target": str(target)})
    print(f"{'weights':<12} {'gate (mean)':<26} {'old':>9} {'new (CPU)':>10} {'new (GPU)':>10} "
          f"{'bicubic':>8}  decision")
    for r in rows:
        print(f"{r['name']:<12} {r['gate']:<26} {r['old']:>9.4f} {r['new']:>10.4f} "
              f"{r['gpu']:>10.4f} {r['bicubic']:>8.4f}  {r['decision']}")
    return rows
