"""Train LGUN with the paper's Table 1 recipe; resume exactly; publish weights that improve.

Recipe (defaults of ``TrainConfig``): 64x64 HR patches, batch 16, random 90-degree rotations
and horizontal flips, Adam (0.9, 0.999) with weight decay 1e-4, learning rate 5e-4 with cosine
decay to 1e-7, L1 loss; LR inputs from the MATLAB-compatible bicubic (``lgun.data``).

A run lives in ``out_dir``::

    config.json        the resolved TrainConfig (written at every start/resume)
    last.pt            checkpoint: model, optimiser, step, schedule progress, EMA, RNG, wall time
    log.jsonl          one JSON line per validation
    final.safetensors  the evaluated model at the end (+ .json, via ``save_weights``)

Checkpoints hold tensors and plain Python values only and are read with
``torch.load(weights_only=True)``. Training batches are a function of ``(seed, step)``
(``lgun.data.PairSampler``), so resuming reproduces an uninterrupted run.

Publishing: when ``publish`` names a shipped weight set (``lgun-x2``...), the evaluated model is
written to ``lgun/weights/<name>.safetensors`` only if its PSNR on ``publish_dataset`` beats the
shipped one (or none is shipped), and, if ``publish_during``, at every validation as well.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lgun.data import Source, build_sampler, default_data_root
from lgun.model import LGUN, LGUNConfig
from lgun.pretrained import (
    PRETRAINED,
    WEIGHTS_DIR,
    WeightsError,
    load_pretrained,
    read_weights_meta,
    save_weights,
)

#: ``TrainConfig.optimizer`` values and their classes (both read ``weight_decay``).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}

#: Batches for the REC fit use step numbers from here on (never reached by training).
FIT_STEP = 10**12

NATURAL_SOURCES: tuple[dict[str, Any], ...] = (
    {"name": "natural", "paths": ["natural/train/T91", "natural/train/BSD200"], "weight": 1.0},
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory.

    Attributes:
        name: Run label (and default ``out_dir`` name).
        scale: SR factor.
        model: ``LGUNConfig`` fields other than ``scale`` (ignored with ``init_from``, whose
            architecture is kept).
        sources: Training sources, dicts of ``lgun.data.Source`` (name, paths, weight).
        data_root: Base of relative data paths ("" = ``$GEOSR_DATA`` or ``../shared/data``).
        patch_size: HR patch side (x3 uses 63, see ``lgun.data``).
        batch_size: Patches per step.
        steps: Total optimiser steps (the cosine schedule spans them).
        learning_rate: Peak learning rate.
        min_learning_rate: Cosine floor.
        warmup_steps: Linear warm-up steps (0 in the paper's recipe).
        optimizer: "adam" (the paper's: ``torch.optim.Adam``, weight decay as an L2 term
            added to the gradient) or "adamw" (decoupled weight decay, ``torch.optim.AdamW``).
            With "adam", Adam's normalisation turns the L2 term of a weight whose gradient is
            smaller than ``weight_decay * |w|`` into a step of about the full learning rate
            towards zero; the layers behind a zeroed output (``init = "fit"``) start with
            such tiny gradients, and short runs collapse them (docs/TRAINING_LOG.md,
            2026-11-26 session 2). "adamw" shrinks every weight by only
            ``lr * weight_decay`` per step.
        weight_decay: Weight decay (L2 term with "adam", decoupled with "adamw").
        betas: Adam betas.
        grad_clip: Gradient-norm clip (0 = off).
        ema_decay: EMA of the weights (0 = off); validation and publishing use the EMA.
        seed: Seed of initialisation and of every batch.
        out_dir: Run directory ("" = ``runs/<name>``).
        init_from: Shipped name or .safetensors to start from; at another scale every tensor
            but ``rec.*`` is copied.
        init: "fit" (default): a fresh model starts with identity LGU blocks (zeroed last
            layers) and every new REC is fitted by least squares (``fit_reconstruction``), so
            training starts as a good linear upsampler; "default": the plain initialisation.
        fit_batches: Batches (of 16, drawn with negative step numbers) for the REC fit.
        resume: Checkpoint file, run directory, or "auto" (``out_dir/last.pt`` if present).
        checkpoint_every: Steps between checkpoints (``last.pt``, overwritten).
        keep_every: Also keep a copy ``step_XXXXXX.pt`` every this many steps (0 = never).
        val_every: Steps between validations (0 = only at the end).
        val_dataset: ``lgun.evaluate`` dataset of the validations.
        val_limit: Validate on the first N images only (0 = all).
        max_minutes: Wall-time budget (0 = off). The run ends at ``steps`` or at this budget,
            whichever comes first, and the cosine schedule follows whichever is further along
            (so a time-boxed run, e.g. a GPU window, still decays to the floor). A run that
            ends by time is not bit-reproducible; a run that ends by steps is.
        device: "auto", "cpu", "cuda", ...
        amp: bf16 autocast on CUDA.
        compile: ``torch.compile`` the model on CUDA.
        num_threads: ``torch.set_num_threads`` (0 = leave).
        log_every: Steps between plain-text progress lines when tqdm is absent.
        publish: Shipped weight name to publish to ("" = do not publish).
        publish_dataset: Dataset whose PSNR decides publishing.
        publish_min_psnr: Never publish below this PSNR (e.g. bicubic's).
        publish_datasets: Datasets evaluated fully for the published metrics.
        publish_during: Also try to publish at every validation (needs
            ``val_dataset == publish_dataset`` and ``val_limit == 0``).
        publish_dir: Where to publish ("" = ``lgun/weights``).
    """

    name: str = "lgun-x2"
    scale: int = 2
    model: dict[str, Any] = field(default_factory=dict)
    sources: tuple[dict[str, Any], ...] = NATURAL_SOURCES
    data_root: str = ""
    patch_size: int = 64
    batch_size: int = 16
    steps: int = 1000
    learning_rate: float = 5e-4
    min_learning_rate: float = 1e-7
    warmup_steps: int = 0
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.0
    ema_decay: float = 0.0
    seed: int = 0
    out_dir: str = ""
    init_from: str = ""
    init: str = "fit"
    fit_batches: int = 4
    resume: str = ""
    checkpoint_every: int = 100
    keep_every: int = 0
    val_every: int = 250
    val_dataset: str = "Set5"
    val_limit: int = 0
    max_minutes: float = 0.0
    device: str = "auto"
    amp: bool = True
    compile: bool = True
    num_threads: int = 0
    log_every: int = 10
    publish: str = ""
    publish_dataset: str = "Set5"
    publish_min_psnr: float = 0.0
    publish_datasets: tuple[str, ...] = ("Set5", "Set14", "B100")
    publish_during: bool = False
    publish_dir: str = ""

    def __post_init__(self) -> None:
        # TOML gives lists; keep the frozen config hashable-ish and JSON-stable.
        object.__setattr__(self, "sources", tuple(dict(s) for s in self.sources))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "publish_datasets", tuple(self.publish_datasets))
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {self.scale}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.init not in ("fit", "default"):
            raise ValueError(f"init must be 'fit' or 'default', got {self.init!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sources"] = [dict(s) for s in self.sources]
        d["betas"] = list(self.betas)
        d["publish_datasets"] = list(self.publish_datasets)
        return d

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


# ---------------------------------------------------------------------------------------------
# Pieces


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def describe_hardware(device: torch.device) -> str:
    """One line naming the accelerator or CPU, for logs and weight metadata."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    name = platform.processor() or platform.machine()
    try:  # Linux: the marketing name is more useful than the architecture
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"CPU {name} ({os.cpu_count()} cores), {torch.get_num_threads()} torch threads "
            f"(torch {torch.__version__})")


def build_model(cfg: TrainConfig) -> tuple[LGUN, str]:
    """A fresh or ``init_from``-initialised model and a note of what was loaded (REC is not
    fitted here: see ``fit_reconstruction``)."""
    torch.manual_seed(cfg.seed)
    if not cfg.init_from:
        model = LGUN(LGUNConfig(scale=cfg.scale, **cfg.model))
        if cfg.init == "fit":
            zero_residual_branches(model)
        return model, "random"
    src = load_pretrained(cfg.init_from)
    model = LGUN(src.config.with_scale(cfg.scale))
    state = src.state_dict()
    same_scale = src.config.scale == cfg.scale
    if not same_scale:
        # Only the reconstruction conv depends on the scale; it keeps its fresh init.
        state = {k: v for k, v in state.items() if not k.startswith("rec.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("rec.") for k in missing):
        raise WeightsError(f"cannot initialise from {cfg.init_from}: {missing} {unexpected}")
    note = "all tensors" if same_scale else "all but rec."
    return model, f"{cfg.init_from} (x{src.config.scale}, {note})"


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimiser (``cfg.optimizer``) at the peak learning rate."""
    return OPTIMIZERS[cfg.optimizer](params, lr=cfg.learning_rate, betas=cfg.betas,
                                     weight_decay=cfg.weight_decay)


def configure_optimizer(opt: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Apply the configured recipe to ``opt``'s groups (after ``load_state_dict``, which
    restores the saved groups' values: a checkpoint of an "adam" run resumed as "adamw" would
    otherwise keep the coupled L2 term). The learning rate is set at every step anyway."""
    for g in opt.param_groups:
        g["weight_decay"], g["betas"] = cfg.weight_decay, cfg.betas
        if "decoupled_weight_decay" in g:
            g["decoupled_weight_decay"] = cfg.optimizer == "adamw"


def progress(step: int, wall_s: float, cfg: TrainConfig) -> float:
    """Fraction of the run done, by steps or by the wall-time budget, whichever is further."""
    p = step / cfg.steps
    if cfg.max_minutes > 0:
        p = max(p, wall_s / (60 * cfg.max_minutes))
    return min(1.0, p)


def zero_residual_branches(model: LGUN) -> None:
    """Zero the last layer of every mixer and FFN, so each LGU block starts as the identity.

    With the long skip, the body then computes ``2 * head(x)``: the network starts as a
    linear upsampler (once ``fit_reconstruction`` has fitted REC) and the blocks learn the
    residual, as SkipInit/ReZero; gradients reach the zeroed layers from the first step.
    """
    for block in model.blocks:
        for layer in (block.mixer.proj_out, block.ffn.fc2):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)


@torch.no_grad()
def fit_reconstruction(model: LGUN, batches: list[tuple[torch.Tensor, torch.Tensor]],
                       ridge: float = 1e-4) -> float:
    """Least-squares fit of the REC conv (3x3 conv + PixelShuffle) on the current features.

    REC is linear in the body features, so its best weights for a fixed body are a ridge
    regression: rows are LR pixels, inputs the 3x3 neighbourhood of every feature channel,
    outputs the ``3 * scale**2`` sub-pixels. Used when REC is new (a fresh model, or another
    scale's body), it replaces a random start by the best linear read-out: training then starts
    near (or above) bicubic quality instead of tens of dB below it.

    Returns:
        PSNR (RGB, dB) of the fitted read-out on ``batches``.
    """
    conv = model.rec[0]
    s = model.config.scale
    ata = atb = None
    sq, count = 0.0, 0
    for lr, hr in batches:
        f = model.head(lr)
        f = model.blocks(f) + f  # (B, C, h, w): the input of REC
        cols = F.unfold(f, 3, padding=1)  # (B, C*9, h*w), the conv's receptive fields
        x = cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # bias column
        # (B, 3, s*h, s*w) -> (B, 3*s*s, h, w): the inverse of PixelShuffle
        y = F.pixel_unshuffle(hr, s).flatten(2).transpose(1, 2).reshape(len(x), -1).double()
        ata = x.T @ x if ata is None else ata + x.T @ x
        atb = x.T @ y if atb is None else atb + x.T @ y
        sq, count = sq + float((y * y).sum()), count + y.numel()
    assert ata is not None and atb is not None
    reg = ridge * ata.diagonal().mean() * torch.eye(len(ata), dtype=ata.dtype)
    w = torch.linalg.solve(ata + reg, atb)  # (C*9 + 1, 3*s*s)
    conv.weight.copy_(w[:-1].T.reshape(conv.weight.shape).float())
    conv.bias.copy_(w[-1].float())
    # Residual sum of squares from the normal equations: |y|^2 - 2 w.atb + w.ata.w
    rss = sq - 2 * float((w * atb).sum()) + float((w * (ata @ w)).sum())
    return 10 * math.log10(1.0 / max(rss / count, 1e-12))


def parent_of(init_from: str) -> dict[str, Any] | None:
    """What ``init_from`` was trained on (its run, data and total steps), for the lineage."""
    if not init_from:
        return None
    t = read_weights_meta(init_from).get("training", {})
    return {"weights": init_from, "run_id": t.get("run_id"), "data": t.get("data"),
            "total_steps": t.get("total_steps", t.get("steps")), "scale": t.get("scale"),
            "parent": t.get("parent")}


def lr_factor(step: int, t: float, cfg: TrainConfig) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_steps``, then cosine in the
    progress ``t`` from 1 down to ``min_learning_rate / learning_rate``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_learning_rate / cfg.learning_rate
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def validate(model: torch.nn.Module, dataset: str, scale: int, *, cfg: TrainConfig,
             device: torch.device, limit: int | None = None) -> dict[str, Any]:
    """PSNR/SSIM on the Y channel through ``lgun.evaluate`` (the model is left in eval mode)."""
    from lgun.evaluate import evaluate_model

    model.eval()
    with torch.no_grad():
        r = evaluate_model(model, dataset, scale, data_root=cfg.data_root or None,
                           protocol="y", device=str(device), limit=limit or None)
    return {"psnr": round(float(r["psnr"]), 4), "ssim": round(float(r["ssim"]), 4),
            "n": int(r["n"]), "protocol": "y"}


def _resolve_resume(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        p = cfg.run_dir / "last.pt"
        return p if p.is_file() else None
    p = Path(cfg.resume)
    return p / "last.pt" if p.is_dir() else p


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write never leaves a broken last.pt


class _Progress:
    """tqdm when importable (loss, learning rate, it/s, ETA), plain lines otherwise."""

    def __init__(self, start: int, total: int, every: int) -> None:
        self.total, self.every, self.t0, self.start = total, every, time.time(), start
        try:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self.bar = tqdm(initial=start, total=total, dynamic_ncols=True,
                            mininterval=0.5 if tty else 30.0)
        except ImportError:
            self.bar = None

    def update(self, step: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)
        elif (step + 1) % self.every == 0:
            rate = (step + 1 - self.start) / max(1e-9, time.time() - self.t0)
            eta = (self.total - step - 1) / max(rate, 1e-9)
            print(f"step {step + 1}/{self.total} loss {loss:.4f} lr {lr:.2e} "
                  f"{rate:.2f} it/s ETA {eta / 60:.1f} min", flush=True)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# Publishing


def _publish_path(cfg: TrainConfig) -> Path:
    folder = Path(cfg.publish_dir) if cfg.publish_dir else WEIGHTS_DIR
    return folder / f"{cfg.publish}.safetensors"


def _shipped_meta(path: Path) -> dict[str, Any] | None:
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        return None
    try:
        return read_weights_meta(path)
    except WeightsError:
        return None


def _complete_metrics(path: Path, meta: dict[str, Any], cfg: TrainConfig, *,
                      device: torch.device, log: Callable[[str], None]) -> None:
    """Evaluate the shipped weights on the ``publish_datasets`` their JSON lacks."""
    missing = [ds for ds in cfg.publish_datasets if ds not in meta.get("metrics", {})]
    if not missing:
        return
    shipped = load_pretrained(path, device=device)
    metrics = dict(meta.get("metrics", {}))
    for ds in missing:
        metrics[ds] = validate(shipped, ds, cfg.scale, cfg=cfg, device=device)
    keep = {k: v for k, v in meta.items()
            if k not in ("name", "architecture", "config", "sha256", "metrics")}
    save_weights(shipped, path, name=meta.get("name"), metadata={**keep, "metrics": metrics})
    log(f"completed metrics of {path}: {', '.join(missing)}")


def publish(
    model: LGUN,
    cfg: TrainConfig,
    training: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    *,
    device: torch.device,
    complete: bool = True,
    log: Callable[[str], None] = print,
) -> bool:
    """Write ``model`` as the shipped weights ``cfg.publish`` if it beats them.

    ``metrics`` must hold the full ``cfg.publish_dataset`` result. With ``complete``, the other
    ``cfg.publish_datasets`` are evaluated here (only when publishing), and weights kept from
    an earlier validation of the same run get their missing metrics filled in.

    Returns:
        Whether the weights were written.
    """
    if cfg.publish in PRETRAINED and PRETRAINED[cfg.publish].scale != cfg.scale:
        raise ValueError(f"{cfg.publish} is a x{PRETRAINED[cfg.publish].scale} name")
    path = _publish_path(cfg)
    new = metrics[cfg.publish_dataset]["psnr"]
    old_meta = _shipped_meta(path)
    old = (old_meta or {}).get("metrics", {}).get(cfg.publish_dataset, {}).get("psnr")
    same_run = (old_meta or {}).get("training", {}).get("run_id") == training.get("run_id")
    if new < cfg.publish_min_psnr:
        log(f"publish {cfg.publish}: {new:.3f} dB < minimum {cfg.publish_min_psnr:.3f}; kept")
        return False
    if old is not None and not (new > old or (same_run and new >= old)):
        log(f"publish {cfg.publish}: {new:.3f} dB does not beat shipped {old:.3f} dB; kept")
        if complete and same_run and old_meta is not None:
            _complete_metrics(path, old_meta, cfg, device=device, log=log)
        return False
    metrics = dict(metrics)
    for ds in cfg.publish_datasets if complete else ():
        if ds not in metrics:
            metrics[ds] = validate(model, ds, cfg.scale, cfg=cfg, device=device)
    save_weights(model, path, name=cfg.publish, metadata={"training": training,
                                                          "metrics": metrics})
    log(f"published {path} ({cfg.publish_dataset} {new:.3f} dB; was {old})")
    return True


# ---------------------------------------------------------------------------------------------
# Training


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training as configured; returns the run directory.

    Raises:
        FileNotFoundError: a missing resume checkpoint or training folder.
    """
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = pick_device(cfg.device)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    sources = [Source.from_dict(s) for s in cfg.sources]
    sampler = build_sampler(sources, cfg.scale, patch_size=cfg.patch_size,
                            data_root=cfg.data_root or default_data_root(), seed=cfg.seed)
    model, init_note = build_model(cfg)
    parent = parent_of(cfg.init_from)
    new_rec = not cfg.init_from or read_weights_meta(cfg.init_from)["config"]["scale"] != cfg.scale
    if cfg.init == "fit" and new_rec and not _resolve_resume(cfg):
        # A new REC (fresh model, or another scale's body): fit it in closed form, on batches
        # drawn with step numbers that training never reaches.
        batches = [sampler.batch(FIT_STEP + i, 16) for i in range(cfg.fit_batches)]
        fit = fit_reconstruction(model, [(torch.from_numpy(a), torch.from_numpy(b))
                                         for a, b in batches])
        init_note += f", REC least-squares fit ({fit:.2f} dB RGB on {cfg.fit_batches} batches)"
        print(f"init: {init_note}", flush=True)
    model.to(device)
    opt = make_optimizer(model.parameters(), cfg)
    ema = copy.deepcopy(model).eval() if cfg.ema_decay > 0 else None
    for p in ema.parameters() if ema is not None else ():
        p.requires_grad_(False)

    step, wall_prev = 0, 0.0
    run_id = f"{cfg.name}@{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    history: list[dict[str, Any]] = []
    ckpt_path = _resolve_resume(cfg)
    if cfg.resume and cfg.resume != "auto" and (ckpt_path is None or not ckpt_path.is_file()):
        raise FileNotFoundError(f"resume checkpoint not found: {ckpt_path}")
    if ckpt_path is not None:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        configure_optimizer(opt, cfg)  # the checkpoint's groups may hold another recipe
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        torch.set_rng_state(ck["torch_rng"])
        step, wall_prev = int(ck["step"]), float(ck["wall_s"])
        run_id, init_note = ck["run_id"], ck["init_from"]
        parent = json.loads(ck.get("parent", "null"))  # as it was when the run started
        history = json.loads(ck["history"])
        print(f"resumed {ckpt_path} at step {step}", flush=True)

    def wall() -> float:
        return wall_prev + time.time() - t_start

    def checkpoint() -> None:
        path = run_dir / "last.pt"
        _save_checkpoint(path, {
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "schedule": {"progress": progress(step, wall(), cfg)}, "step": step,
            "ema": ema.state_dict() if ema is not None else None,
            "torch_rng": torch.get_rng_state(), "wall_s": wall(),
            "run_id": run_id, "init_from": init_note, "history": json.dumps(history),
            "parent": json.dumps(parent),
            "config": json.dumps(cfg.to_dict()), "model_config": json.dumps(
                model.config.to_dict()),
        })
        if cfg.keep_every and step % cfg.keep_every == 0:
            shutil.copyfile(path, run_dir / f"step_{step:06d}.pt")

    net: Callable[[torch.Tensor], torch.Tensor] = model
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if cfg.compile:
            net = torch.compile(model)
    use_amp = cfg.amp and device.type == "cuda"
    eval_model = ema if ema is not None else model

    def training_meta() -> dict[str, Any]:
        hr = sampler.hr_patch
        return {"run_id": run_id, "data": [dict(s) for s in cfg.sources], "steps": step,
                "batch": cfg.batch_size, "patch": [hr, hr], "scale": cfg.scale,
                "recipe": {"optimizer": OPTIMIZERS[cfg.optimizer].__name__,
                           "betas": list(cfg.betas),
                           "weight_decay": cfg.weight_decay, "learning_rate": cfg.learning_rate,
                           "schedule": f"cosine to {cfg.min_learning_rate} over "
                                       f"{cfg.steps} steps or {cfg.max_minutes} min",
                           "warmup_steps": cfg.warmup_steps, "loss": "L1",
                           "ema_decay": cfg.ema_decay},
                "hardware": describe_hardware(device),
                "wall_s": round(wall(), 1),
                "date": time.strftime("%Y-%m-%d", time.gmtime()), "init_from": init_note,
                "parent": parent, "total_steps": step + ((parent or {}).get("total_steps") or 0),
                "seed": cfg.seed}

    def evaluate_and_publish(final: bool) -> dict[str, Any]:
        limit = cfg.val_limit or None
        r = validate(eval_model, cfg.val_dataset, cfg.scale, cfg=cfg, device=device,
                     limit=limit)
        rec = {"step": step, "dataset": cfg.val_dataset, **r,
               "wall_s": round(wall(), 1)}
        history.append(rec)
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        bar.write(f"step {step}: {cfg.val_dataset} x{cfg.scale} {r['psnr']:.3f} dB / "
                  f"{r['ssim']:.4f} (n={r['n']})")
        full_primary = cfg.val_dataset == cfg.publish_dataset and not cfg.val_limit
        if cfg.publish and (final or (cfg.publish_during and full_primary)):
            metrics = ({cfg.publish_dataset: r} if full_primary else {})
            if not full_primary:
                metrics[cfg.publish_dataset] = validate(
                    eval_model, cfg.publish_dataset, cfg.scale, cfg=cfg, device=device)
            publish(eval_model, cfg, training_meta(), metrics, device=device, complete=final,
                    log=bar.write)
        model.train()
        return r

    t_start = time.time()
    bar = _Progress(step, cfg.steps, cfg.log_every)
    model.train()
    while progress(step, wall(), cfg) < 1.0:
        for g in opt.param_groups:
            g["lr"] = cfg.learning_rate * lr_factor(step, progress(step, wall(), cfg), cfg)
        lr_np, hr_np = sampler.batch(step, cfg.batch_size)
        lr_t = torch.from_numpy(lr_np).to(device, non_blocking=True)
        hr_t = torch.from_numpy(hr_np).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = F.l1_loss(net(lr_t).float(), hr_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            # Short runs: a warm-up decay keeps the EMA from lagging far behind early on.
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(p, 1 - d)
        step += 1
        bar.update(step - 1, loss.item(), opt.param_groups[0]["lr"])
        done = progress(step, wall(), cfg) >= 1.0
        if step % cfg.checkpoint_every == 0 and not done:
            checkpoint()
        if cfg.val_every and step % cfg.val_every == 0 and not done:
            evaluate_and_publish(final=False)
    bar.close()
    checkpoint()

    def save_final() -> None:
        save_weights(eval_model, run_dir / "final.safetensors", name=cfg.name,
                     metadata={"training": training_meta(), "history": history})

    save_final()  # before the (slow) final evaluation, so that follow-up runs can start
    evaluate_and_publish(final=True)
    checkpoint()
    save_final()
    return run_dir
