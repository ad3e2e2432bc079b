"""What travels to a GPU window, under ``.pack/`` (gitignored, named in the device call's carry).

A GPU machine receives at most 64 MiB, working tree included, and has no shared data. Three
things travel beside the tree (``python -m pipelines.gpu_window prepare`` writes them here):

- ``.pack/benchmark``: Set5/Set14/B100 HR in the data root's layout (lossless WebP where smaller);
- ``.pack/aerial``: a few aerial images per class, JPEG files as they are (no lossless re-encoding
  is smaller), in the data root's layout: the aerial recipe's training folders and a test subset;
- ``.pack/natural.zip``: a patch pack of T91 + BSD200 crops (``lgun.pack``) sized to what is left.

On the GPU machine :func:`materialise` turns the first two into a data root. The smoke run uses
:func:`make_synthetic_data` instead of the shared data.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np

from lgun.pack import MIB
from lgun.paths import IMAGE_SUFFIXES

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / ".pack" / "natural.zip"
BENCH = REPO / ".pack" / "benchmark"  # the data root layout: natural/benchmark/<set>/HR
AERIAL = REPO / ".pack" / "aerial"  # the data root layout: aerial/<set>/<split>/<class>/...
SETS = ("Set5", "Set14", "B100")
TRAVEL_LIMIT = 64 * MIB  # working tree + carried paths, on the way to a GPU machine
TRAVEL_MARGIN = 4 * MIB  # for files that others add before the window
PACK_PATCH = 192  # natural crop side: a multiple of 2, 3 and 4, above every natural HR patch
# Aerial images per class that travel, by data-root folder (evenly spaced in name order). The
# train folders are the sources of pipelines/configs/aerial_sensor.toml (a test checks it); the
# test subset scores aerial candidates on the GPU, the publishing step the whole split here.
# About 4 + 2.6 + 1 MiB: every MiB here is one less for the natural pack.
AERIAL_SUBSETS = {"aerial/aid150/train": 8, "aerial/rsscn7/train": 3, "aerial/aid150/test": 2}

log = logging.getLogger("pipelines.gpu_pack")


def copy_benchmark(src_root: Path, dest: Path) -> Path:
    """Copy Set5/Set14/B100 HR into ``dest`` (the data root's layout). Set5 (validated in
    training) and grey images are copied as they are; other RGB images become lossless WebP
    (~35% smaller than PNG, checked to decode to the same pixels): more room for the pack."""
    from PIL import Image

    from lgun.evaluate import DATASETS, load_dataset

    for ds in SETS:
        folder = dest / DATASETS[ds]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for _, path in load_dataset(ds, src_root):
            with Image.open(path) as im:
                im.load()
            buf = io.BytesIO()
            if ds != "Set5" and im.mode == "RGB":
                im.save(buf, "WEBP", lossless=True, quality=50, method=4)
                with Image.open(buf) as back:
                    if np.array_equal(np.asarray(back.convert("RGB")), np.asarray(im)):
                        (folder / f"{path.stem}.webp").write_bytes(buf.getvalue())
                        continue
            shutil.copyfile(path, folder / path.name)
    return dest


def copy_aerial(src_root: Path, dest: Path, subsets: dict[str, int] | None = None) -> Path:
    """Copy ``subsets`` (folder -> images per class) of ``src_root`` into ``dest``, same layout.

    Raises:
        FileNotFoundError: A folder is missing or has no class folder with images.
    """
    shutil.rmtree(dest, ignore_errors=True)
    for rel, per_class in (AERIAL_SUBSETS if subsets is None else subsets).items():
        classes = sorted(p for p in (src_root / rel).iterdir() if p.is_dir()) if (
            src_root / rel).is_dir() else []
        copied = 0
        for cls in classes:
            files = sorted(p for p in cls.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            picks = {files[i * len(files) // per_class] for i in range(per_class)} if files else {}
            for f in sorted(picks):
                (dest / rel / cls.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest / rel / cls.name / f.name)
                copied += 1
        if not copied:
            raise FileNotFoundError(f"no images in class folders of {src_root / rel}")
    return dest


def materialise(bench: Path, aerial: Path, dest: Path) -> list[str]:
    """Decode the carried sets into a data root at ``dest`` (PNG) and copy the aerial images
    there; returns the benchmark sets present. A set that fails to decode is left out whole
    (logged): no score is of a partial set."""
    from PIL import Image

    from lgun.evaluate import DATASETS

    present = []
    for ds in SETS:
        src, out = bench / DATASETS[ds], dest / DATASETS[ds]
        try:
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.iterdir()):
                if f.suffix != ".webp":
                    shutil.copyfile(f, out / f.name)
                    continue
                with Image.open(f) as im:
                    im.save(out / f"{f.stem}.png", compress_level=1)
            present.append(ds)
        except Exception:
            log.exception("benchmark %s unavailable", ds)
            shutil.rmtree(out, ignore_errors=True)
    if aerial.is_dir():
        shutil.copytree(aerial, dest, dirs_exist_ok=True)
    return present


def travelling_bytes() -> int:
    """Bytes of the working tree that travel: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((REPO / n).stat().st_size for n in set(names) if n and (REPO / n).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prepare(data_root: Path, *, max_mib: float) -> None:
    """Write ``.pack/benchmark``, ``.pack/aerial`` and ``.pack/natural.zip``, the last sized
    to what is left of the travel limit."""
    from lgun.pack import build_pack
    from lgun.training.config import NATURAL_SOURCES

    copy_benchmark(data_root, BENCH)
    copy_aerial(data_root, AERIAL)
    tree, bench, aerial = travelling_bytes(), folder_bytes(BENCH), folder_bytes(AERIAL)
    budget = int(min(max_mib * MIB, TRAVEL_LIMIT - TRAVEL_MARGIN - tree - bench - aerial))
    header = build_pack(PACK, NATURAL_SOURCES, patch=PACK_PATCH, per_image=2,
                        max_bytes=budget, data_root=data_root)
    pack = PACK.stat().st_size
    print(f"tree {tree / MIB:.1f} MiB + benchmark {bench / MIB:.1f} MiB + aerial "
          f"{aerial / MIB:.1f} MiB + pack {pack / MIB:.1f} MiB ({len(header['crop_source'])} "
          f"crops {PACK_PATCH}x{PACK_PATCH}) = {(tree + bench + aerial + pack) / MIB:.1f} MiB "
          f"of {TRAVEL_LIMIT // MIB}")


def make_synthetic_data(root: Path) -> Path:
    """A tiny data root of random blocks with softened edges (natural training folder, the three
    sets, and two classes of every aerial folder), on which a trained LGUN beats bicubic."""
    from PIL import Image, ImageFilter

    from lgun.evaluate import DATASETS

    rng = np.random.default_rng(0)
    files = [(f"natural/train/T91/t{i}.png", 96, 120, False) for i in range(4)] + [
        (f"{DATASETS[ds]}/{i}.png", 48, 60, ds == "Set14" and i == 1)  # one grey image
        for ds in SETS for i in range(2)] + [
        (f"{rel}/c{c}/a{i}.jpg", 72, 72, False) for rel in AERIAL_SUBSETS for c in range(2)
        for i in range(2)]
    for name, h, w, grey in files:
        small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.NEAREST)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        im = im.filter(ImageFilter.GaussianBlur(0.8)).convert("L" if grey else "RGB")
        im.save(root / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    return root
