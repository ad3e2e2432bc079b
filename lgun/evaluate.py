"""The SR evaluation protocol: benchmark sets, LR generation, PSNR/SSIM, and its CLI.

Protocol (that of EDSR/RCAN/BasicSR tables, which the bicubic rows in RESULTS.md reproduce):

1. HR is read as uint8 (grey files stay single-channel) and modcropped to a multiple of scale.
2. LR = MATLAB ``imresize(HR, 1/scale)`` on uint8 (``lgun.imresize``; for Set5 this is
   bit-identical to the distributed ``LR_bicubic`` files, so the set is generated, not read).
   ``--degradation`` (default ``bicubic``, this protocol) swaps in a sensor-like LR from
   ``lgun.degrade``: ``box`` = mean of each s x s HR block (float, rounded once to uint8);
   ``psf`` = Gaussian blur with sigma = 0.5 s HR pixels (symmetric borders), then ``box``.
   The published tables are all ``bicubic``; the other two measure how a model trained on
   bicubic LR copes with what a camera delivers.
3. SR = model(LR), clipped to [0, 1], times 255, rounded to uint8 (as EDSR's ``quantize`` and
   BasicSR's ``tensor2img``); for ``bicubic``, SR = MATLAB ``imresize(LR, scale)``.
   ``--self-ensemble``: the model's output is the mean over the 8 flips/rotations of LR
   (``lgun.ensemble``), quantised once.
4. PSNR and SSIM with ``scale`` border pixels cropped, on Y (``--protocol y``) or on RGB
   (``--protocol rgb``), see ``lgun.metrics``; the set's score is the mean of per-image scores.

Usage::

    python -m lgun.evaluate --model bicubic --dataset Set5 --scale 4
    python -m lgun.evaluate --model lgun-aid-x4 --dataset aid150 --scale 4 --protocol rgb --json
    python -m lgun.evaluate --model lgun-aid-x4 --dataset rsscn7 --scale 4 --degradation psf
    python -m lgun.evaluate --model lgun-x4 --dataset Set5 --scale 4 --self-ensemble --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from PIL import Image

from lgun.degrade import DEGRADATIONS, degrade
from lgun.device import DeviceError, resolve_device
from lgun.ensemble import ensembled
from lgun.imresize import imresize, modcrop
from lgun.metrics import psnr, rgb_to_grey, ssim
from lgun.paths import IMAGE_SUFFIXES, default_data_root
from lgun.pretrained import WeightsError, load_pretrained

__all__ = [
    "DATASETS",
    "DEGRADATIONS",
    "EvaluationError",
    "PROTOCOLS",
    "default_data_root",
    "evaluate_model",
    "format_table",
    "load_dataset",
    "main",
    "read_image",
]

#: Named evaluation sets, as folders relative to the data root (test splits only).
DATASETS: dict[str, str] = {
    "Set5": "natural/benchmark/Set5/HR",
    "Set14": "natural/benchmark/Set14/HR",
    "B100": "natural/benchmark/B100/HR",
    "aid150": "aerial/aid150/test",
    "rsscn7": "aerial/rsscn7/test",
}
PROTOCOLS = ("y", "rgb")

#: A super-resolver over uint8 images: (h, w[, 3]) LR -> (s*h, s*w[, 3]) SR.
Upscaler = Callable[[np.ndarray], np.ndarray]


class EvaluationError(ValueError):
    """Bad evaluation input: unknown set, missing folder, unreadable image, bad scale."""


def load_dataset(
    dataset: str, data_root: str | os.PathLike[str] | None = None
) -> list[tuple[str, Path]]:
    """The images of an evaluation set, sorted by name.

    Args:
        dataset: A name of ``DATASETS`` (case-insensitive) or a folder of images (searched
            recursively).
        data_root: Root of the shared data; ``default_data_root()`` when None.

    Returns:
        ``(name, path)`` pairs; ``name`` is the path relative to the set folder, without suffix
        (``"baby"``, ``"Airport/airport_12"``).

    Raises:
        EvaluationError: an unknown name that is no folder, a missing set folder, or no images.
    """
    canonical = {k.lower(): k for k in DATASETS}.get(dataset.lower())
    if canonical is not None:
        root = Path(data_root) if data_root is not None else default_data_root()
        folder = root / DATASETS[canonical]
        if not folder.is_dir():
            raise EvaluationError(
                f"dataset {canonical} not found at {folder} "
                "(give --data-root or set $GEOSR_DATA to the shared data folder)"
            )
    else:
        folder = Path(dataset)
        if not folder.is_dir():
            raise EvaluationError(
                f"unknown dataset {dataset!r}: not one of {', '.join(DATASETS)} "
                "nor an existing folder"
            )
    paths = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not paths:
        raise EvaluationError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return [(p.relative_to(folder).with_suffix("").as_posix(), p) for p in paths]


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An 8-bit image as uint8: ``(H, W)`` for grey files, ``(H, W, 3)`` otherwise.

    Grey stays single-channel because the Y protocol scores grey images on their own values
    (``lgun.metrics``); alpha is dropped; palettes are expanded.

    Raises:
        EvaluationError: unreadable file, or a 16-bit/float image (not an 8-bit benchmark).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise EvaluationError(f"{path}: mode {im.mode} is not an 8-bit image")
            grey = im.mode in ("1", "L", "LA")
            return np.asarray(im.convert("L" if grey else "RGB"))
    except OSError as e:
        raise EvaluationError(f"cannot read image {path}: {e}") from e


def _model_scale(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    scale = getattr(config, "scale", None) or getattr(model, "scale", None)
    return int(scale) if isinstance(scale, int) else None


def _torch_upscaler(
    fn: Callable[[torch.Tensor], torch.Tensor], scale: int, device: torch.device
) -> Upscaler:
    """Wrap a tensor function (float32 NCHW in [0, 1]) as a uint8 numpy upscaler."""

    def run(lr: np.ndarray) -> np.ndarray:
        rgb = np.repeat(lr[..., None], 3, axis=2) if lr.ndim == 2 else lr
        # (H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
        x = x.to(device=device, dtype=torch.float32).div_(255)
        with torch.no_grad():
            y = fn(x)
        h, w = rgb.shape[:2]
        expected = (1, 3, h * scale, w * scale)
        if tuple(y.shape) != expected:
            raise EvaluationError(
                f"model output has shape {tuple(y.shape)}, expected {expected} for scale {scale}"
            )
        # Quantise as EDSR/BasicSR: clip, x255, round, uint8. (1, 3, sH, sW) -> (sH, sW, 3)
        y = y.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return y[0].permute(1, 2, 0).cpu().numpy()

    return run


def _make_upscaler(
    model: Any, scale: int, device: torch.device, self_ensemble: bool = False
) -> tuple[str, Upscaler]:
    """``(name, upscaler)`` for ``bicubic``, a weights name/path, a module or a callable."""
    if isinstance(model, str) and model == "bicubic":
        if self_ensemble:
            raise EvaluationError("--self-ensemble needs a model, not bicubic")
        return "bicubic", lambda lr: imresize(lr, scale)
    name = getattr(model, "__name__", type(model).__name__)
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        model = load_pretrained(model, device=device)
    if isinstance(model, torch.nn.Module):
        model_scale = _model_scale(model)
        if model_scale is not None and model_scale != scale:
            raise EvaluationError(f"model {name} is x{model_scale}, asked to evaluate x{scale}")
        model.to(device)
    if callable(model):
        # One image's 8 views per call at most; a square image runs them in one batch.
        fn = ensembled(model) if self_ensemble else model
        return name, _torch_upscaler(fn, scale, device)
    raise EvaluationError(
        f"cannot evaluate {model!r}: not 'bicubic', weights, a module or callable"
    )


def _check_device(device: str | torch.device) -> torch.device:
    try:
        return resolve_device(device)
    except DeviceError as e:
        raise EvaluationError(str(e)) from e


def _score(hr: np.ndarray, sr: np.ndarray, scale: int, protocol: str) -> tuple[float, float]:
    y_only = protocol == "y"
    if hr.ndim == 2 and sr.ndim == 3:
        # A network sees a grey image as replicated RGB: compare on the grey scale for Y, or
        # against the replicated ground truth for RGB.
        if y_only:
            sr = rgb_to_grey(sr)
        else:
            hr = np.repeat(hr[..., None], 3, axis=2)
    return (
        psnr(hr, sr, crop_border=scale, y_only=y_only),
        ssim(hr, sr, crop_border=scale, y_only=y_only),
    )


def evaluate_model(
    model_or_callable: Any,
    dataset: str,
    scale: int,
    *,
    data_root: str | os.PathLike[str] | None = None,
    protocol: str = "y",
    device: str | torch.device = "cpu",
    limit: int | None = None,
    degradation: str = "bicubic",
    self_ensemble: bool = False,
) -> dict[str, Any]:
    """Score a super-resolver on an evaluation set with the benchmark protocol.

    Args:
        model_or_callable: ``"bicubic"``; a shipped weights name or ``.safetensors`` path; an
            ``nn.Module`` (run on ``device`` in eval mode under ``no_grad``; its training mode
            and device are restored afterwards); or a callable with the same contract:
            float32 ``(1, 3, h, w)`` in [0, 1] -> ``(1, 3, scale*h, scale*w)``. Each image runs
            in one pass.
        dataset: A name of ``DATASETS`` or a folder of HR images.
        scale: Integer SR factor (>= 2); also the border cropped before the metrics.
        data_root: Root of the shared data (default: ``default_data_root()``).
        protocol: ``"y"`` (Y channel, the SR literature) or ``"rgb"``.
        device: Torch device for models.
        limit: Evaluate only the first ``limit`` images.
        degradation: How LR is made from HR: ``"bicubic"`` (the benchmark protocol),
            ``"box"`` or ``"psf"`` (``lgun.degrade``; see the module docstring).
        self_ensemble: Score the mean of the model over the 8 flips/rotations of each LR.

    Returns:
        ``{"model", "dataset", "scale", "protocol", "degradation", "self_ensemble",
        "crop_border", "n", "psnr", "ssim", "device", "seconds", "images": [{"name", "height",
        "width", "psnr", "ssim"}, ...]}``
        where ``psnr``/``ssim`` are means over images and height/width are the modcropped HR.

    Raises:
        EvaluationError: bad dataset, scale, protocol, degradation, limit, device or image.
        lgun.WeightsError: weights that cannot be loaded.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise EvaluationError(f"scale must be an integer >= 2, got {scale!r}")
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if degradation not in DEGRADATIONS:
        raise EvaluationError(
            f"degradation must be one of {DEGRADATIONS}, got {degradation!r}"
        )
    if limit is not None and limit < 1:
        raise EvaluationError(f"limit must be >= 1, got {limit}")
    dev = _check_device(device)
    items = load_dataset(dataset, data_root)[:limit]
    # A caller's module (e.g. mid-training) gets its mode and device back afterwards.
    module = model_or_callable if isinstance(model_or_callable, torch.nn.Module) else None
    was_training = module is not None and module.training
    home = next((t.device for t in module.parameters()), None) if module is not None else None
    if module is not None:
        module.eval()
    start = time.perf_counter()
    try:
        name, upscale = _make_upscaler(model_or_callable, scale, dev, self_ensemble)
        rows = []
        for image_name, path in items:
            hr = modcrop(read_image(path), scale)
            if min(hr.shape[:2]) < 2 * scale + 11:  # SSIM's window must fit inside the crop
                raise EvaluationError(f"image {path} is too small for x{scale} evaluation")
            sr = upscale(degrade(hr, scale, degradation))
            p, s = _score(hr, sr, scale, protocol)
            height, width = hr.shape[:2]
            rows.append(
                {"name": image_name, "height": height, "width": width, "psnr": p, "ssim": s}
            )
    finally:
        if module is not None:
            module.train(was_training)
            if home is not None:
                module.to(home)
    return {
        "model": name,
        "dataset": {k.lower(): k for k in DATASETS}.get(dataset.lower(), str(dataset)),
        "scale": scale,
        "protocol": protocol,
        "degradation": degradation,
        "self_ensemble": self_ensemble,
        "crop_border": scale,
        "n": len(rows),
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "device": str(dev),
        "seconds": round(time.perf_counter() - start, 3),
        "images": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of per-image scores and the mean."""
    names = [r["name"] for r in result["images"]]
    width = max([len(n) for n in names] + [len("mean")])
    # The default protocol's header stays as it always was; another degradation is named.
    degradation = result.get("degradation", "bicubic")
    lr = "" if degradation == "bicubic" else f"  LR {degradation}"
    plus = "  self-ensemble" if result.get("self_ensemble") else ""
    lines = [
        f"model {result['model']}{plus}  dataset {result['dataset']}  x{result['scale']}  "
        f"protocol {result['protocol']}{lr}  crop {result['crop_border']}  n {result['n']}",
        f"{'image':<{width}}  {'size':>9}  {'PSNR':>7}  {'SSIM':>6}",
    ]
    for r in result["images"]:
        size = f"{r['height']}x{r['width']}"
        lines.append(f"{r['name']:<{width}}  {size:>9}  {r['psnr']:7.2f}  {r['ssim']:.4f}")
    lines.append(f"{'mean':<{width}}  {'':>9}  {result['psnr']:7.2f}  {result['ssim']:.4f}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m lgun.evaluate",
        description="PSNR/SSIM of a super-resolver on an SR benchmark with the standard protocol.",
    )
    p.add_argument("--model", required=True, help="bicubic, a shipped weights name, or a path")
    p.add_argument(
        "--dataset", required=True, help=f"{', '.join(DATASETS)}, or a folder of HR images"
    )
    p.add_argument("--scale", required=True, type=int, help="integer SR factor (2, 3, 4)")
    p.add_argument("--data-root", type=Path, default=None, help="shared data folder")
    p.add_argument("--protocol", choices=PROTOCOLS, default="y", help="Y channel or RGB")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument(
        "--degradation",
        choices=DEGRADATIONS,
        default="bicubic",
        help="how LR is made from HR: bicubic (MATLAB imresize, the benchmark protocol; "
        "default), box (mean of each s x s block), psf (Gaussian sigma = 0.5 s, then box)",
    )
    p.add_argument("--self-ensemble", action="store_true",
                   help="score the mean over the 8 flips/rotations of each LR image")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        result = evaluate_model(
            args.model,
            args.dataset,
            args.scale,
            data_root=args.data_root,
            protocol=args.protocol,
            device=args.device,
            limit=args.limit,
            degradation=args.degradation,
            self_ensemble=args.self_ensemble,
        )
    except (EvaluationError, WeightsError) as e:
        print(f"python -m lgun.evaluate: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
