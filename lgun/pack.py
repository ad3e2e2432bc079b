"""Patch packs: image folders -> one compact file of HR crops for a GPU machine.

A GPU window receives at most 64 MiB, far less than the training folders, so the HR data
travels as one zip of lossless crops; the file format and its reader are in ``lgun.packfile``.
PNG's filters compress natural images ~2x better than plain zlib on raw arrays, and lossless
WebP (the default codec) is 0.69x the size of PNG (measured on 192x192 crops of T91/BSD200),
so about 1.45x as many crops fit in a budget. Every crop is decoded again after encoding and
must give back exactly the same pixels.

The default crop side, 96, is a multiple of 2, 3 and 4 and larger than every training patch
(64, 63, 64 HR), so one pack serves all three scales; the training loader makes the bicubic LR
of each crop (as of any image) with ``lgun.imresize``. Crops of all sources are interleaved in
random order before the size budget is applied, so a budget cut keeps the sources' proportions.

Usage::

    python -m lgun.pack runs/natural.zip --src natural=natural/train/T91 \\
        --src natural=natural/train/BSD200 --patch 96 --per-image 8 --max-mib 40 [--codec png]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lgun.data import Source, load_source_images
from lgun.packfile import CODECS, FORMAT, VERSION, Pack, crop_name, read_pack
from lgun.paths import default_data_root

__all__ = ["CODECS", "FORMAT", "MIB", "VERSION", "Pack", "build_pack", "main",
           "random_crops", "read_pack"]

MIB = 1 << 20

# Lossless WebP effort, measured on 59 192x192 crops of T91/BSD200 on one core: method 4,
# quality 50 is 0.69x PNG (level 9) at ~43 ms a crop; methods 5-6 or quality 100 are 2-150x
# slower for no gain, method 2 is 0.71x at ~17 ms.
WEBP_OPTIONS = {"lossless": True, "quality": 50, "method": 4}


def _encode_crop(crop: np.ndarray, codec: str) -> bytes:
    """Encode an RGB uint8 crop losslessly, checking that it decodes to the same pixels.

    Raises:
        RuntimeError: the decoded crop differs. This is raised rather than falling back to PNG:
            a lossy "lossless" encoder means a broken Pillow/libwebp build, which should be seen
            (``codec="png"`` is the workaround), and a fallback would re-encode the whole pack.
    """
    from PIL import Image

    buf = io.BytesIO()
    if codec == "webp":
        Image.fromarray(crop).save(buf, format="WEBP", **WEBP_OPTIONS)
    else:
        Image.fromarray(crop).save(buf, format="PNG", compress_level=9)
    with Image.open(buf) as im:
        back = np.asarray(im.convert("RGB"))
    if not np.array_equal(back, crop):
        raise RuntimeError(f"a {codec} crop does not decode to the same pixels: this Pillow's "
                           f"{codec} is not lossless, build the pack with another codec")
    return buf.getvalue()


def random_crops(image: np.ndarray, patch: int, n: int, rng: np.random.Generator) -> list:
    """``n`` random ``patch`` x ``patch`` crops of ``image`` (none if it is too small)."""
    h, w = image.shape[:2]
    if h < patch or w < patch:
        return []
    ys = rng.integers(0, h - patch + 1, size=n)
    xs = rng.integers(0, w - patch + 1, size=n)
    return [image[y : y + patch, x : x + patch] for y, x in zip(ys, xs, strict=True)]


def build_pack(
    out: str | os.PathLike[str],
    sources: Sequence[Source],
    *,
    patch: int = 96,
    per_image: int = 8,
    max_bytes: int = 40 * MIB,
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
    codec: str = "webp",
) -> dict:
    """Write a pack of random HR crops of ``sources`` to ``out`` (a .zip), within a budget.

    Args:
        out: Destination file (``.zip``).
        sources: Named image folders (``Source.weight`` is not used here; mix at training).
        patch: Crop side in HR pixels.
        per_image: Crops drawn per image (images smaller than ``patch`` give none).
        max_bytes: Size budget of the whole file; crops beyond it are left out.
        seed: Seed of the crop positions and of the interleaving order.
        data_root: Base of relative source paths.
        codec: Crop encoding, ``"webp"`` (lossless, smaller) or ``"png"``.

    Returns:
        The header written into the pack.

    Raises:
        ValueError: ``out`` is not a .zip, or ``codec`` is unknown.
        RuntimeError: a crop does not decode to the same pixels (see ``_encode_crop``).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown crop codec {codec!r} (one of {', '.join(CODECS)})")
    rng = np.random.default_rng(seed)
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"a pack is a .zip file, got {out}")
    candidates: list[tuple[float, int, np.ndarray]] = []  # (order key, source index, crop)
    info = []
    for j, src in enumerate(sources):
        images = load_source_images(src, data_root or default_data_root())
        crops = [c for im in images for c in random_crops(im, patch, per_image, rng)]
        order = rng.permutation(len(crops))
        # Key (i + u) / n spreads each source evenly over [0, 1): a budget cut is proportional.
        u = rng.random()
        candidates += [((i + u) / len(crops), j, crops[k]) for i, k in enumerate(order)]
        info.append({"name": src.name, "paths": list(src.paths), "images": len(images),
                     "crops": 0})
    candidates.sort(key=lambda t: t[0])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    crop_source: list[int] = []
    reserve = 64 * 1024 + 64 * len(candidates)  # header + zip directory entries
    size = 0
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for _, j, crop in candidates:
                data = _encode_crop(np.ascontiguousarray(crop), codec)
                if size + len(data) + 100 + reserve > max_bytes:
                    break
                zf.writestr(crop_name(len(crop_source), codec), data)
                size += len(data) + 100
                crop_source.append(j)
                info[j]["crops"] += 1
            header = {"format": FORMAT, "version": VERSION, "codec": codec, "patch": patch,
                      "per_image": per_image, "seed": seed, "sources": info,
                      "crop_source": crop_source}
            zf.writestr("header.json", json.dumps(header))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)  # a failed build leaves no partial file behind
    return header


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lgun.pack", description=__doc__.split("\n")[0])
    p.add_argument("out", help="output .zip")
    p.add_argument("--src", action="append", required=True, metavar="NAME=PATH",
                   help="source folder (repeat; the same NAME merges folders); relative "
                        "paths are under $GEOSR_DATA or ../shared/data")
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--per-image", type=int, default=8)
    p.add_argument("--max-mib", type=float, default=40.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None)
    p.add_argument("--codec", choices=CODECS, default="webp",
                   help="crop encoding, both lossless (default webp: smaller)")
    a = p.parse_args(argv)
    paths: dict[str, list[str]] = {}
    for spec in a.src:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        paths.setdefault(name, []).append(path)
    sources = [Source(name=n, paths=tuple(ps)) for n, ps in paths.items()]
    header = build_pack(a.out, sources, patch=a.patch, per_image=a.per_image,
                        max_bytes=int(a.max_mib * MIB), seed=a.seed, data_root=a.data_root,
                        codec=a.codec)
    size = Path(a.out).stat().st_size
    counts = ", ".join(f"{s['name']}: {s['crops']} crops of {s['images']} images"
                       for s in header["sources"])
    print(f"wrote {a.out}: {size / MIB:.1f} MiB, {len(header['crop_source'])} crops "
          f"{a.patch}x{a.patch} {a.codec} ({counts})")


if __name__ == "__main__":
    main()
