"""Validation, and publishing a model as a named weight set only when it improves.

``publish`` writes ``<dir>/<name>.safetensors`` (+ .json, via ``lgun.pretrained.save_weights``)
only if the model's PSNR on ``PublishConfig.dataset`` beats the weights already there (or there
are none) and reaches ``min_psnr``. A run may re-publish its own weights at an equal score (to
add metrics); another run must beat them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from lgun.model import LGUN
from lgun.pretrained import (
    PRETRAINED,
    WEIGHTS_DIR,
    WeightsError,
    load_pretrained,
    metric_entry,
    read_weights_meta,
    save_weights,
)
from lgun.training.config import PublishConfig

__all__ = ["publish", "publish_path", "validate"]

log = logging.getLogger("lgun.train")


def validate(model: torch.nn.Module, dataset: str, scale: int, *, device: torch.device,
             data_root: str | os.PathLike[str] | None = None,
             limit: int | None = None, degradation: str = "bicubic") -> dict[str, Any]:
    """PSNR/SSIM on the Y channel through ``lgun.evaluate`` (the model is left in eval mode);
    the LR is made by ``degradation``. Returns ``lgun.pretrained.metric_entry``'s shape."""
    from lgun.evaluate import evaluate_model

    model.eval()
    with torch.no_grad():
        r = evaluate_model(model, dataset, scale, data_root=data_root or None, protocol="y",
                           device=str(device), limit=limit or None, degradation=degradation)
    return metric_entry(r)


def publish_path(pub: PublishConfig) -> Path:
    """Where ``pub.name`` is written (``lgun/weights`` unless ``pub.dir`` is given)."""
    folder = Path(pub.dir) if pub.dir else WEIGHTS_DIR
    return folder / f"{pub.name}.safetensors"


def _published_meta(path: Path) -> dict[str, Any] | None:
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        return None
    try:
        return read_weights_meta(path)
    except WeightsError:
        return None


def _complete_metrics(path: Path, meta: dict[str, Any], pub: PublishConfig, scale: int, *,
                      device: torch.device, data_root: str | None) -> None:
    """Evaluate the published weights on the ``pub.datasets`` their JSON lacks."""
    missing = [ds for ds in pub.datasets if ds not in meta.get("metrics", {})]
    if not missing:
        return
    published = load_pretrained(path, device=device)
    metrics = dict(meta.get("metrics", {}))
    for ds in missing:
        metrics[ds] = validate(published, ds, scale, device=device, data_root=data_root)
    keep = {k: v for k, v in meta.items()
            if k not in ("name", "architecture", "config", "sha256", "metrics", "storage")}
    save_weights(published, path, name=meta.get("name"), metadata={**keep, "metrics": metrics},
                 storage=meta.get("storage", "float32"))
    log.info("completed metrics of %s: %s", path, ", ".join(missing))


def publish(
    model: LGUN,
    pub: PublishConfig,
    scale: int,
    training: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    *,
    device: torch.device,
    data_root: str | None = None,
    complete: bool = True,
) -> bool:
    """Write ``model`` as the weight set ``pub.name`` if it beats the one there.

    Args:
        model: The model to publish (the EMA when the run keeps one).
        pub: Name, deciding dataset, floor, metric datasets and folder.
        scale: The model's scale (a shipped name must be of that scale).
        training: The ``training`` record for the JSON.
        metrics: Must hold the full ``pub.dataset`` result.
        device: Device of the extra evaluations.
        data_root: Base of the evaluation sets (None = the default data root).
        complete: Evaluate the other ``pub.datasets`` here (only when publishing), and fill in
            the missing metrics of weights kept from an earlier validation of the same run.

    Returns:
        Whether the weights were written.
    """
    if pub.name in PRETRAINED and PRETRAINED[pub.name].scale != scale:
        raise ValueError(f"{pub.name} is a x{PRETRAINED[pub.name].scale} name")
    path = publish_path(pub)
    new = metrics[pub.dataset]["psnr"]
    old_meta = _published_meta(path)
    old = (old_meta or {}).get("metrics", {}).get(pub.dataset, {}).get("psnr")
    same_run = (old_meta or {}).get("training", {}).get("run_id") == training.get("run_id")
    if new < pub.min_psnr:
        log.info("publish %s: %.3f dB < minimum %.3f; kept", pub.name, new, pub.min_psnr)
        return False
    if old is not None and not (new > old or (same_run and new >= old)):
        log.info("publish %s: %.3f dB does not beat published %.3f dB; kept", pub.name, new, old)
        if complete and same_run and old_meta is not None:
            _complete_metrics(path, old_meta, pub, scale, device=device, data_root=data_root)
        return False
    metrics = dict(metrics)
    for ds in pub.datasets if complete else ():
        if ds not in metrics:
            metrics[ds] = validate(model, ds, scale, device=device, data_root=data_root)
    save_weights(model, path, name=pub.name, metadata={"training": training, "metrics": metrics},
                 storage=pub.storage)
    log.info("published %s (%s %.3f dB; was %s)", path, pub.dataset, new, old)
    return True
