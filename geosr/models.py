"""Upscalers: what geosr knows about a model, and the models it ships adapters for.

geosr talks to a model only through the small ``Upscaler`` descriptor protocol
(in the spirit of spandrel): its scale, the channel count it accepts, the size
multiple a tile must have, whether half precision works, where its weights come
from, and a call that maps a float32 batch in [0, 1] to a batch ``scale`` times
larger. Implementations:

* ``NearestUpscaler``: pixel replication, exact; the oracle of the tests.
* ``ClassicalUpscaler``: ``bicubic`` or ``lanczos`` with Pillow's float ("F")
  resampler. Pillow's kernels are GDAL's (Keys cubic a = -0.5, 3-lobe Lanczos)
  and it samples at pixel centres, so the result sits on the same grid as
  ``gdalwarp -r cubic|lanczos -tr res/s res/s`` of the same raster.
* ``LGUNUpscaler``: an ``lgun.LGUN`` network; torch is imported lazily.

``describe_model(spec, scale)`` reads what a model needs (its ``ModelInfo``: neural or
not, input channels, size multiple, half precision, overlap hint) before anything is
loaded, from the shipped-weights table or the weights' JSON: runs are planned and
validated from it, then ``load_model`` builds the ``Upscaler``.
``default_model_spec(scale)`` is the one place that decides what runs when no model
is named: the best shipped weights for the scale (``lgun-aid-x{s}``, then
``lgun-x{s}``), else bicubic with a warning. It switches by itself when weights are
installed. The per-process cache that Dask workers load models into is
``geosr.model_cache``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geosr.errors import OptionError, WeightsError, one_line

#: Classical resampling methods offered beside the networks.
CLASSICAL = ("bicubic", "lanczos")


@runtime_checkable
class Upscaler(Protocol):
    """What geosr needs to know about a super-resolution model.

    Attributes:
        name: Short name recorded in the output's provenance tags.
        scale: Integer upscaling factor.
        in_channels: Channels the model takes (3 for LGUN); ``None`` means any count.
        size_multiple: Tile height and width must be multiples of this (1 = any).
        supports_half: Whether float16 inference is safe.
        sha256: Digest of the weights file, or ``None`` for weight-free methods.
        provenance: One line saying what the model is and where it comes from.
    """

    name: str
    scale: int
    in_channels: int | None
    size_multiple: int
    supports_half: bool
    sha256: str | None
    provenance: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Upscale ``batch`` (B, C, h, w) float32 in [0, 1] to (B, C, s*h, s*w) float32."""
        ...


@dataclass(frozen=True)
class NearestUpscaler:
    """Pixel replication: every input pixel becomes an s x s block of the same value."""

    scale: int
    name: str = "nearest"
    in_channels: int | None = None
    size_multiple: int = 1
    supports_half: bool = True
    sha256: str | None = None
    provenance: str = "nearest-neighbour replication (no model)"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        s = self.scale
        return np.ascontiguousarray(batch.repeat(s, axis=2).repeat(s, axis=3), dtype=np.float32)


@dataclass(frozen=True)
class ClassicalUpscaler:
    """Bicubic or Lanczos interpolation on the pixel-centre grid (Pillow, float32).

    Args:
        scale: Upscaling factor.
        method: ``"bicubic"`` (Keys, a = -0.5) or ``"lanczos"`` (3 lobes).
    """

    scale: int
    method: str = "bicubic"
    in_channels: int | None = None
    size_multiple: int = 1
    supports_half: bool = True
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.method not in CLASSICAL:
            raise OptionError(f"classical method must be one of {CLASSICAL}, got {self.method!r}")

    @property
    def name(self) -> str:
        return self.method

    @property
    def provenance(self) -> str:
        return f"classical {self.method} interpolation (Pillow float resampler, GDAL kernels)"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from PIL import Image

        resample = (Image.Resampling.BICUBIC if self.method == "bicubic"
                    else Image.Resampling.LANCZOS)
        b, c, h, w = batch.shape
        s = self.scale
        out = np.empty((b, c, h * s, w * s), dtype=np.float32)
        for i in range(b):
            for j in range(c):
                img = Image.fromarray(np.ascontiguousarray(batch[i, j], dtype=np.float32), mode="F")
                out[i, j] = np.asarray(img.resize((w * s, h * s), resample))
        return out


def resolve_device(device: str) -> str:
    """``lgun.device.resolve_device`` as a torch device string; errors are ``OptionError``.

    Raises:
        OptionError: unknown device, or CUDA asked for but not available.
    """
    from lgun.device import DeviceError
    from lgun.device import resolve_device as lgun_resolve

    try:
        return str(lgun_resolve(device))
    except DeviceError as e:
        raise OptionError(str(e)) from e


@dataclass
class LGUNUpscaler:
    """Adapter from an ``lgun.LGUN`` module to the ``Upscaler`` protocol.

    Args:
        module: The network (any ``torch.nn.Module`` with a ``scale`` or ``config.scale``).
        name: Name recorded in provenance.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        sha256: Digest of the weights file, if known.
        half: Run in float16 on CUDA (LGUN keeps its normalisations in float32).
        fast: On CPU in float32, run ``lgun.fast.optimize_for_inference``'s copy of an
            ``lgun.LGUN`` (same outputs within fp32 rounding, ~3x faster; BENCHMARKS.md).
    """

    module: Any
    name: str = "lgun"
    device: str = "auto"
    sha256: str | None = None
    half: bool = False
    fast: bool = True
    in_channels: int | None = 3
    size_multiple: int = 1
    supports_half: bool = True
    scale: int = field(init=False)
    provenance: str = field(init=False)
    model_seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        cfg = getattr(self.module, "config", None)
        self.scale = int(getattr(cfg, "scale", getattr(self.module, "scale", 0)))
        self.in_channels = int(getattr(cfg, "in_channels", 3))
        self.device = resolve_device(self.device)
        self.module = self.module.to(self.device).eval()
        if self.half and not self.device.startswith("cuda"):
            self.half = False
        if self.half:
            self.module = self.module.half()
        elif self.fast and self.device == "cpu":
            import lgun
            from lgun.fast import optimize_for_inference

            if isinstance(self.module, lgun.LGUN):
                self.module = optimize_for_inference(self.module)
        digest = f", weights sha256 {self.sha256}" if self.sha256 else ", untrained weights"
        self.provenance = f"LGUN {self.name} (x{self.scale}){digest}"

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str = "auto") -> LGUNUpscaler:
        """Load shipped weights (by name) or a ``.safetensors`` file.

        Raises:
            WeightsError: the weights are missing, corrupt or not an LGUN.
        """
        import lgun

        dev = resolve_device(device)
        try:
            module, meta = lgun.load_weights(name_or_path, device=dev)
        except lgun.WeightsError as e:
            raise WeightsError(" ".join(str(e).split())) from e
        except Exception as e:  # noqa: BLE001 - safetensors/torch raise many types on a bad file
            raise WeightsError(f"cannot load the weights {name_or_path}: {one_line(e)}") from e
        return cls(module, name=meta.name, device=dev, sha256=meta.sha256)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import time

        import torch

        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            if self.half:
                x = x.half()
            y = self.module(x).float().cpu().numpy()
        self.model_seconds += time.perf_counter() - t0
        return y


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline knows about a model before loading it.

    Attributes:
        name: The spec as given (``bicubic``, ``lgun-aid-x4``, a path) or the object's name.
        neural: Whether it is a network (runs on a device, worth ``tune_malloc``).
        scale: Upscaling factor, when the descriptor says (``None``: any scale).
        in_channels: Channels the model takes (``None``: any count, band by band).
        size_multiple: Tile height and width must be multiples of this.
        supports_half: Whether float16 inference is safe.
        overlap_hint: Suggested tile overlap (input pixels per side), if the model says.
    """

    name: str
    neural: bool
    scale: int | None
    in_channels: int | None
    size_multiple: int = 1
    supports_half: bool = True
    overlap_hint: int | None = None


def _check_weights_spec(spec: str) -> None:
    """Refuse a name that is neither a method, a shipped name nor a weights path."""
    if not (spec.endswith((".safetensors", ".json")) or "/" in spec or spec.startswith("lgun")):
        raise OptionError(
            f"unknown model {spec!r}: give nearest, bicubic, lanczos, a shipped "
            "LGUN name (lgun-x4, lgun-aid-x4, ...) or a .safetensors file"
        )


def describe_model(spec: str | Upscaler | None, scale: int) -> ModelInfo:
    """The ``ModelInfo`` of a model spec, without loading tensors (or torch).

    Args:
        spec: As ``load_model``.
        scale: The requested scale (weight-free methods take any).

    Raises:
        OptionError: unknown name.
        WeightsError: unreadable weights metadata, another architecture, or a
            configuration outside sane bounds (``geosr.weights``).
    """
    if spec is None:
        spec, _ = default_model_spec(scale)
    if not isinstance(spec, str):
        # A wrapper (``EnsembleUpscaler``) runs its ``inner`` model: neural if that is.
        inner = getattr(spec, "inner", spec)
        return ModelInfo(spec.name, isinstance(inner, LGUNUpscaler), spec.scale,
                         spec.in_channels, spec.size_multiple, spec.supports_half)
    if spec == "nearest" or spec in CLASSICAL:
        return ModelInfo(spec, False, None, None)
    _check_weights_spec(spec)
    from lgun.pretrained import PRETRAINED, weights_meta
    from lgun.pretrained import WeightsError as LgunWeightsError

    info = PRETRAINED.get(spec)
    if info is not None:
        return ModelInfo(spec, True, info.scale, info.in_channels, info.size_multiple,
                         info.supports_half, info.overlap_hint)
    from geosr.weights import check_descriptor

    try:
        meta = weights_meta(spec)
    except LgunWeightsError as e:
        raise WeightsError(" ".join(str(e).split())) from e
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise WeightsError(f"cannot read the description of {spec}: {one_line(e)}") from e
    check_descriptor(meta.architecture, meta.config, str(meta.path.with_suffix(".json")))
    if meta.scale != scale:
        raise OptionError(f"model {spec!r} upscales x{meta.scale}, but --scale is {scale}")
    return ModelInfo(spec, True, meta.scale, meta.in_channels)


def model_record(spec: str) -> dict[str, Any] | None:
    """What a weights spec was trained on and tested with, from its JSON (no torch).

    Returns:
        ``None`` for the weight-free methods; else ``trained_on`` (the source names of each
        stage of the lineage, oldest first: ``[["natural"], ["aid150", "rsscn7"]]`` for a
        fine-tune), ``degradation`` (LR kind -> weight, ``lgun.degrade.MIX_KINDS``),
        ``tested_on`` (``{dataset: {degradation: Y-PSNR}}``, as recorded in the JSON) and
        ``date`` of the training record.
    """
    if spec == "nearest" or spec in CLASSICAL:
        return None
    from lgun.pretrained import WeightsError as LgunWeightsError
    from lgun.pretrained import weights_meta

    try:
        meta = weights_meta(spec)
    except (LgunWeightsError, OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # describe_model, called first, reports unreadable weights
    stages: list[list[str]] = []  # oldest first: the lineage's parents, then this run
    rec: Any = meta.training
    while isinstance(rec, dict):
        names = [str(d.get("name")) for d in rec.get("data") or [] if isinstance(d, dict)]
        if names and (not stages or stages[0] != names):
            stages.insert(0, names)
        rec = rec.get("parent")
    return {"trained_on": stages, "degradation": meta.degradation,
            "tested_on": meta.tested_on, "date": meta.training.get("date")}


def default_model_spec(scale: int) -> tuple[str, str | None]:
    """The model to use when none is named, and a warning if it is a fallback.

    Prefers aerial weights, then natural-image weights, for ``scale``; while no
    weights are installed for that scale it returns ``bicubic`` with a warning.

    Returns:
        ``(spec, warning)``; ``warning`` is ``None`` when shipped weights are used.
    """
    from lgun.pretrained import PRETRAINED

    for name in (f"lgun-aid-x{scale}", f"lgun-x{scale}"):
        info = PRETRAINED.get(name)
        if info is not None and info.available:
            return name, None
    return "bicubic", (
        f"no LGUN weights for x{scale} are installed yet; falling back to bicubic "
        "(pass --model to choose)"
    )


def load_model(spec: str | Upscaler | None, scale: int, *, device: str = "auto") -> Upscaler:
    """Resolve a model spec to an ``Upscaler`` of the right scale.

    Args:
        spec: An ``Upscaler``; ``nearest``/``bicubic``/``lanczos``; a shipped weights
            name (``lgun-aid-x4``); a ``.safetensors`` path; or ``None`` for the default.
        scale: The requested scale; must match the model's.
        device: Device for neural models.

    Raises:
        OptionError: unknown name, missing weights, or a scale mismatch.
    """
    if spec is None:
        spec, _ = default_model_spec(scale)
    if not isinstance(spec, str):
        model = spec
    elif spec == "nearest":
        model = NearestUpscaler(scale)
    elif spec in CLASSICAL:
        model = ClassicalUpscaler(scale, spec)
    else:
        describe_model(spec, scale)  # the descriptor is checked before modules are built
        model = LGUNUpscaler.from_pretrained(spec, device=device)
    if model.scale != scale:
        raise OptionError(f"model {model.name!r} upscales x{model.scale}, but --scale is {scale}")
    return model
