"""Patch packs: build -> read round trip, size budget, and training from a pack."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lgun.data import Source, build_sampler, load_source_images
from lgun.pack import build_pack, main, random_crops, read_pack


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pack_src")
    rng = np.random.default_rng(0)
    for name, n, size in (("a", 3, (40, 52)), ("b", 2, (48, 48)), ("tiny", 1, (10, 10))):
        (root / name).mkdir()
        for i in range(n):
            img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def _is_crop_of(crop: np.ndarray, images: list[np.ndarray]) -> bool:
    p = crop.shape[0]
    for im in images:
        for y in range(im.shape[0] - p + 1):
            for x in range(im.shape[1] - p + 1):
                if np.array_equal(im[y : y + p, x : x + p], crop):
                    return True
    return False


def test_round_trip(folders: Path, tmp_path: Path) -> None:
    sources = [Source("a", (str(folders / "a"),)), Source("b", (str(folders / "b"), str(
        folders / "tiny")))]
    header = build_pack(tmp_path / "p.zip", sources, patch=24, per_image=2, seed=3)
    pack = read_pack(tmp_path / "p.zip")
    assert header == pack.header and header["patch"] == 24
    assert [s["crops"] for s in header["sources"]] == [6, 4]  # the 10x10 image gives none
    assert len(pack.images) == 10 and pack.sources.count("a") == 6
    originals = {s.name: load_source_images(s) for s in sources}
    for crop, name in zip(pack.images, pack.sources, strict=True):
        assert crop.shape == (24, 24, 3) and crop.dtype == np.uint8
        assert _is_crop_of(crop, originals[name])  # lossless, and from its own source
    only_b = read_pack(tmp_path / "p.zip", source="b")
    assert len(only_b.images) == 4 and set(only_b.sources) == {"b"}
    with pytest.raises(KeyError):
        read_pack(tmp_path / "p.zip", source="c")


def test_budget_is_respected_and_proportional(folders: Path, tmp_path: Path) -> None:
    sources = [Source("a", (str(folders / "a"),)), Source("b", (str(folders / "b"),))]
    full = build_pack(tmp_path / "full.zip", sources, patch=24, per_image=8)
    budget = 64 * 1024 + 64 * 40 + 8 * 1800  # header reserve + ~8 noise crops of ~1.8 KB
    cut = build_pack(tmp_path / "cut.zip", sources, patch=24, per_image=8, max_bytes=budget)
    assert (tmp_path / "cut.zip").stat().st_size <= budget
    n_full, n_cut = len(full["crop_source"]), len(cut["crop_source"])
    assert 0 < n_cut < n_full
    assert all(s["crops"] > 0 for s in cut["sources"])  # interleaved: both sources kept
    with zipfile.ZipFile(tmp_path / "cut.zip") as zf:
        assert zf.testzip() is None


def test_cli_and_training_from_pack(folders: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.zip"
    main([str(out), "--src", f"a={folders / 'a'}", "--src", f"b={folders / 'b'}",
          "--patch", "36", "--per-image", "1"])
    assert "wrote" in capsys.readouterr().out
    sampler = build_sampler([Source("a", (f"{out}#a",), 3.0), Source("all", (str(out),))],
                            3, patch_size=18)
    lr, hr = sampler.batch(0, 4)
    assert lr.shape == (4, 3, 6, 6) and hr.shape == (4, 3, 18, 18)
    assert [len(p) for p in sampler.pools] == [3, 5]


def test_random_crops_skip_small_images() -> None:
    rng = np.random.default_rng(0)
    assert random_crops(np.zeros((10, 10, 3), np.uint8), 12, 3, rng) == []
    assert len(random_crops(np.zeros((12, 20, 3), np.uint8), 12, 3, rng)) == 3
