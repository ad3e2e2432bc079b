"""Training pairs for LGUN: HR images -> (LR, HR) patches, numpy + pillow only.

Every HR image (a file of an image folder, or one crop of a patch pack, see ``lgun.pack``) is
modcropped to the scale and its LR made once, at load time, with the MATLAB-compatible bicubic
of ``lgun.imresize`` on uint8, exactly as the benchmark LR inputs are made. A training patch is
then an aligned crop of both (as BasicSR's paired datasets), so patch borders see the same LR
pixels as a whole-image evaluation would.

Patch size: the paper crops 64x64 HR patches. The LR patch is ``round(patch_size / scale)``
pixels and the HR patch ``scale`` times that, i.e. 64/32 (x2), 63/21 (x3), 64/16 (x4).

Batches are a pure function of ``(seed, step)`` (a fresh ``numpy`` generator per step), so a
resumed run draws exactly the batches an uninterrupted run would, without saving any RNG state.

Sources (for example "natural" and "aerial") are mixed by ratio: each patch first draws its
source by weight, then an image of that source with probability proportional to its area.

Degradations: by default every LR patch is the benchmark bicubic LR (above). A
``lgun.degrade.DegradationMix`` (``[data] degradation = {...}`` in the training config) makes
each LR patch on the fly from its HR region instead: box, Gaussian PSF then box or bicubic,
optional noise and JPEG. Its random numbers come from a second generator,
``default_rng([seed, step, 1])``, so the crops and augmentations of a step are those of the
default sampler and batches stay a pure function of ``(seed, step)``; the bicubic-only mix
takes the default path and is bit-identical to it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lgun.degrade import DegradationMix
from lgun.imresize import bicubic_downscale
from lgun.packfile import read_pack
from lgun.paths import IMAGE_SUFFIXES, default_data_root

__all__ = [
    "IMAGE_SUFFIXES",
    "PairPool",
    "PairSampler",
    "Source",
    "augment",
    "build_sampler",
    "default_data_root",
    "list_images",
    "load_rgb",
    "load_source_images",
    "lr_patch_size",
]


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted so the order is reproducible."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB (grey and palette images are expanded)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def lr_patch_size(patch_size: int, scale: int) -> int:
    """LR side of a training patch: ``round(patch_size / scale)`` (64 -> 32, 21, 16)."""
    return max(1, round(patch_size / scale))


@dataclass(frozen=True)
class Source:
    """A named pool of HR images, mixed with the others by ``weight``.

    Attributes:
        name: Label used in logs and weight metadata (``natural``, ``aerial``...).
        paths: Image folders, single images or pack files (``pack.zip`` or ``pack.zip#name``
            for the crops of one source of the pack); relative paths are resolved against the
            data root.
        weight: Relative probability that a patch comes from this source.
    """

    name: str
    paths: tuple[str, ...]
    weight: float = 1.0

    def __post_init__(self) -> None:
        paths = (self.paths,) if isinstance(self.paths, str) else tuple(self.paths)
        object.__setattr__(self, "paths", tuple(str(p) for p in paths))
        object.__setattr__(self, "weight", float(self.weight))
        if not self.name:
            raise ValueError("a source needs a name")
        if not self.paths:
            raise ValueError(f"source {self.name!r} has no paths")
        if not self.weight >= 0:
            raise ValueError(f"source {self.name!r}: weight must be >= 0, got {self.weight}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Source:
        """A source from ``{"name", "paths", "weight"}`` (a TOML ``[[data.sources]]`` table).

        Raises:
            ValueError: an unknown key or a bad value.
        """
        unknown = set(d) - {"name", "paths", "weight"}
        if unknown:
            raise ValueError(f"unknown source keys {sorted(unknown)} "
                             "(a source has name, paths, weight)")
        return cls(name=str(d.get("name", "")), paths=d.get("paths", ()),
                   weight=d.get("weight", 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "paths": list(self.paths), "weight": self.weight}


def load_source_images(
    source: Source, data_root: str | os.PathLike[str] | None = None
) -> list[np.ndarray]:
    """All HR images of a source as uint8 ``(H, W, 3)`` arrays."""
    root = Path(data_root) if data_root else default_data_root()
    images: list[np.ndarray] = []
    for spec in source.paths:
        path_str, _, pack_source = spec.partition("#")
        path = Path(path_str)
        if not path.is_absolute() and not path.exists():
            path = root / path
        if path.suffix.lower() == ".zip":
            images.extend(read_pack(path, source=pack_source or None).images)
        elif path.is_dir():
            images.extend(load_rgb(p) for p in list_images(path))
        elif path.is_file():
            images.append(load_rgb(path))
        else:
            raise FileNotFoundError(f"training data not found: {spec} (looked at {path})")
    if not images:
        raise ValueError(f"source {source.name!r} has no images in {source.paths}")
    return images


class PairPool:
    """HR images of one source with their bicubic LR, ready for aligned cropping.

    Args:
        images: uint8 ``(H, W, 3)`` HR images.
        scale: SR factor.
        lr_patch: LR patch side; images too small for one patch are dropped.
    """

    def __init__(self, images: Sequence[np.ndarray], scale: int, lr_patch: int) -> None:
        self.scale = scale
        self.hr: list[np.ndarray] = []
        self.lr: list[np.ndarray] = []
        for im in images:
            if im.shape[0] // scale < lr_patch or im.shape[1] // scale < lr_patch:
                continue
            hr = np.ascontiguousarray(im[: im.shape[0] - im.shape[0] % scale,
                                         : im.shape[1] - im.shape[1] % scale])
            self.hr.append(hr)
            self.lr.append(bicubic_downscale(hr, scale))
        if not self.hr:
            raise ValueError(f"no image is large enough for an LR patch of {lr_patch}")
        area = np.array([x.shape[0] * x.shape[1] for x in self.lr], dtype=np.float64)
        self.p = area / area.sum()

    def __len__(self) -> int:
        return len(self.hr)


def augment(x: np.ndarray, rot: int, flip: bool) -> np.ndarray:
    """Rotate by ``rot`` x 90 degrees, then flip horizontally if ``flip`` (``(H, W, C)``)."""
    x = np.rot90(x, rot, axes=(0, 1))
    return x[:, ::-1] if flip else x


class PairSampler:
    """Draws (LR, HR) training batches from mixed sources, deterministically per step.

    Args:
        pools: One ``PairPool`` per source.
        weights: Mixing ratio of the pools (normalised here).
        patch_size: Nominal HR patch side (see the module docstring for x3).
        augment: Random 0/90/180/270 rotation and horizontal flip.
        seed: Base seed; batch ``step`` uses ``numpy.random.default_rng([seed, step])``.
        degradation: A mixture of LR degradations; ``None`` (or bicubic only, without noise or
            JPEG) keeps the benchmark bicubic LR of the pools.
    """

    def __init__(
        self,
        pools: Sequence[PairPool],
        weights: Sequence[float],
        *,
        patch_size: int = 64,
        augment: bool = True,
        seed: int = 0,
        degradation: DegradationMix | None = None,
    ) -> None:
        if len(pools) != len(weights) or not pools:
            raise ValueError("need one weight per pool and at least one pool")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum: {weights}")
        self.pools = list(pools)
        self.weights = w / w.sum()
        self.scale = pools[0].scale
        self.lr_patch = lr_patch_size(patch_size, self.scale)
        self.hr_patch = self.lr_patch * self.scale
        self.augment = augment
        self.seed = seed
        # The bicubic-only mixture is the default path: no second generator, same bits.
        self.degradation = (None if degradation is None or degradation.is_bicubic_only
                            else degradation)

    def batch(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch of training step ``step``.

        Returns:
            ``(lr, hr)`` float32 arrays in [0, 1], ``(B, 3, p, p)`` and ``(B, 3, sp, sp)``.
        """
        rng = np.random.default_rng([self.seed, step])
        s, p = self.scale, self.lr_patch
        lr_out = np.empty((batch_size, p, p, 3), dtype=np.uint8)
        hr_out = np.empty((batch_size, p * s, p * s, 3), dtype=np.uint8)
        sources = rng.choice(len(self.pools), size=batch_size, p=self.weights)
        mix = self.degradation
        rng_mix = np.random.default_rng([self.seed, step, 1]) if mix is not None else None
        for i, src in enumerate(sources):
            pool = self.pools[src]
            k = rng.choice(len(pool), p=pool.p)
            lr_im, hr_im = pool.lr[k], pool.hr[k]
            y = int(rng.integers(0, lr_im.shape[0] - p + 1))
            x = int(rng.integers(0, lr_im.shape[1] - p + 1))
            lr = lr_im[y : y + p, x : x + p]
            hr = hr_im[y * s : (y + p) * s, x * s : (x + p) * s]
            if mix is not None and rng_mix is not None:
                lr = mix.lr_patch(hr_im, lr_im, y, x, p, s, rng_mix)
            if self.augment:
                rot, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
                lr, hr = augment(lr, rot, flip), augment(hr, rot, flip)
            lr_out[i], hr_out[i] = lr, hr
        # (B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1]
        to_f = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0  # noqa: E731
        return to_f(lr_out), to_f(hr_out)


def build_sampler(
    sources: Sequence[Source],
    scale: int,
    *,
    patch_size: int = 64,
    data_root: str | os.PathLike[str] | None = None,
    augment: bool = True,
    seed: int = 0,
    degradation: DegradationMix | None = None,
) -> PairSampler:
    """Load every source, make its LR once, and return the mixing sampler (``degradation``:
    see ``PairSampler``)."""
    lr_patch = lr_patch_size(patch_size, scale)
    pools = [PairPool(load_source_images(s, data_root), scale, lr_patch) for s in sources]
    return PairSampler(pools, [s.weight for s in sources], patch_size=patch_size,
                       augment=augment, seed=seed, degradation=degradation)
