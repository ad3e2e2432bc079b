"""The per-process model cache of Dask workers and xarray graphs.

A task carries a ``ModelRef`` (a few bytes to pickle), never the model: the process
that runs it loads the model once on first use (``worker_model``) or receives it from
a worker plugin (``install_model``; ``geosr.distributed``), and keeps the last few.
No dask import here: the xarray accessor uses the cache with any scheduler.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from geosr.errors import OptionError
from geosr.models import LGUNUpscaler, Upscaler, load_model

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
        ensemble: Run the loaded model as its 8-view self-ensemble.
    """

    key: str
    spec: str | None
    scale: int
    device: str
    sha256: str | None = None
    ensemble: bool = False

    @classmethod
    def for_spec(cls, spec: str, scale: int, device: str,
                 sha256: str | None = None, ensemble: bool = False) -> ModelRef:
        """A reference loaded by name; ``sha256`` (the client's weights) is checked;
        ``ensemble`` wraps it in its 8-view self-ensemble (part of the key, so a process
        never hands the plain model to an ensemble run or the reverse)."""
        key = f"spec:{spec}:x{scale}:{device}:{sha256}" + (":ensemble" if ensemble else "")
        return cls(key, spec, scale, device, sha256, ensemble)


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
        if ref.ensemble:
            from geosr.ensemble import with_ensemble

            model = with_ensemble(model, True)
        install_model(ref.key, model)
        return model
