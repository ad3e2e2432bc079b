"""The training configuration: one frozen dataclass per concern, read from TOML tables.

A run's TOML (``pipelines/configs/*.toml``) has top-level keys for the run itself and one table
per sub-config::

    name = "natural-x2"          # run label; out_dir defaults to runs/<name>
    scale = 2
    init_from = ""               # shipped name or .safetensors ("" = a fresh model)
    resume = "auto"

    [model]        # LGUNConfig fields but scale (ignored with init_from: its architecture)
    [data]         # sources, root, patch_size, batch_size, degradation ...; [[data.sources]]
    [optim]        # name ("adam"/"adamw"), loss, learning_rate, weight_decay, betas, ema_decay
    [schedule]     # steps, max_minutes, warmup_steps, min_learning_rate
    [eval]         # every, dataset, limit
    [checkpoint]   # every, keep_every
    [publish]      # name ("" = never), dataset, min_psnr, datasets, during, dir
    [runtime]      # device, amp, compile, fast_kernels, num_threads, log_every

Every class checks its values in ``__post_init__`` (types included: a TOML string for a number
fails here, not mid-run); ``TrainConfig.from_dict`` refuses unknown keys; one ``ValueError``.

Defaults are the paper's Table 1 recipe: 64x64 HR patches, batch 16, Adam (0.9, 0.999) with
weight decay 1e-4, learning rate 5e-4 with cosine decay to 1e-7, no warm-up, no EMA. The shipped
weights were trained with the recipe of ``pipelines/configs/natural.toml`` instead (AdamW,
warm-up, EMA 0.999; see ``OptimConfig.name`` and docs/TRAINING_LOG.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lgun.data import Source
from lgun.degrade import DegradationMix
from lgun.model import LGUNConfig
from lgun.pretrained import PRETRAINED
from lgun.training.fields import check_types, from_table, plain, require

#: ``OptimConfig.name`` values and their classes (both read ``weight_decay``).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}

#: ``OptimConfig.loss`` values: pixel losses of (output, target), mean over every element.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": torch.nn.functional.l1_loss,
    "l2": torch.nn.functional.mse_loss,
}

#: T91 + BSD200, the paper's training images.
NATURAL_SOURCES: tuple[Source, ...] = (
    Source("natural", ("natural/train/T91", "natural/train/BSD200"), 1.0),
)


# ---------------------------------------------------------------------------------------------
# Sub-configs


@dataclass(frozen=True)
class DataConfig:
    """Training images and batches.

    Attributes:
        sources: Mixed image pools (``lgun.data.Source``: name, paths, weight).
        root: Base of relative data paths ("" = ``lgun.paths.default_data_root()``).
        patch_size: HR patch side (x3 uses 63, see ``lgun.data``).
        batch_size: Patches per step.
        degradation, psf_sigma, noise_std, jpeg_quality, jpeg_prob: LR degradation kind ->
            weight, and the rest of ``lgun.degrade.DegradationMix`` (default: bicubic only).
    """

    SECTION: ClassVar[str] = "data"
    sources: tuple[Source, ...] = NATURAL_SOURCES
    root: str = ""
    patch_size: int = 64
    batch_size: int = 16
    degradation: dict[str, float] = field(default_factory=lambda: {"bicubic": 1.0})
    psf_sigma: tuple[float, float] = (0.3, 0.7)
    noise_std: float = 0.0
    jpeg_quality: int = 0
    jpeg_prob: float = 1.0

    def __post_init__(self) -> None:
        check_types(self)
        require(bool(self.sources), "data.sources must name at least one source")
        require(self.patch_size >= 2, f"data.patch_size must be >= 2, got {self.patch_size}")
        require(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        try:  # DegradationMix checks the kinds, weights and ranges; its messages name the key
            object.__setattr__(self, "degradation", dict(self.degradation_mix().weights))
        except (AttributeError, TypeError, ValueError) as e:  # e.g. a degradation list
            raise ValueError(f"data: {e} (degradation is a table of kind = weight)") from e

    def degradation_mix(self) -> DegradationMix:
        """The sampler's ``DegradationMix`` (``lgun.data.build_sampler(degradation=...)``)."""
        return DegradationMix(tuple(self.degradation.items()), self.psf_sigma, self.noise_std,
                              self.jpeg_quality, self.jpeg_prob)


@dataclass(frozen=True)
class OptimConfig:
    """Loss, optimiser and the weight EMA.

    Attributes:
        name: "adam" (the paper's: ``torch.optim.Adam``, weight decay as an L2 term added to
            the gradient) or "adamw" (decoupled weight decay, ``torch.optim.AdamW``). With
            "adam", Adam's normalisation turns the L2 term of a weight whose gradient is
            smaller than ``weight_decay * |w|`` into a step of about the full learning rate
            towards zero; the layers behind a zeroed output (``init = "fit"``) start with such
            tiny gradients, and short runs collapse them (docs/TRAINING_LOG.md, 2026-11-26).
            "adamw" shrinks every weight by only ``learning_rate * weight_decay`` per step;
            every shipped weight set was trained with it.
        loss: "l1" (the paper's) or "l2" (mean squared error, PSNR's own measure; a short
            L2 fine-tune of L1-trained x4 weights lowered Set5, docs/TRAINING_LOG.md).
        learning_rate: Peak learning rate (see ``ScheduleConfig`` for its course).
        weight_decay: L2 term with "adam", decoupled with "adamw".
        betas: Adam betas.
        grad_clip: Gradient-norm clip (0 = off).
        ema_decay: EMA of the weights (0 = off); validation and publishing use the EMA.
    """

    SECTION: ClassVar[str] = "optim"
    name: str = "adam"
    loss: str = "l1"
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.0
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        check_types(self)
        require(self.name in OPTIMIZERS, f"optim.name: optimizer must be one of "
                                          f"{sorted(OPTIMIZERS)}, got {self.name!r}")
        require(self.loss in LOSSES, f"optim.loss must be one of {sorted(LOSSES)}, got "
                                     f"{self.loss!r}")
        require(self.learning_rate > 0,
                 f"optim.learning_rate must be > 0, got {self.learning_rate}")
        require(self.weight_decay >= 0,
                 f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        require(all(0 <= b < 1 for b in self.betas),
                 f"optim.betas must be in [0, 1), got {list(self.betas)}")
        require(self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip}")
        require(0 <= self.ema_decay < 1,
                 f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Length of the run and the course of the learning rate.

    Attributes:
        steps: Total optimiser steps (the cosine schedule spans them).
        max_minutes: Wall-time budget (0 = off). The run ends at ``steps`` or at this budget,
            whichever comes first, and the cosine follows whichever is further along (so a
            time-boxed run still decays to the floor). A run that ends by time is not
            bit-reproducible; a run that ends by steps is. A resumed run counts the minutes of
            its earlier parts.
        warmup_steps: Linear warm-up steps (0 in the paper's recipe).
        min_learning_rate: Cosine floor.
    """

    SECTION: ClassVar[str] = "schedule"
    steps: int = 1000
    max_minutes: float = 0.0
    warmup_steps: int = 0
    min_learning_rate: float = 1e-7

    def __post_init__(self) -> None:
        check_types(self)
        require(self.steps >= 1, f"schedule.steps must be >= 1, got {self.steps}")
        require(self.max_minutes >= 0,
                 f"schedule.max_minutes must be >= 0, got {self.max_minutes}")
        require(self.warmup_steps >= 0,
                 f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(self.min_learning_rate >= 0,
                 f"schedule.min_learning_rate must be >= 0, got {self.min_learning_rate}")


@dataclass(frozen=True)
class EvalConfig:
    """Validations during the run (one always runs at the end).

    Attributes:
        every: Steps between validations (0 = only at the end).
        dataset: ``lgun.evaluate`` dataset name or folder.
        limit: Validate on the first N images only (0 = all).
    """

    SECTION: ClassVar[str] = "eval"
    every: int = 250
    dataset: str = "Set5"
    limit: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        require(self.every >= 0, f"eval.every must be >= 0, got {self.every}")
        require(self.limit >= 0, f"eval.limit must be >= 0, got {self.limit}")
        require(bool(self.dataset), "eval.dataset must not be empty")


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints in the run directory.

    Attributes:
        every: Steps between checkpoints (``last.pt``, overwritten).
        keep_every: Also keep a copy ``step_XXXXXX.pt`` every this many steps (0 = never).
    """

    SECTION: ClassVar[str] = "checkpoint"
    every: int = 100
    keep_every: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        require(self.every >= 1, f"checkpoint.every must be >= 1, got {self.every}")
        require(self.keep_every >= 0,
                 f"checkpoint.keep_every must be >= 0, got {self.keep_every}")


@dataclass(frozen=True)
class PublishConfig:
    """Publishing the evaluated model as a named weight set, only when it improves.

    Attributes:
        name: Weight name to publish to ("" = never publish). A shipped name (``lgun-x2``...)
            with an empty ``dir`` replaces the shipped weights when it beats them.
        dataset: Dataset whose PSNR decides publishing.
        min_psnr: Never publish below this PSNR (e.g. bicubic's).
        datasets: Datasets evaluated fully for the published metrics.
        during: Also try to publish at every validation (needs ``eval.dataset == dataset``
            and ``eval.limit == 0``).
        dir: Where to publish ("" = ``lgun/weights``, the shipped weights).
        storage: Tensor type of the published file: ``float16`` (half the size in git;
            the evaluation does not move, see ``lgun.pretrained.save_weights``) or ``float32``.
    """

    SECTION: ClassVar[str] = "publish"
    name: str = ""
    dataset: str = "Set5"
    min_psnr: float = 0.0
    datasets: tuple[str, ...] = ("Set5", "Set14", "B100")
    during: bool = False
    dir: str = ""
    storage: str = "float16"

    def __post_init__(self) -> None:
        check_types(self)
        require(bool(self.dataset), "publish.dataset must not be empty")
        require(self.storage in ("float16", "float32"),
                f"publish.storage must be float16 or float32, got {self.storage!r}")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the steps run; none of it changes the recipe.

    Attributes:
        device: "auto", "cpu", "cuda" or "cuda:N" (``lgun.device.resolve_device``).
        amp: bf16 autocast on CUDA.
        compile: ``torch.compile`` the model on CUDA.
        fast_kernels: On CPU, ``lgun.fast_train.optimize_for_training`` (same gradients within
            1e-4 relative; BENCHMARKS.md, ``pipelines.bench_train``), with the depthwise convs
            on ``lgun.cpu_kernels`` where they build (``LGUN_NATIVE_KERNELS=0``: oneDNN's).
        num_threads: ``torch.set_num_threads`` (0 = leave).
        data_workers: Processes making batches ahead of the loop (``lgun.training.batches``;
            0 = in the loop, right for a CPU run whose cores all train).
        log_every: Steps between plain-text progress lines when tqdm is absent.
    """

    SECTION: ClassVar[str] = "runtime"
    device: str = "auto"
    amp: bool = True
    compile: bool = True
    fast_kernels: bool = True
    num_threads: int = 0
    data_workers: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        check_types(self)
        for key in ("num_threads", "data_workers"):
            require(getattr(self, key) >= 0, f"runtime.{key} must be >= 0, got "
                                              f"{getattr(self, key)}")
        require(self.log_every >= 1, f"runtime.log_every must be >= 1, got {self.log_every}")


#: TOML table -> sub-config class (also the order of ``TrainConfig.to_dict``).
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "eval": EvalConfig,
    "checkpoint": CheckpointConfig,
    "publish": PublishConfig,
    "runtime": RuntimeConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory.

    Attributes:
        name: Run label (and default ``out_dir`` name).
        scale: SR factor (2, 3 or 4); also the scale of ``model``.
        init_from: Shipped name or .safetensors to start from ("" = a fresh model); at another
            scale every tensor but ``rec.*`` is copied.
        init: "fit" (default): a fresh model starts with identity LGU blocks (zeroed last
            layers) and every new REC is fitted by least squares
            (``lgun.training.warmstart``), so training starts as a good linear upsampler;
            "default": the plain initialisation.
        fit_batches: Batches (of 16) for the REC fit.
        seed: Seed of initialisation and of every batch.
        resume: Checkpoint file, run directory, or "auto" (``out_dir/last.pt`` if present).
        out_dir: Run directory ("" = ``runs/<name>``).
        model: Architecture of a fresh model (its ``scale`` follows ``scale``); ignored with
            ``init_from``, whose architecture is kept.
        data, optim, schedule, eval, checkpoint, publish, runtime: The sub-configs.
    """

    name: str = "lgun-x2"
    scale: int = 2
    init_from: str = ""
    init: str = "fit"
    fit_batches: int = 4
    seed: int = 0
    resume: str = ""
    out_dir: str = ""
    model: LGUNConfig = field(default_factory=LGUNConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        check_types(self)
        require(self.scale in (2, 3, 4), f"scale must be 2, 3 or 4, got {self.scale}")
        require(self.init in ("fit", "default"),
                 f"init must be 'fit' or 'default', got {self.init!r}")
        require(self.fit_batches >= 1, f"fit_batches must be >= 1, got {self.fit_batches}")
        require(bool(self.name), "name must not be empty")
        if self.model.scale != self.scale:
            object.__setattr__(self, "model", self.model.with_scale(self.scale))
        shipped = PRETRAINED.get(self.publish.name)
        require(shipped is None or shipped.scale == self.scale,
                 f"publish.name {self.publish.name} is a x{getattr(shipped, 'scale', '?')} "
                 f"weight set, but scale is {self.scale}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from nested plain data (a TOML file, ``config.json``).

        Raises:
            ValueError: an unknown key or a bad value, in one message naming the key.
        """
        top = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(top))
        if unknown:
            # A flat, older key: name the first section that has it.
            home = {f.name: s for s, c in reversed(SECTIONS.items()) for f in dataclasses.fields(c)}
            hints = [f"{k} (did you mean {home[k]}.{k}?)" if k in home else k for k in unknown]
            raise ValueError(f"unknown training config key(s) {', '.join(hints)} "
                             f"(top-level keys: {', '.join(top)})")
        kwargs: dict[str, Any] = {k: v for k, v in d.items() if k not in SECTIONS and
                                  k != "model"}
        model = d.get("model", {})
        if not isinstance(model, dict):
            raise ValueError(f"[model] must be a table, got {model!r}")
        if "scale" in model:
            raise ValueError("model.scale: set scale at the top level (it is the model's too)")
        try:
            kwargs["model"] = LGUNConfig.from_dict(model)  # its scale follows ``scale``
        except (TypeError, ValueError) as e:
            raise ValueError(f"model: {e}") from e
        for section, sub in SECTIONS.items():
            if section in d:
                kwargs[section] = from_table(sub, d[section], section)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data; ``from_dict(to_dict())`` gives the same config."""
        d = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d["model"] = {k: v for k, v in d["model"].items() if k != "scale"}
        return d

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name
