"""Bad inputs and arguments: one ``geosr: error:`` line, a non-zero exit, nothing written.

Every case builds its inputs in a temporary folder, runs the CLI in-process and checks
that stderr is exactly one ``geosr: error: ...`` line (no traceback, no GDAL or Dask
log line), that the exit status is non-zero, and that no file appeared, changed or
disappeared anywhere in the folder (so nothing at or beside the destination, and the
source unchanged). Models are ``nearest``/``bicubic`` or a tiny LGUN weights file, the
rasters are a few dozen pixels: the whole suite runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from geosr.cli import run
from geosr.testing import make_raster

Case = Callable[[Path], list[str]]
CASES: dict[str, Case] = {}


def case(name: str, *argv: str) -> None:
    """A case whose argv only needs the standard scene (``{t}`` is the folder)."""
    CASES[name] = lambda t: [a.format(t=t) for a in argv]


def builder(name: str) -> Callable[[Case], Case]:
    def deco(fn: Case) -> Case:
        CASES[name] = fn
        return fn
    return deco


def _scene(t: Path) -> Path:
    return make_raster(t / "s.tif", (3, 24, 30), seed=1, gain=250, offset=1, nodata=0)


def _snapshot(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = f"mode:{stat.S_IFMT(st.st_mode)}"
    return out


def _weights(t: Path, name: str = "w", *, config: object = None, raw: bytes | None = None,
             **fields: object) -> Path:
    """A tiny LGUN weights file; ``config`` replaces its config, ``raw`` its tensor bytes
    (with the JSON digest updated to match), ``fields`` other JSON members."""
    import lgun

    path = t / f"{name}.safetensors"
    lgun.save_weights(lgun.LGUN(scale=2, channels=16, num_blocks=2, num_heads=4), path)
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    if raw is not None:
        path.write_bytes(raw)
        meta["sha256"] = hashlib.sha256(raw).hexdigest()
    if config is not None:
        meta["config"] = config
    meta.update(fields)
    meta_path.write_text(json.dumps(meta))
    return path


def _bad_config(**change: object) -> Case:
    def build(t: Path) -> list[str]:
        import lgun

        cfg = lgun.LGUNConfig(scale=2, channels=16, num_blocks=2, num_heads=4)
        doc = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        doc["topk_ratios"] = list(doc["topk_ratios"])
        doc.update(change)
        w = _weights(t, config=doc)
        return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", str(w)]
    return build


def _aoi(doc: object, suffix: str = ".geojson") -> Case:
    def build(t: Path) -> list[str]:
        p = t / f"aoi{suffix}"
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest",
                "--aoi", str(p)]
    return build


UP = ("upscale", "{t}/s.tif", "-o", "{t}/o.tif")
NEAREST = (*UP, "-s", "2", "-m", "nearest")

# --- options ----------------------------------------------------------------------
case("scale-5", *UP, "-s", "5", "-m", "nearest")
case("scale-word", *UP, "-s", "two", "-m", "nearest")
case("scale-missing", *UP, "-m", "nearest")
case("bands-out-of-range", *NEAREST, "-b", "4")
case("bands-zero", *NEAREST, "-b", "0")
case("bands-negative", *NEAREST, "-b", "-1")
case("bands-word", *NEAREST, "-b", "1,x")
case("bands-empty", *NEAREST, "-b", "")
case("bands-comma", *NEAREST, "-b", ",")
case("bands-repeated", *NEAREST, "-b", "1,1")
case("model-unknown", *UP, "-s", "2", "-m", "nope")
case("model-missing-file", *UP, "-s", "2", "-m", "{t}/missing.safetensors")
case("model-unknown-shipped", *UP, "-s", "2", "-m", "lgun-nothing-x2")
case("model-empty", *UP, "-s", "2", "-m", "")
case("model-not-weights", *UP, "-s", "2", "-m", "{t}/s.tif")
case("tile-size-small", *NEAREST, "--tile-size", "8")
case("tile-size-word", *NEAREST, "--tile-size", "abc")
case("overlap-negative", *NEAREST, "--overlap", "-1")
case("overlap-too-large", *NEAREST, "--tile-size", "32", "--overlap", "16")
case("batch-size-zero", *NEAREST, "--batch-size", "0")
case("device-unknown-bicubic", *UP, "-s", "2", "-m", "bicubic", "--device", "foo")
case("device-cuda-word", *UP, "-s", "2", "-m", "nearest", "--device", "cuda:x")
case("consistency-unknown", *NEAREST, "--consistency", "bogus")
case("unknown-flag", *NEAREST, "--bogus")
case("workers-zero", *NEAREST, "--workers", "0")
case("workers-and-scheduler", *NEAREST, "--workers", "1", "--scheduler", "tcp://127.0.0.1:9")
case("scheduler-not-a-url", *NEAREST, "--scheduler", "notaurl")
case("scheduler-bad-port", *NEAREST, "--scheduler", "tcp://127.0.0.1:notaport")
case("dst-nodata-word", *NEAREST, "--dst-nodata", "abc")
case("dst-nodata-out-of-range", *NEAREST, "--dst-nodata", "300")
case("dst-nodata-fraction", *NEAREST, "--dst-nodata", "1.5")
case("range-word", *NEAREST, "--range", "a,b")
case("range-reversed", *NEAREST, "--range", "10,5")
case("range-band-count", *NEAREST, "--range", "0,1;0,2")
case("range-preset-unknown", *NEAREST, "--range", "hubble")
case("range-infinite", *NEAREST, "--range", "0,inf")
case("range-empty", *NEAREST, "--range", "")
case("batch-range-bad", "batch", "{t}/s.tif", "--out-dir", "{t}/out", "-s", "2", "-m",
     "nearest", "--range", "1")
case("info-range-band-count", "info", "{t}/s.tif", "-s", "2", "-m", "nearest", "--range",
     "0,1;0,2")

# --- creation options -----------------------------------------------------------
case("co-no-equals", *NEAREST, "--co", "COMPRESS")
case("co-count", *NEAREST, "--co", "count=1")
case("co-driver", *NEAREST, "--co", "driver=PNG")
case("co-dtype", *NEAREST, "--co", "dtype=complex64")
case("co-nodata", *NEAREST, "--co", "nodata=5")
case("co-crs", *NEAREST, "--co", "crs=EPSG:4326")
case("co-compress-value", *NEAREST, "--co", "COMPRESS=NOPE")
case("co-unknown-key", *NEAREST, "--co", "FOO=BAR")
case("co-blockxsize-word", *NEAREST, "--co", "BLOCKXSIZE=abc")
case("co-blockxsize-odd", *NEAREST, "--co", "TILED=YES", "--co", "BLOCKXSIZE=7")
case("co-predictor", *NEAREST, "--co", "PREDICTOR=9")
case("co-zlevel-range", *NEAREST, "--co", "ZLEVEL=99")
case("co-threads-negative", *NEAREST, "--co", "NUM_THREADS=-1")
case("co-tfw-sidecar", *NEAREST, "--co", "TFW=YES")
case("co-empty-key", *NEAREST, "--co", "=5")
case("co-cog-only-without-cog", *NEAREST, "--co", "BLOCKSIZE=256")
case("cog-blocksize", *NEAREST, "--cog", "--co", "BLOCKSIZE=7")
case("cog-compress-value", *NEAREST, "--cog", "--co", "COMPRESS=NOPE")

# --- sources --------------------------------------------------------------------
case("src-missing-no-output", "upscale", "{t}/nope.tif", "-s", "2", "-m", "nearest")
case("src-missing", "upscale", "{t}/nope.tif", "-o", "{t}/o.tif", "-s", "2", "-m", "nearest")
case("src-directory", "upscale", "{t}", "-o", "{t}/o.tif", "-s", "2", "-m", "nearest")
case("src-vsizip-missing", "upscale", "/vsizip/{t}/none.zip/x.tif", "-o", "{t}/o.tif", "-s",
     "2", "-m", "nearest")


@builder("src-fifo")
def _src_fifo(t: Path) -> list[str]:
    os.mkfifo(t / "fifo.tif")
    return ["upscale", str(t / "fifo.tif"), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest"]


@builder("src-text")
def _src_text(t: Path) -> list[str]:
    (t / "bad.tif").write_text("not a tiff")
    return ["upscale", str(t / "bad.tif"), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest"]


@builder("src-empty")
def _src_empty(t: Path) -> list[str]:
    (t / "empty.tif").write_bytes(b"")
    return ["upscale", str(t / "empty.tif"), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest"]


@builder("src-truncated")
def _src_truncated(t: Path) -> list[str]:
    data = _scene(t).read_bytes()
    (t / "cut.tif").write_bytes(data[: len(data) // 2])
    return ["upscale", str(t / "cut.tif"), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest"]


def _vrt(t: Path, width: int, height: int, source: str) -> Path:
    p = t / "v.vrt"
    p.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        '<GeoTransform>0, 1, 0, 0, 0, -1</GeoTransform>'
        '<VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        '<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')
    return p


@builder("src-vrt-huge")
def _src_vrt_huge(t: Path) -> list[str]:
    v = _vrt(t, 2_000_000, 2_000_000, str(_scene(t)))
    return ["upscale", str(v), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest"]


@builder("tile-size-huge-lgun")
def _tile_huge(t: Path) -> list[str]:
    v = _vrt(t, 40_000, 40_000, str(_scene(t)))
    return ["upscale", str(v), "-o", str(t / "o.tif"), "-s", "2", "-m", str(_weights(t)),
            "--tile-size", "100000"]


@builder("src-vrt-missing-file")
def _src_vrt_missing(t: Path) -> list[str]:
    v = _vrt(t, 30, 24, str(t / "gone.tif"))
    return ["upscale", str(v), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest"]


# --- destinations ---------------------------------------------------------------
case("dst-png", "upscale", "{t}/s.tif", "-o", "{t}/o.png", "-s", "2", "-m", "nearest")
case("dst-no-extension", "upscale", "{t}/s.tif", "-o", "{t}/o", "-s", "2", "-m", "nearest")
case("dst-folder-missing", "upscale", "{t}/s.tif", "-o", "{t}/no/o.tif", "-s", "2", "-m",
     "nearest")
case("dst-is-folder", "upscale", "{t}/s.tif", "-o", "{t}/sub.tif", "-s", "2", "-m", "nearest")
case("dst-is-source", "upscale", "{t}/s.tif", "-o", "{t}/s.tif", "-s", "2", "-m", "nearest",
     "--overwrite")


@builder("dst-exists")
def _dst_exists(t: Path) -> list[str]:
    (t / "o.tif").write_bytes(b"keep me")
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest"]


@builder("dst-dangling-symlink")
def _dst_dangling(t: Path) -> list[str]:
    (t / "o.tif").symlink_to(t / "elsewhere.tif")
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest"]


@builder("dst-exists-workers")
def _dst_exists_workers(t: Path) -> list[str]:
    (t / "o.tif").write_bytes(b"keep me")
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", "nearest",
            "--workers", "2"]


# --- weights --------------------------------------------------------------------
@builder("weights-malformed-digest-ok")
def _weights_malformed(t: Path) -> list[str]:
    w = _weights(t, raw=b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + b"\0" * 64)
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", str(w)]


@builder("weights-digest-mismatch")
def _weights_digest(t: Path) -> list[str]:
    w = _weights(t, sha256="0" * 64)
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", str(w)]


@builder("weights-json-not-json")
def _weights_json_text(t: Path) -> list[str]:
    w = _weights(t)
    w.with_suffix(".json").write_text("{not json")
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", str(w)]


@builder("weights-json-missing")
def _weights_json_missing(t: Path) -> list[str]:
    w = _weights(t)
    w.with_suffix(".json").unlink()
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", str(w)]


@builder("weights-json-array")
def _weights_json_array(t: Path) -> list[str]:
    w = _weights(t)
    w.with_suffix(".json").write_text("[1, 2]")
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", str(w)]


@builder("weights-architecture")
def _weights_arch(t: Path) -> list[str]:
    w = _weights(t, architecture="SRCNN")
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", str(w)]


@builder("weights-scale-mismatch")
def _weights_scale(t: Path) -> list[str]:
    w = _weights(t)
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "4", "-m", str(w)]


@builder("weights-shape-mismatch")
def _weights_shape(t: Path) -> list[str]:
    import lgun

    w = t / "w.safetensors"
    lgun.save_weights(lgun.LGUN(scale=2, channels=16, num_blocks=2, num_heads=4), w)
    meta = json.loads(w.with_suffix(".json").read_text())
    meta["config"]["channels"] = 32
    w.with_suffix(".json").write_text(json.dumps(meta))
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", str(w)]


CASES["config-channels-huge"] = _bad_config(channels=1e9)
CASES["config-channels-negative"] = _bad_config(channels=-64)
CASES["config-heads-zero"] = _bad_config(num_heads=0)
CASES["config-blocks-huge"] = _bad_config(num_blocks=1e9)
CASES["config-scale-string"] = _bad_config(scale="two")
CASES["config-ratios-word"] = _bad_config(topk_ratios="many")


@builder("config-array")
def _config_array(t: Path) -> list[str]:
    w = _weights(t, config=[1, 2, 3])
    return ["upscale", str(_scene(t)), "-o", str(t / "o.tif"), "-s", "2", "-m", str(w)]


# --- areas of interest ----------------------------------------------------------
CASES["aoi-missing"] = lambda t: [*[a.format(t=t) for a in NEAREST], "--aoi", str(t / "no.json")]
CASES["aoi-array"] = _aoi([1, 2, 3])
CASES["aoi-string"] = _aoi("just a string")
CASES["aoi-number"] = _aoi(42)
CASES["aoi-invalid-json"] = _aoi("{oops")
CASES["aoi-nan"] = _aoi('{"type": "Polygon", "coordinates": '
                        '[[[NaN, 0], [1, 0], [1, 1], [0, 1], [NaN, 0]]]}')
CASES["aoi-point"] = _aoi({"type": "Point", "coordinates": [0, 0]})
CASES["aoi-outside"] = _aoi({"type": "Polygon", "coordinates":
                            [[[100, 10], [101, 10], [101, 11], [100, 11], [100, 10]]]})
CASES["aoi-bad-coordinates"] = _aoi({"type": "Polygon", "coordinates": "here"})
CASES["aoi-features-not-list"] = _aoi({"type": "FeatureCollection", "features": 3})
CASES["aoi-huge-coordinates"] = _aoi({"type": "Polygon", "coordinates":
                                     [[[1e308, 0], [1e308, 1], [0, 1], [1e308, 0]]]})
CASES["aoi-unknown-crs"] = _aoi({"type": "Polygon", "crs": {"type": "name", "properties": {
    "name": "EPSG:999999"}}, "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]})


# --- info, qa, batch --------------------------------------------------------------
case("info-model-unknown", "info", "{t}/s.tif", "-s", "2", "-m", "nope")
case("info-model-missing", "info", "{t}/s.tif", "-s", "2", "-m", "{t}/missing.safetensors")
case("info-src-missing", "info", "{t}/nope.tif", "-s", "2", "-m", "nearest")


@builder("info-aoi-array")
def _info_aoi(t: Path) -> list[str]:
    (t / "a.geojson").write_text("[1, 2]")
    return ["info", str(_scene(t)), "-s", "2", "-m", "nearest", "--aoi", str(t / "a.geojson")]


@builder("info-aoi-nan")
def _info_aoi_nan(t: Path) -> list[str]:
    (t / "a.geojson").write_text('{"type": "Polygon", "coordinates": '
                                 '[[[NaN, 0], [1, 0], [1, 1], [NaN, 0]]]}')
    return ["info", str(_scene(t)), "-s", "2", "-m", "nearest", "--aoi", str(t / "a.geojson")]


def _made(t: Path, src: Path, name: str = "made.tif") -> Path:
    dst = t / name
    assert run(["upscale", str(src), "-o", str(dst), "-s", "2", "-m", "nearest", "-q"]) == 0
    return dst


@builder("qa-fewer-source-bands")
def _qa_fewer(t: Path) -> list[str]:
    dst = _made(t, _scene(t))
    one = make_raster(t / "one.tif", (1, 24, 30), seed=1, gain=250, offset=1, nodata=0)
    return ["qa", str(one), str(dst)]


@builder("qa-other-source")
def _qa_other(t: Path) -> list[str]:
    dst = _made(t, _scene(t))
    other = make_raster(t / "other.tif", (3, 24, 30), seed=7, gain=250, offset=1, nodata=0)
    return ["qa", str(other), str(dst)]


@builder("qa-broken-output")
def _qa_broken(t: Path) -> list[str]:
    dst = _made(t, _scene(t))
    data = dst.read_bytes()
    dst.write_bytes(data[: len(data) // 3])
    return ["qa", str(t / "s.tif"), str(dst)]


case("qa-same-file", "qa", "{t}/s.tif", "{t}/s.tif")
case("qa-missing-output", "qa", "{t}/s.tif", "{t}/nope.tif")
case("batch-directory-source", "batch", "{t}", "--out-dir", "{t}/out/o", "-s", "2", "-m",
     "nearest")
case("batch-out-dir-is-file", "batch", "{t}/s.tif", "--out-dir", "{t}/s.tif", "-s", "2",
     "-m", "nearest")
case("batch-no-match", "batch", "{t}/*.nothing", "--out-dir", "{t}/out", "-s", "2", "-m",
     "nearest")
case("batch-co-count", "batch", "{t}/s.tif", "--out-dir", "{t}/out", "-s", "2", "-m", "nearest",
     "--co", "count=1")
case("batch-model-unknown", "batch", "{t}/s.tif", "--out-dir", "{t}/out", "-s", "2", "-m",
     "nope")
case("batch-device-unknown", "batch", "{t}/s.tif", "--out-dir", "{t}/out", "-s", "2", "-m",
     "nearest", "--device", "foo")
case("batch-aoi-array", "batch", "{t}/s.tif", "--out-dir", "{t}/out", "-s", "2", "-m",
     "nearest", "--aoi", "{t}/s.tif")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(name: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    t = tmp_path / "w"
    t.mkdir()
    _scene(t)
    (t / "sub.tif").mkdir()
    argv = CASES[name](t)
    capsys.readouterr()
    before = _snapshot(t)
    rc = run(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, err
    assert len(lines) == 1 and lines[0].startswith("geosr: error: "), err
    assert _snapshot(t) == before


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 60
