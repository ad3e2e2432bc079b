"""Self-describing LGUN weights: safetensors + a JSON config, sha256-checked.

A weight set is two files side by side::

    NAME.safetensors   the state dict (tensors only; no pickle is ever loaded)
    NAME.json          {"name", "config", "sha256", "training", "metrics", ...}

``sha256`` is the digest of the .safetensors file; loading refuses a mismatch.
Shipped weights live in the package folder ``lgun/weights`` and are listed in
``PRETRAINED`` below (the table a reader checks to know what exists). Each row
carries the input contract a caller needs to tile the model (channels, value range,
band order, size multiple, half precision, an overlap hint), readable without torch:
torch is imported only to save or load tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

    from lgun.model import LGUN

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class PretrainedInfo:
    """One row of the shipped-weights table.

    Attributes:
        name: Name accepted by ``load_pretrained``.
        scale: Upscaling factor.
        domain: ``natural`` (T91 + BSD200) or ``aerial`` (AID-150 + RSSCN7 fine-tune).
        description: One line for humans.
        in_channels: Channels of the input (and output).
        value_range: Range of the input and output values.
        band_order: Order the channels were trained in.
        size_multiple: Input height and width must be multiples of this (1: any size).
        supports_half: Whether float16/bfloat16 inference is safe (normalisations and the
            attention matrix run in float32 inside the model).
        overlap_hint: Context (input pixels per side) that tiles should share so that a
            tiled result matches a whole-image one (docs/geosr.md, "Tiling").
    """

    name: str
    scale: int
    domain: str
    description: str
    in_channels: int = 3
    value_range: tuple[float, float] = (0.0, 1.0)
    band_order: str = "RGB"
    size_multiple: int = 1
    supports_half: bool = True
    overlap_hint: int = 16

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.safetensors"

    @property
    def available(self) -> bool:
        """Whether the weight files are present in this installation."""
        return self.path.is_file() and self.path.with_suffix(".json").is_file()


#: Every name the project ships (or will ship: see ``available``).
PRETRAINED: dict[str, PretrainedInfo] = {
    info.name: info
    for info in (
        PretrainedInfo("lgun-x2", 2, "natural", "LGUN x2, natural images (T91 + BSD200)"),
        PretrainedInfo("lgun-x3", 3, "natural", "LGUN x3, natural images (T91 + BSD200)"),
        PretrainedInfo("lgun-x4", 4, "natural", "LGUN x4, natural images (T91 + BSD200)"),
        PretrainedInfo("lgun-aid-x2", 2, "aerial", "LGUN x2, fine-tuned on AID-150 + RSSCN7"),
        PretrainedInfo("lgun-aid-x3", 3, "aerial", "LGUN x3, fine-tuned on AID-150 + RSSCN7"),
        PretrainedInfo("lgun-aid-x4", 4, "aerial", "LGUN x4, fine-tuned on AID-150 + RSSCN7"),
    )
}


class WeightsError(RuntimeError):
    """Weights are missing, corrupt or inconsistent with their config."""


@dataclass(frozen=True)
class WeightsMeta:
    """The JSON document of a weight set, typed.

    Attributes:
        name: Name recorded when the weights were saved.
        path: The .safetensors file.
        sha256: Digest of that file, as recorded.
        config: ``LGUNConfig`` fields (``scale``, ``in_channels``, ...).
        architecture: ``LGUN``.
        training: How the weights were trained (run, data, recipe, lineage).
        metrics: Evaluation results by dataset.
        extra: Any other fields of the document.
    """

    name: str
    path: Path
    sha256: str | None
    config: dict[str, Any]
    architecture: str = "LGUN"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> int:
        return int(self.config.get("scale", 0))

    @property
    def in_channels(self) -> int:
        return int(self.config.get("in_channels", 3))

    @property
    def degradation(self) -> dict[str, float]:
        """LR kinds the weights were trained on, by weight (``lgun.degrade.MIX_KINDS``);
        records made before the degradation was recorded were all MATLAB bicubic."""
        rec = self.training.get("degradation") or {}
        return {str(k): float(v) for k, v in (rec.get("weights") or {"bicubic": 1.0}).items()}

    @property
    def tested_on(self) -> dict[str, dict[str, float]]:
        """Recorded scores: ``{dataset: {degradation: Y-PSNR}}``. Metric keys are a dataset
        name (bicubic LR, the benchmark protocol) or ``DATASET@DEGRADATION``
        (``metric_key``)."""
        out: dict[str, dict[str, float]] = {}
        for key, m in self.metrics.items():
            if isinstance(m, dict) and "psnr" in m:
                ds, _, deg = key.partition("@")
                out.setdefault(ds, {})[deg or "bicubic"] = float(m["psnr"])
        return out

    @classmethod
    def from_doc(cls, doc: dict[str, Any], path: Path) -> WeightsMeta:
        known = ("name", "sha256", "config", "architecture", "training", "metrics")
        config = doc.get("config")
        if not isinstance(config, dict):
            raise WeightsError(f"bad config in {path.with_suffix('.json')}: not an object")
        return cls(name=str(doc.get("name") or path.stem), path=path, sha256=doc.get("sha256"),
                   config=config, architecture=str(doc.get("architecture", "LGUN")),
                   training=dict(doc.get("training") or {}),
                   metrics=dict(doc.get("metrics") or {}),
                   extra={k: v for k, v in doc.items() if k not in known})


def metric_key(dataset: str, degradation: str = "bicubic") -> str:
    """Key of a score in a weights JSON's ``metrics``: the dataset for the benchmark's
    bicubic LR, ``DATASET@DEGRADATION`` for the others (``lgun.evaluate --degradation``)."""
    return dataset if degradation == "bicubic" else f"{dataset}@{degradation}"


def parse_metric_key(key: str) -> tuple[str, str]:
    """``metric_key``'s inverse: ``"aid150@box"`` -> ``("aid150", "box")``."""
    dataset, _, degradation = key.partition("@")
    return dataset, degradation or "bicubic"


def metric_entry(result: dict[str, Any]) -> dict[str, Any]:
    """The score stored under ``metric_key`` from an ``lgun.evaluate`` result: the one shape
    every writer of ``metrics`` uses (publishing, ``pipelines.record_metrics``, GPU windows)."""
    return {"psnr": round(float(result["psnr"]), 4), "ssim": round(float(result["ssim"]), 4),
            "n": int(result["n"]), "protocol": result["protocol"],
            "degradation": result["degradation"]}


class LoadedWeights(NamedTuple):
    """A model built from a weight set, and that set's metadata."""

    model: LGUN
    meta: WeightsMeta


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_pretrained(available_only: bool = False) -> list[PretrainedInfo]:
    """Rows of the shipped-weights table, optionally only those installed."""
    return [p for p in PRETRAINED.values() if p.available or not available_only]


def save_weights(
    model: LGUN,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
    storage: str = "float32",
) -> Path:
    """Write ``path`` (.safetensors) and its JSON config side by side.

    Args:
        model: The network to save.
        path: Destination; the suffix is forced to ``.safetensors``.
        name: Name recorded in the JSON (defaults to the file stem).
        metadata: Extra JSON-serialisable fields (``training``, ``metrics``, ...).
        storage: ``float32`` or ``float16`` (half the file; loading casts back to float32:
            Set5 PSNR of the shipped x2/x4 weights moved by at most 0.0004 dB).

    Returns:
        The path of the written .safetensors file.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    if storage not in ("float32", "float16"):
        raise ValueError(f"storage must be float32 or float16, got {storage!r}")
    dtype = getattr(torch, storage)
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; shipped weights must be world-readable
    os.replace(tmp, path)
    doc: dict[str, Any] = {"name": name or path.stem, "architecture": "LGUN"}
    doc["config"] = model.config.to_dict()
    doc.update(metadata or {})
    doc["storage"] = storage
    doc["sha256"] = sha256_file(path)
    path.with_suffix(".json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def resolve_weights(name_or_path: str | os.PathLike[str]) -> Path:
    """Return the .safetensors path for a shipped name or a user path."""
    s = str(name_or_path)
    if s in PRETRAINED:
        info = PRETRAINED[s]
        if not info.available:
            raise WeightsError(
                f"weights {s!r} are listed but not shipped in this version "
                f"(available: {[p.name for p in list_pretrained(True)] or 'none'})"
            )
        return info.path
    p = Path(s)
    if p.is_dir():
        raise WeightsError(f"{p} is a directory; give the .safetensors file")
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if p.suffix != ".safetensors":
        raise WeightsError(f"unknown weights {s!r}: not a shipped name nor a .safetensors file")
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    return p


def read_weights_meta(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document describing a weight set (no tensors are read)."""
    p = resolve_weights(name_or_path)
    j = p.with_suffix(".json")
    if not j.is_file():
        raise WeightsError(f"missing config {j} next to {p}")
    try:
        return json.loads(j.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"invalid JSON in {j}: {e}") from e


def weights_meta(name_or_path: str | os.PathLike[str]) -> WeightsMeta:
    """The typed metadata of a weight set (no tensors are read, torch is not imported)."""
    path = resolve_weights(name_or_path)
    return WeightsMeta.from_doc(read_weights_meta(path), path)


def load_weights(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    verify: bool = True,
) -> LoadedWeights:
    """Build an LGUN from shipped weights (by name) or a .safetensors file, with its metadata.

    Works offline: shipped weights are package data. The sha256 in the JSON config
    is checked unless ``verify`` is False. The model is returned in eval mode.

    Raises:
        WeightsError: unknown name, missing files, digest mismatch, or tensors that
            do not fit the config.
    """
    from safetensors.torch import load_file

    from lgun.model import LGUN, LGUNConfig

    meta = weights_meta(name_or_path)
    path = meta.path
    if verify:
        digest = sha256_file(path)
        if digest != meta.sha256:
            raise WeightsError(f"sha256 mismatch for {path}: {digest} != {meta.sha256}")
    try:
        cfg = LGUNConfig.from_dict(meta.config)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"bad config in {path.with_suffix('.json')}: {e}") from e
    model = LGUN(cfg)
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path} does not match its config: {e}") from e
    return LoadedWeights(model.to(device).eval(), meta)


def load_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    verify: bool = True,
) -> LGUN:
    """The model of ``load_weights`` (its metadata: ``weights_meta``)."""
    return load_weights(name_or_path, device=device, verify=verify).model
