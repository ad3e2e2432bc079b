"""LGUN speed on this machine: model-only modes, peer networks, end-to-end vs gdalwarp.

    python -m pipelines.bench_model [--runs 4:256:2,2:256:2,4:256:1] [--repeat 2]
                                    [--modes reference,channels_last,optimized,...]
                                    [--profile MODES] [--peers [--peer-list swinir-light,safmn]]
                                    [--e2e [--e2e-size 384]] [--json FILE]

Every measurement runs in a fresh child process (clean allocator state, its own thread
count), so one invocation prints one consistent report. Sections:

* machine: CPU model, cores, memory, load average, torch version, GPU (or a line saying
  there is none), and a dense fp32 2048^2 matmul GFLOP/s per thread count: the ceiling.
* LGUN model-only, per run ``SCALE:LR_SIDE:THREADS`` (one 1 x 3 x side x side input), in modes
  - ``reference``: plain ``nn.Conv2d`` kernels (1x1 convs by im2col, oneDNN's dilated
    depthwise kernel): the naive eager baseline;
  - ``channels_last``: ``LGUN``'s default forward (channels_last, 1x1 convs as NHWC
    matmuls, dilated convs by space-to-batch);
  - ``optimized``: ``lgun.fast.optimize_for_inference``;
  - ``optimized+malloc``: the same after ``lgun.fast.tune_malloc()``;
  - ``compile``: ``torch.compile`` of the default model (first run only: compiling takes
    minutes on a small CPU; the first call's time is printed as ``first s``);
  - ``onnxruntime`` (not in the default list; needs ``onnxruntime`` and ``onnxscript``): the
    reference model exported by ``torch.onnx.export(dynamo=True)``, run by ONNX Runtime;
  - ``bf16``/``fp16``: autocast of the default model, CUDA only (skipped on CPU with a line).
  Seconds per pass are the median of ``--repeat`` calls after one warm-up call. Output
  MPix/s = output pixels / s. GFLOP/s = 2 FLOP per Multi-Add (MAC = 2 FLOP) of
  ``lgun.complexity`` / s. ``max|diff|`` is against ``reference`` on the same input.
* ``--peers``: peer SR networks from spandrel (random weights: speed does not depend on
  them) on the first run's input, scale and threads, eager with both allocator settings,
  as ratios to LGUN. spandrel needs torchvision, which does not import beside this
  project's torch pin: run the whole command from the venv described in BENCHMARKS.md so
  that every model, LGUN included, is timed in one environment.
* ``--e2e``: a crop of a real scene (``../shared/data/geotiff/titiler/TCI.tif``) through
  ``geosr upscale`` (the CLI as shipped), through ``geosr.upscale`` with the optimized model
  and the tuned allocator, and through ``gdalwarp -r cubic|lanczos`` onto the same output
  grid; each is a child process: wall time, output MPix/s, peak RSS (``wait4`` rusage).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.bench_child import PEERS

LGUN_MODES = ("reference", "channels_last", "optimized", "optimized+malloc", "compile",
              "onnxruntime", "bf16", "fp16")
DEFAULT_MODES = "reference,channels_last,optimized,optimized+malloc,compile,bf16,fp16"


# ---------------------------------------------------------------------------- parent side


def _run_child(spec: dict[str, Any], threads: int) -> dict[str, Any] | str:
    """One measurement in a fresh interpreter; returns its JSON or an error line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "pipelines.bench_child", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {res.returncode}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def _timed_process(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall time, exit status and peak RSS (MiB) of one child process."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                cwd=Path(__file__).resolve().parents[1])
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    # ru_maxrss of a child counts its image before exec too: this parent stays small
    # (no torch or rasterio imported) so that is a few MiB.
    return {"seconds": wall, "rc": proc.returncode, "peak_rss_mib": usage.ru_maxrss / 1024,
            "stderr": text}


def _machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    mem_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(),
            "memory_gib": round(mem_gib, 1) if mem_gib else None,
            "load_avg": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "executable": sys.executable}


def _parse_runs(text: str) -> list[tuple[int, int, int]]:
    try:
        runs = [tuple(int(v) for v in item.split(":")) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected SCALE:SIZE:THREADS,..., got {text!r}") from None
    if not runs or any(len(r) != 3 or r[0] not in (2, 3, 4) or min(r) < 1 for r in runs):
        raise argparse.ArgumentTypeError(f"expected SCALE:SIZE:THREADS,..., got {text!r}")
    return runs  # type: ignore[return-value]


def bench_models(args: argparse.Namespace, tmp: Path, ceilings: dict[int, float],
                 gpu: bool) -> list[dict[str, Any]]:
    rows = []
    modes = [m for m in args.modes.split(",") if m]
    print(f"\n## LGUN model-only ({args.device}, median of {args.repeat} after a warm-up call; "
          "MAC = 2 FLOP)")
    print(f"{'scale':>5} {'LR':>5} {'thr':>3} {'mode':<17} {'first s':>8} {'s/pass':>8} "
          f"{'MPix/s':>7} {'GFLOP/s':>8} {'%peak':>6} {'speedup':>8} {'max|diff|':>10}")
    for i, (scale, size, threads) in enumerate(args.runs):
        ref_path = tmp / f"ref_{scale}_{size}.pt"
        ref_secs = None
        for mode in modes:
            if mode in ("bf16", "fp16") and not gpu:
                if i == 0:
                    print(f"{'':>15} {mode:<17} skipped: CUDA only (no GPU on this machine)")
                continue
            if mode == "compile" and i > 0:
                continue
            spec = {"kind": "model", "model": "lgun", "mode": mode, "scale": scale,
                    "size": size, "threads": threads, "repeat": args.repeat,
                    "device": args.device,
                    "save": str(ref_path) if mode == "reference" else None,
                    "compare": str(ref_path), "profile": i == 0 and mode in args.profile}
            r = _run_child(spec, threads)
            if isinstance(r, str):
                print(f"{scale:>5} {size:>5} {threads:>3} {mode:<17} failed: {r}")
                continue
            secs = r["seconds"]
            if mode == "reference":
                ref_secs = secs
            out_mpix = (size * scale) ** 2 / 1e6
            gflops = 2 * r["multi_adds"] / secs / 1e9
            ceil = ceilings.get(threads)
            row = {"scale": scale, "lr": size, "threads": threads, "mode": mode,
                   "first_s": r["first_s"], "seconds": secs, "out_mpix_per_s": out_mpix / secs,
                   "gflops": gflops, "pct_of_matmul": 100 * gflops / ceil if ceil else None,
                   "speedup_vs_reference": ref_secs / secs if ref_secs else None,
                   "max_abs_diff": r["max_abs_diff"], "weights": r["weights"],
                   "multi_adds_g": r["multi_adds"] / 1e9, "profile": r["profile"]}
            rows.append(row)
            d = r["max_abs_diff"]
            print(f"{scale:>5} {size:>5} {threads:>3} {mode:<17} {r['first_s']:>8.2f} "
                  f"{secs:>8.3f} {row['out_mpix_per_s']:>7.3f} {gflops:>8.1f} "
                  f"{row['pct_of_matmul'] or 0:>6.1f} {row['speedup_vs_reference'] or 0:>8.2f} "
                  f"{'n/a' if d is None else f'{d:.1e}':>10}", flush=True)
    for row in rows:
        if row["profile"]:
            print(f"profile of one pass, {row['mode']} (x{row['scale']}, {row['lr']}px, "
                  f"{row['threads']} threads), top ops by self CPU time: " + "; ".join(
                      f"{name} {pct}% ({n} calls)" for name, pct, n in row["profile"]))
    if rows:
        print(f"(LGUN weights: {rows[0]['weights']}; Multi-Adds per pass: "
              + ", ".join(sorted({f"x{r['scale']} {r['lr']}px {r['multi_adds_g']:.2f} G"
                                  for r in rows})) + ")")
    return rows


def bench_peers(args: argparse.Namespace, lgun_rows: list[dict[str, Any]]) -> list[dict]:
    scale, size, threads = args.runs[0]
    print(f"\n## Peers at x{scale}, {size}x{size} input, {threads} threads (spandrel, random "
          "weights), eager")
    try:
        import spandrel  # noqa: F401
    except ImportError:
        print("spandrel is not installed in this environment: run this command with the peer "
              "venv's python (see BENCHMARKS.md); peers skipped")
        return []
    lg = {r["mode"]: r["seconds"] for r in lgun_rows
          if (r["scale"], r["lr"], r["threads"]) == (scale, size, threads)}
    print(f"{'model':<26} {'params K':>8} {'s/pass':>8} {'MPix/s':>7} "
          f"{'/LGUN ref':>9} {'/LGUN opt+malloc':>16}")
    out = []
    for name in [p for p in args.peer_list.split(",") if p]:
        if name not in PEERS:
            print(f"{name}: unknown peer (known: {', '.join(PEERS)})")
            continue
        for mode in ("eager", "eager+malloc"):
            spec = {"kind": "model", "model": name, "mode": mode, "scale": scale, "size": size,
                    "threads": threads, "repeat": args.repeat, "device": args.device}
            r = _run_child(spec, threads)
            label = f"{name} {mode}"
            if isinstance(r, str):
                print(f"{label:<26} failed: {r}")
                continue
            secs = r["seconds"]
            rec = {"model": name, "mode": mode, "params": r["params"], "seconds": secs,
                   "out_mpix_per_s": (size * scale) ** 2 / 1e6 / secs,
                   "ratio_vs_lgun_reference": secs / lg["reference"] if "reference" in lg
                   else None,
                   "ratio_vs_lgun_optimized_malloc": secs / lg["optimized+malloc"]
                   if "optimized+malloc" in lg else None}
            out.append(rec)
            print(f"{label:<26} {r['params'] / 1e3:>8.0f} {secs:>8.3f} "
                  f"{rec['out_mpix_per_s']:>7.3f} {rec['ratio_vs_lgun_reference'] or 0:>9.2f} "
                  f"{rec['ratio_vs_lgun_optimized_malloc'] or 0:>16.2f}", flush=True)
    print("(ratio = peer s/pass / LGUN s/pass: > 1 means LGUN is faster)")
    return out


def bench_e2e(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    scale, _, threads = args.runs[0]
    src = tmp / "lr.tif"
    crop = _run_child({"kind": "crop", "size": args.e2e_size, "dst": str(src)}, threads)
    if isinstance(crop, str) or "error" in crop:
        err = crop if isinstance(crop, str) else crop["error"]
        print(f"\n## End-to-end: cannot cut the scene: {err}; skipped")
        return []
    file, h, w = crop["file"], crop["h"], crop["w"]
    xres, yres = crop["xres"], crop["yres"]
    out_mpix = h * w * scale**2 / 1e6
    print(f"\n## End-to-end x{scale}: {file} crop {w}x{h} uint8 RGB -> {w * scale}x{h * scale} "
          f"({out_mpix:.2f} MPix), {threads} threads, wall time of the whole process")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    weights = f"lgun-x{scale}"
    gdal = shutil.which("gdalwarp")
    jobs: list[tuple[str, list[str] | None]] = [
        (f"geosr upscale -m {weights} (CLI)",
         [sys.executable, "-m", "geosr.cli", "upscale", str(src), "-o", str(tmp / "a.tif"),
          "-s", str(scale), "-m", weights, "--overwrite", "--no-progress"]),
        ("geosr.upscale + lgun.fast",
         [sys.executable, "-m", "pipelines.bench_child", json.dumps(
             {"kind": "e2e", "src": str(src), "dst": str(tmp / "b.tif"), "scale": scale,
              "threads": threads})]),
        ("geosr upscale -m bicubic (CLI)",
         [sys.executable, "-m", "geosr.cli", "upscale", str(src), "-o", str(tmp / "c.tif"),
          "-s", str(scale), "-m", "bicubic", "--overwrite", "--no-progress"]),
    ]
    for method in ("cubic", "lanczos"):
        jobs.append((f"gdalwarp -r {method}", None if gdal is None else [
            gdal, "-q", "-overwrite", "-r", method, "-tr", repr(xres / scale), repr(yres / scale),
            "-wo", f"NUM_THREADS={threads}", str(src), str(tmp / f"g_{method}.tif")]))
    print(f"{'method':<34} {'seconds':>8} {'MPix/s':>7} {'peak RSS MiB':>13}")
    rows = []
    for label, cmd in jobs:
        if cmd is None:
            print(f"{label:<34} skipped: gdalwarp not on PATH")
            continue
        r = _timed_process(cmd, env)
        if r["rc"] != 0:
            err = (r["stderr"].strip().splitlines() or ["?"])[-1]
            print(f"{label:<34} failed (exit {r['rc']}): {err}")
            continue
        rec = {"method": label, "seconds": r["seconds"], "out_mpix": out_mpix,
               "out_mpix_per_s": out_mpix / r["seconds"], "peak_rss_mib": r["peak_rss_mib"]}
        rows.append(rec)
        print(f"{label:<34} {r['seconds']:>8.2f} {rec['out_mpix_per_s']:>7.3f} "
              f"{r['peak_rss_mib']:>13.0f}", flush=True)
    return rows


def _targets(rows: list[dict[str, Any]], peers: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, met or missed, from this run's numbers."""
    lines = []
    x4 = [r for r in rows if r["scale"] == 4 and r["lr"] == 256]
    for threads in sorted({r["threads"] for r in x4}, reverse=True):
        sel = {r["mode"]: r for r in x4 if r["threads"] == threads}
        best = min((r for r in sel.values() if r["mode"].startswith("optimized")),
                   key=lambda r: r["seconds"], default=None)
        if best is None:
            continue
        line = f"x4 256px, {threads} threads: {best['mode']} {best['seconds']:.2f} s/pass"
        if "reference" in sel:
            sp = sel["reference"]["seconds"] / best["seconds"]
            line += (f" = {sp:.2f}x the naive eager reference measured here "
                     f"({sel['reference']['seconds']:.2f} s): target >= 3x "
                     f"{'MET' if sp >= 3 else 'MISSED'}")
        d = best["max_abs_diff"]
        if d is not None:
            line += f"; max|diff| {d:.1e} (target <= 1e-4: {'MET' if d <= 1e-4 else 'MISSED'})"
        lines.append(line)
    for p in peers:
        if p["model"] == "swinir-light" and p["mode"] == "eager+malloc":
            ratio = p["ratio_vs_lgun_optimized_malloc"]
            if ratio:
                lines.append(f"SwinIR-light / LGUN (both with the tuned allocator): "
                             f"{ratio:.2f}x: target >= 1.5x {'MET' if ratio >= 1.5 else 'MISSED'}")
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m pipelines.bench_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=_parse_runs, default=_parse_runs("4:256:2,2:256:2,4:256:1"),
                   help="SCALE:LR_SIDE:THREADS items, comma-separated (the first one also "
                        "sets peers, e2e and compile)")
    p.add_argument("--repeat", type=int, default=2, help="timed calls per measurement")
    p.add_argument("--modes", default=DEFAULT_MODES, help=f"subset of {','.join(LGUN_MODES)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--profile", default="", help="modes to profile (torch.profiler, one "
                   "extra pass on the first run), comma-separated")
    p.add_argument("--peers", action="store_true", help="time peer networks (needs spandrel)")
    p.add_argument("--peer-list", default="swinir-light,safmn")
    p.add_argument("--e2e", action="store_true", help="end-to-end geosr vs gdalwarp")
    p.add_argument("--e2e-size", type=int, default=384, help="LR crop side for --e2e")
    p.add_argument("--json", dest="json_out", default=None, help="also write results here")
    args = p.parse_args(argv)
    args.profile = [m for m in args.profile.split(",") if m]
    bad = (set(args.modes.split(",")) | set(args.profile)) - set(LGUN_MODES)
    if bad or args.repeat < 1:
        p.error(f"unknown modes {sorted(bad)}" if bad else "--repeat must be >= 1")

    machine = _machine_info()
    print("# LGUN benchmark")
    print(f"machine: {machine['cpu']} ({machine['arch']}), {machine['cores']} cores, "
          f"{machine['memory_gib']} GiB; load average {machine['load_avg']}")
    ceilings: dict[int, float] = {}
    info: dict[str, Any] = {}
    for threads in sorted({t for _, _, t in args.runs}):
        r = _run_child({"kind": "machine", "threads": threads, "device": args.device}, threads)
        if isinstance(r, str):
            sys.exit(f"bench_model: cannot run torch: {r}")
        info = r
        ceilings[threads] = r["matmul_gflops"]
    print(f"python {machine['python']} ({machine['executable']}), torch {info['torch']}, "
          f"oneDNN {'on' if info['mkldnn'] else 'off'}")
    print("GPU: " + (info["gpu"] or "not available on this machine"))
    print("dense fp32 2048x2048 matmul ceiling: "
          + ", ".join(f"{v:.1f} GFLOP/s @ {t} thread{'s' * (t > 1)}"
                      for t, v in sorted(ceilings.items())))
    with tempfile.TemporaryDirectory(prefix="geosr-bench-") as tmp_name:
        tmp = Path(tmp_name)
        rows = bench_models(args, tmp, ceilings, gpu=info["gpu"] is not None)
        peers = bench_peers(args, rows) if args.peers else []
        e2e = bench_e2e(args, tmp) if args.e2e else []
    print("\n## Targets")
    for line in _targets(rows, peers) or ["(not measured in this run)"]:
        print(line)
    machine["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(f"load average at the end: {machine['load_avg_end']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"machine": {**machine, **info, "matmul_gflops": ceilings}, "lgun": rows,
             "peers": peers, "e2e": e2e}, indent=2))


if __name__ == "__main__":
    main()
