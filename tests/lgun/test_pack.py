"""Patch packs: build -> read round trip (both codecs, version 1), size budget, training."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lgun.data import Source, build_sampler, load_source_images
from lgun.pack import build_pack, main, random_crops, read_pack
from lgun.packfile import crop_name


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pack_src")
    rng = np.random.default_rng(0)
    for name, n, size in (("a", 3, (40, 52)), ("b", 2, (48, 48)), ("tiny", 1, (10, 10))):
        (root / name).mkdir()
        for i in range(n):
            img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    # Smooth content (what WebP is for), and a grey image (loaded as RGB with R = G = B).
    (root / "smooth").mkdir()
    yy, xx = np.mgrid[0:44, 0:50]
    smooth = np.stack([xx * 5, yy * 5, (xx + yy) * 2], axis=-1) + rng.integers(0, 3, (44, 50, 3))
    Image.fromarray(smooth.astype(np.uint8)).save(root / "smooth" / "0.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(
        root / "smooth" / "grey.png")
    return root


def _is_crop_of(crop: np.ndarray, images: list[np.ndarray]) -> bool:
    p = crop.shape[0]
    for im in images:
        for y in range(im.shape[0] - p + 1):
            for x in range(im.shape[1] - p + 1):
                if np.array_equal(im[y : y + p, x : x + p], crop):
                    return True
    return False


@pytest.mark.parametrize("codec", ["webp", "png"])
def test_round_trip(folders: Path, tmp_path: Path, codec: str) -> None:
    sources = [Source("a", (str(folders / "a"),)), Source("b", (str(folders / "b"), str(
        folders / "tiny")))]
    header = build_pack(tmp_path / "p.zip", sources, patch=24, per_image=2, seed=3,
                        codec=codec)
    pack = read_pack(tmp_path / "p.zip")
    assert header == pack.header and header["patch"] == 24
    assert header["version"] == 2 and header["codec"] == codec
    with zipfile.ZipFile(tmp_path / "p.zip") as zf:
        assert sorted(zf.namelist())[:2] == [crop_name(0, codec), crop_name(1, codec)]
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


@pytest.mark.parametrize("codec", ["webp", "png"])
def test_crops_are_exactly_the_source_pixels(folders: Path, tmp_path: Path,
                                             codec: str) -> None:
    source = Source("s", (str(folders / "smooth"),))
    # The crops build_pack draws: same seed, same generator calls, before any interleaving.
    rng = np.random.default_rng(5)
    expected = [c for im in load_source_images(source) for c in random_crops(im, 32, 3, rng)]
    build_pack(tmp_path / "s.zip", [source], patch=32, per_image=3, seed=5, codec=codec)
    got = read_pack(tmp_path / "s.zip").images
    assert len(got) == len(expected) == 6
    remaining = [e.tobytes() for e in expected]
    for crop in got:  # the same multiset of crops, bit for bit (the order is shuffled)
        assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
        remaining.remove(crop.tobytes())
    assert any(np.array_equal(c[..., 0], c[..., 1]) for c in got)  # the grey image's crops


def test_webp_is_smaller_on_smooth_content(folders: Path, tmp_path: Path) -> None:
    source = [Source("s", (str(folders / "smooth"),))]
    sizes = {}
    for codec in ("png", "webp"):
        build_pack(tmp_path / f"{codec}.zip", source, patch=32, per_image=3, codec=codec)
        with zipfile.ZipFile(tmp_path / f"{codec}.zip") as zf:
            sizes[codec] = sum(i.file_size for i in zf.infolist() if i.filename != "header.json")
    assert sizes["webp"] < sizes["png"]


def _write_pack(path: Path, header: dict, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("header.json", json.dumps(header))


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_version_1_pack_is_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    header = {"format": "lgun-pack", "version": 1, "patch": 16, "per_image": 1, "seed": 0,
              "sources": [{"name": "x", "paths": ["x"], "images": 2, "crops": 2},
                          {"name": "y", "paths": ["y"], "images": 1, "crops": 1}],
              "crop_source": [0, 1, 0]}
    _write_pack(tmp_path / "v1.zip", header,
                {f"crops/{i:06d}.png": _png(c) for i, c in enumerate(crops)})
    pack = read_pack(tmp_path / "v1.zip")
    assert pack.header == header and pack.sources == ["x", "y", "x"]
    assert all(np.array_equal(a, b) for a, b in zip(pack.images, crops, strict=True))
    assert len(read_pack(tmp_path / "v1.zip", source="x").images) == 2


@pytest.mark.parametrize("change", [{"codec": "jpeg"}, {"version": 1, "codec": "webp"},
                                    {"version": 3}, {"format": "other"}, {"codec": None}])
def test_unreadable_header_raises(tmp_path: Path, change: dict) -> None:
    header = {"format": "lgun-pack", "version": 2, "codec": "png", "patch": 16,
              "sources": [{"name": "x"}], "crop_source": [0]}
    members = {"crops/000000.png": _png(np.zeros((16, 16, 3), np.uint8))}
    _write_pack(tmp_path / "ok.zip", header, members)
    assert len(read_pack(tmp_path / "ok.zip").images) == 1
    _write_pack(tmp_path / "bad.zip", {**header, **change}, members)
    with pytest.raises(ValueError, match=r"bad\.zip is not a readable lgun-pack file"):
        read_pack(tmp_path / "bad.zip")


def test_zip_without_header_raises(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        zf.writestr("a.txt", "not a pack")
    with pytest.raises(ValueError, match="not a readable lgun-pack file"):
        read_pack(tmp_path / "plain.zip")


def test_unknown_codec_is_rejected(folders: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown crop codec 'jpeg'"):
        build_pack(tmp_path / "p.zip", [Source("a", (str(folders / "a"),))], codec="jpeg")
    assert not (tmp_path / "p.zip").exists()
    with pytest.raises(ValueError, match="unknown crop codec"):
        crop_name(0, "jpeg")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "p.zip"), "--src", str(folders / "a"), "--codec", "jpeg"])


def test_lossy_encoding_is_caught(folders: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lgun.pack.WEBP_OPTIONS", {"lossless": False, "quality": 20})
    with pytest.raises(RuntimeError, match="does not decode to the same pixels"):
        build_pack(tmp_path / "p.zip", [Source("a", (str(folders / "a"),))], patch=24)
    assert list(tmp_path.iterdir()) == []  # no partial pack left behind


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
          "--patch", "36", "--per-image", "1", "--codec", "png"])
    assert "wrote" in capsys.readouterr().out
    assert read_pack(out).header["codec"] == "png"
    sampler = build_sampler([Source("a", (f"{out}#a",), 3.0), Source("all", (str(out),))],
                            3, patch_size=18)
    lr, hr = sampler.batch(0, 4)
    assert lr.shape == (4, 3, 6, 6) and hr.shape == (4, 3, 18, 18)
    assert [len(p) for p in sampler.pools] == [3, 5]


def test_random_crops_skip_small_images() -> None:
    rng = np.random.default_rng(0)
    assert random_crops(np.zeros((10, 10, 3), np.uint8), 12, 3, rng) == []
    assert len(random_crops(np.zeros((12, 20, 3), np.uint8), 12, 3, rng)) == 3
