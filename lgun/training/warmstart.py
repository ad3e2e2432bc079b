"""The model a run starts from: fresh or from other weights, with a least-squares REC.

A fresh model with ``init = "fit"`` starts with every LGU block's last layers (mixer
``proj_out``, FFN ``fc2``) at zero, so each block is the identity; its REC (3x3 conv +
PixelShuffle, linear in the body features) is then fitted by ridge regression on a few training
batches. A body taken from another scale keeps its blocks and gets only REC fitted. Training then
starts as a good linear upsampler instead of tens of dB below bicubic (docs/TRAINING_LOG.md,
2026-11-26).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lgun.data import PairSampler
from lgun.model import LGUN, LGUNConfig
from lgun.pretrained import WeightsError, load_pretrained, read_weights_meta

__all__ = [
    "FIT_BATCH_SIZE",
    "FIT_STEP",
    "build_model",
    "fit_reconstruction",
    "fit_new_reconstruction",
    "has_new_reconstruction",
    "zero_residual_branches",
]

#: Batches for the REC fit use step numbers from here on (never reached by training).
FIT_STEP = 10**12
#: Patches per REC-fit batch.
FIT_BATCH_SIZE = 16


def build_model(
    model: LGUNConfig, *, init_from: str = "", init: str = "fit", seed: int = 0
) -> tuple[LGUN, str]:
    """A fresh or ``init_from``-initialised model and a note of what was loaded.

    Args:
        model: Architecture of a fresh model; with ``init_from`` only its ``scale`` is used.
        init_from: Shipped name or .safetensors; at another scale every tensor but ``rec.*``
            is copied (REC keeps its fresh initialisation: see ``fit_new_reconstruction``).
        init: "fit" zeroes the residual branches of a fresh model; "default" keeps the plain
            initialisation.
        seed: Torch seed of the fresh tensors.

    Raises:
        WeightsError: ``init_from`` does not fit the architecture.
    """
    torch.manual_seed(seed)
    if not init_from:
        net = LGUN(model)
        if init == "fit":
            zero_residual_branches(net)
        return net, "random"
    src = load_pretrained(init_from)
    net = LGUN(src.config.with_scale(model.scale))
    state = src.state_dict()
    same_scale = src.config.scale == model.scale
    if not same_scale:
        # Only the reconstruction conv depends on the scale; it keeps its fresh init.
        state = {k: v for k, v in state.items() if not k.startswith("rec.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("rec.") for k in missing):
        raise WeightsError(f"cannot initialise from {init_from}: {missing} {unexpected}")
    note = "all tensors" if same_scale else "all but rec."
    return net, f"{init_from} (x{src.config.scale}, {note})"


def has_new_reconstruction(init_from: str, scale: int) -> bool:
    """Whether REC starts untrained: a fresh model, or a body of another scale."""
    return not init_from or read_weights_meta(init_from)["config"]["scale"] != scale


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


def fit_new_reconstruction(model: LGUN, sampler: PairSampler, num_batches: int) -> str:
    """Fit REC on ``num_batches`` batches drawn with step numbers training never reaches.

    Returns:
        A note for the lineage (``", REC least-squares fit (28.30 dB RGB on 4 batches)"``).
    """
    batches = [sampler.batch(FIT_STEP + i, FIT_BATCH_SIZE) for i in range(num_batches)]
    fit = fit_reconstruction(model, [(torch.from_numpy(a), torch.from_numpy(b))
                                     for a, b in batches])
    return f", REC least-squares fit ({fit:.2f} dB RGB on {num_batches} batches)"


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
