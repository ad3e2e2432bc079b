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

``default_model_spec(scale)`` is the one place that decides what runs when no
model is named: the best shipped weights for the scale (``lgun-aid-x{s}``, then
``lgun-x{s}``), else bicubic with a warning. It switches by itself when weights
are installed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geosr.errors import OptionError

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
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a torch device string.

    Raises:
        OptionError: unknown device, or CUDA asked for but not available.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise OptionError(f"device {device!r} requested but CUDA is not available")
        return device
    raise OptionError(f"device must be auto, cpu or cuda, got {device!r}")


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
            OptionError: the weights are missing, corrupt or not an LGUN.
        """
        import lgun

        dev = resolve_device(device)
        try:
            module = lgun.load_pretrained(name_or_path, device=dev)
        except lgun.WeightsError as e:
            raise OptionError(str(e)) from e
        meta = getattr(module, "meta", {}) or {}
        name = str(meta.get("name") or Path(str(name_or_path)).stem)
        return cls(module, name=name, device=dev, sha256=meta.get("sha256"))

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


def default_model_spec(scale: int) -> tuple[str, str | None]:
    """The model to use when none is named, and a warning if it is a fallback.

    Prefers aerial weights, then natural-image weights, for ``scale``; while no
    weights are installed for that scale it returns ``bicubic`` with a warning.

    Returns:
        ``(spec, warning)``; ``warning`` is ``None`` when shipped weights are used.
    """
    try:
        import lgun
    except ImportError:  # pragma: no cover - lgun is part of this distribution
        pretrained: dict[str, Any] = {}
    else:
        pretrained = lgun.PRETRAINED
    for name in (f"lgun-aid-x{scale}", f"lgun-x{scale}"):
        info = pretrained.get(name)
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
        looks_like_path = spec.endswith((".safetensors", ".json")) or "/" in spec
        if not looks_like_path and not spec.startswith("lgun"):
            raise OptionError(
                f"unknown model {spec!r}: give nearest, bicubic, lanczos, a shipped "
                "LGUN name (lgun-x4, lgun-aid-x4, ...) or a .safetensors file"
            )
        model = LGUNUpscaler.from_pretrained(spec, device=device)
    if model.scale != scale:
        raise OptionError(f"model {model.name!r} upscales x{model.scale}, but --scale is {scale}")
    return model


# --- per-process model cache (Dask workers, xarray graphs) ---------------------

#: Models kept per process (LRU): a long-lived Dask worker serving several runs.
MODEL_CACHE_SIZE = 2
_MODELS: OrderedDict[str, Upscaler] = OrderedDict()
_MODELS_LOCK = threading.RLock()


@dataclass(frozen=True)
class ModelRef:
    """How a task finds its model in the process that runs it (a few bytes to pickle).

    Attributes:
        key: Cache key.
        spec: Name or path loaded with ``load_model`` on first use; ``None`` when the
            model is installed by other means (``install_model``, a Dask worker plugin).
        scale: Upscaling factor.
        device: Device for neural models in that process.
        sha256: Digest the loaded weights must have (the ones the caller's provenance
            tags name); ``None`` for weight-free models.
    """

    key: str
    spec: str | None
    scale: int
    device: str
    sha256: str | None = None

    @classmethod
    def for_spec(cls, spec: str, scale: int, device: str,
                 sha256: str | None = None) -> ModelRef:
        """A reference loaded by name; ``sha256`` (the client's weights) is checked."""
        return cls(f"spec:{spec}:x{scale}:{device}:{sha256}", spec, scale, device, sha256)


def install_model(key: str, model: Upscaler) -> None:
    """Put ``model`` in this process's cache under ``key`` (least recently used evicted)."""
    with _MODELS_LOCK:
        _MODELS[key] = model
        _MODELS.move_to_end(key)
        while len(_MODELS) > MODEL_CACHE_SIZE:
            _MODELS.popitem(last=False)


def forget_model(key: str) -> None:
    """Drop ``key`` from this process's cache."""
    with _MODELS_LOCK:
        _MODELS.pop(key, None)


def worker_model(ref: ModelRef) -> Upscaler:
    """The model of ``ref`` in this process, loaded once on first use (thread-safe)."""
    with _MODELS_LOCK:
        model = _MODELS.get(ref.key)
        if model is not None:
            _MODELS.move_to_end(ref.key)
            return model
        if ref.spec is None:
            raise OptionError(f"model {ref.key} is not installed in this process")
        model = load_model(ref.spec, ref.scale, device=ref.device)
        if ref.sha256 is not None and model.sha256 != ref.sha256:
            # Weights resolved by name here are not the caller's (another install, or
            # republished meanwhile): the output's provenance would be wrong.
            raise OptionError(
                f"model {ref.spec!r} here has weights sha256 {model.sha256}, but the run "
                f"uses {ref.sha256}: install the same weights on every worker"
            )
        if isinstance(model, LGUNUpscaler) and model.device == "cpu":
            # A worker process exists to run the model: keep its big freed blocks (see
            # lgun.fast.tune_malloc; process-wide, hence here and not in the adapter).
            from lgun.fast import tune_malloc

            tune_malloc()
        install_model(ref.key, model)
        return model
