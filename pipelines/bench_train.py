"""LGUN CPU training step: the eager reference against ``lgun.fast_train``, in one run.

    python -m pipelines.bench_train --scale 2 [--threads 1] [--steps 5] [--rounds 2] [--bf16]
                                    [--json FILE]

One batch of the training recipe (16 HR patches of 64 x 64, 63 x 63 at x3; LR inputs of
HR / scale), random weights and data (speed does not depend on them). A *step* is what
``lgun.train`` does per batch: forward, ``F.l1_loss``, backward, ``torch.optim.AdamW.step``.

* ``reference``: the eager ``LGUN`` of ``lgun/model.py`` as the training loop runs it;
* ``optimised``: the same weights after ``lgun.fast_train.optimize_for_training``, stepped
  by the optimiser ``lgun.train`` makes (``lgun.training.optim.make_optimizer``: torch's fused
  AdamW kernel instead of the default per-parameter loop; the same update up to fp32 rounding,
  tested in ``tests/lgun/test_train.py``).

The allocator setting (``lgun.fast.tune_malloc``, part of ``training_setup``) is
process-wide and cannot be undone, so the run has two phases: first with glibc's default
allocator, then after ``tune_malloc()``. Within a phase the reference and optimised steps
alternate (the machine is shared and noisy), each timed ``--steps`` times after one warm-up
step; the table gives medians of wall time and of this process's CPU time (on a machine
shared with other jobs, CPU time is the steadier measure of what a step costs; wall time is
what training sees). ``speedup`` compares a step to the reference of the same phase.

``end to end`` compares, in fresh processes that alternate ``--rounds`` times (so the
allocator is each one's own and the load's drift falls on both), the reference step with
glibc's default allocator (what training was) to what ``pipelines.train`` runs on the CPU
now: ``training_setup`` (threads, allocator) + ``optimize_for_training`` + its optimiser.

Between steps, a GEMM of the 1x1 convs' shape ((B*h*w) x 64 @ 64 x 160, the better of
``torch.mm`` and oneDNN's matmul) measures the fp32 ceiling on the same threads;
``GFLOP/s`` counts a training step as 3 forward passes (2 FLOPs per Multi-Add of
``lgun.complexity``), on CPU time like the ceiling.

``grad rel diff``: per parameter max|g_opt - g_ref| / max|g_ref| on the same batch and
weights, the max over parameters (with its parameter). ``--bf16`` adds the optimised step
under bf16 autocast where the CPU has native bf16 (``avx512_bf16``/``amx_bf16``); elsewhere
it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _grad_diff(ref: Any, opt: Any, x: Any, y: Any, autocast: bool = False) -> tuple[float, str]:
    """Max over parameters of max|g_opt - g_ref| / max|g_ref| for one batch; and its name."""
    import torch
    import torch.nn.functional as F

    for m, ac in ((ref, False), (opt, autocast)):
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
            F.l1_loss(m(x).float(), y).backward()
    worst, name = 0.0, ""
    for (n, p_ref), p_opt in zip(ref.named_parameters(), opt.parameters(), strict=True):
        scale = p_ref.grad.abs().max().item()
        d = (p_opt.grad - p_ref.grad).abs().max().item() / (scale if scale > 0 else 1.0)
        if d >= worst:
            worst, name = d, n
    ref.zero_grad(set_to_none=True)
    opt.zero_grad(set_to_none=True)
    return worst, name


def _train_step(model: Any, x: Any, y: Any, autocast: bool = False,
                optimised: bool = True) -> Callable[[], None]:
    """One recipe step (forward, L1, backward, AdamW) of ``model`` on a fixed batch.

    ``optimised``: the optimiser ``lgun.train`` makes (``make_optimizer``: torch's fused
    AdamW kernel); otherwise ``torch.optim.AdamW``'s default, a Python loop over parameters.
    """
    import torch
    import torch.nn.functional as F

    from lgun.training.config import OptimConfig
    from lgun.training.optim import make_optimizer

    recipe = OptimConfig(name="adamw", learning_rate=5e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    opt = (make_optimizer(model.parameters(), recipe) if optimised else
           torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=recipe.betas,
                             weight_decay=recipe.weight_decay))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.l1_loss(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _gemm(rows: int) -> tuple[Callable[[], None], float]:
    """A (rows x 64) @ (64 x 160) fp32 GEMM (the best of mm and oneDNN) and its FLOPs."""
    import torch

    a, w = torch.rand(rows, 64), torch.rand(160, 64)
    wt = w.t().contiguous()
    cands: list[Callable[[], Any]] = [lambda: torch.mm(a, wt)]
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        cands.append(lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], ""))
    best, best_t = cands[0], float("inf")
    for f in cands:  # pick once, then time only the winner
        f()
        t = time.perf_counter()
        for _ in range(3):
            f()
        if (dt := time.perf_counter() - t) < best_t:
            best, best_t = f, dt
    reps = max(1, int(0.1 / (best_t / 3)))  # ~0.1 s per timing

    def run() -> None:
        for _ in range(reps):
            best()

    return run, 2.0 * rows * 64 * 160 * reps


def _phase(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, dict[str, list]]:
    """Time each callable ``rounds`` times, alternating them; one untimed warm-up round.

    Returns ``{name: {"wall": [...], "cpu": [...]}}`` in seconds. CPU time is this process's
    (one compute thread): on a shared machine it counts what a step costs while it holds a
    core, where wall time also counts the time other processes held it.
    """
    times: dict[str, dict[str, list]] = {k: {"wall": [], "cpu": []} for k in steps}
    for r in range(rounds + 1):
        for k, f in steps.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            if r:
                times[k]["wall"].append(time.perf_counter() - t)
                times[k]["cpu"].append(time.process_time() - c)
    return times


def _batch(scale: int, batch: int) -> tuple[Any, Any, int, int]:
    """The recipe's batch of random data: (x, y, HR side, LR side)."""
    import torch

    torch.manual_seed(0)
    hr = 63 if scale == 3 else 64
    lr = hr // scale
    return torch.rand(batch, 3, lr, lr), torch.rand(batch, 3, hr, hr), hr, lr


def _child(variant: str, scale: int, threads: int, steps: int, batch: int) -> dict[str, list]:
    """One side of ``end to end`` in this (fresh) process: per-step wall and CPU seconds."""
    import torch

    from lgun.fast_train import optimize_for_training, training_setup
    from lgun.model import LGUN

    if variant == "optimised":
        training_setup(threads)  # what pipelines.train does first on the CPU
    else:
        torch.set_num_threads(threads)
    x, y, _, _ = _batch(scale, batch)
    model = LGUN(scale=scale)
    if variant == "optimised":
        model = optimize_for_training(model)
    return _phase({variant: _train_step(model, x, y, optimised=variant == "optimised")},
                  steps)[variant]


def _end_to_end(scale: int, threads: int, steps: int, batch: int,
                rounds: int) -> dict[str, dict[str, list]]:
    """``rounds`` x (reference, optimised) in fresh processes, alternating who goes first."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    times: dict[str, dict[str, list]] = {k: {"wall": [], "cpu": []}
                                         for k in ("reference", "optimised")}
    for r in range(rounds):
        for variant in (("reference", "optimised") if r % 2 == 0 else
                        ("optimised", "reference")):
            cmd = [sys.executable, "-m", "pipelines.bench_train", "--child", variant,
                   "--scale", str(scale), "--threads", str(threads), "--steps", str(steps),
                   "--batch", str(batch)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"{variant} process failed: {res.stderr.strip()[-500:]}")
            out = json.loads(res.stdout.strip().splitlines()[-1])
            for k in ("wall", "cpu"):
                times[variant][k] += out[k]
    return times


def run(scale: int, threads: int, steps: int, batch: int, bf16: bool,
        rounds: int = 2) -> dict[str, Any]:
    """Measure; return the report as plain data (see the module docstring)."""
    import torch

    from lgun import cpu_kernels
    from lgun.complexity import count
    from lgun.fast import tune_malloc
    from lgun.fast_train import bf16_supported, native_convs, optimize_for_training
    from lgun.model import LGUN

    torch.set_num_threads(threads)
    x, y, hr, lr = _batch(scale, batch)
    ref = LGUN(scale=scale)
    opt = optimize_for_training(copy.deepcopy(ref))  # native kernels where available
    onednn = optimize_for_training(copy.deepcopy(ref), native=False) if native_convs(opt) else None
    assert list(opt.state_dict()) == list(ref.state_dict())
    diff, diff_param = _grad_diff(ref, opt, x, y)
    flops = 3 * 2 * count(ref.config, hr, hr).multi_adds * batch
    gemm, gemm_flops = _gemm(batch * lr * lr)
    use_bf16 = bf16 and bf16_supported()
    bf16_diff = _grad_diff(ref, copy.deepcopy(opt), x, y, autocast=True) if use_bf16 else None
    variants = {"reference": _train_step(ref, x, y, optimised=False),
                "optimised": _train_step(opt, x, y)}
    if onednn is not None:
        variants["optimised-onednn"] = _train_step(onednn, x, y)
    variants["gemm"] = gemm
    default = _phase(variants, steps)
    malloc = tune_malloc()
    if use_bf16:
        variants["optimised+bf16"] = _train_step(copy.deepcopy(opt), x, y, autocast=True)
    tuned = _phase(variants, steps)

    def med(ts: list[float]) -> float:
        return statistics.median(ts)

    rows = []
    for phase, times in (("default", default), ("tune_malloc", tuned)):
        ref_s, ref_cpu = med(times["reference"]["wall"]), med(times["reference"]["cpu"])
        ceiling = gemm_flops / med(times["gemm"]["cpu"]) / 1e9
        for k in times:
            if k == "gemm":
                continue
            s, cpu = med(times[k]["wall"]), med(times[k]["cpu"])
            rows.append({"phase": phase, "step": k, "s_per_step": s, "cpu_s_per_step": cpu,
                         "samples_per_s": batch / s, "samples_per_cpu_s": batch / cpu,
                         "gflops": flops / cpu / 1e9, "ceiling_gflops": ceiling,
                         "speedup": ref_s / s, "speedup_cpu": ref_cpu / cpu, "times": times[k]})
    return {
        "scale": scale, "threads": threads, "batch": batch, "hr_patch": hr, "lr_patch": lr,
        "steps": steps, "cpu": _cpu_model(), "torch": torch.__version__,
        "loadavg_start_end": [], "tune_malloc": malloc,
        "bf16": {"requested": bf16, "native": bf16_supported(), "grad_rel_diff": bf16_diff},
        "native_kernels": {"convs": native_convs(opt), "library": cpu_kernels.library_path(),
                           "unavailable": cpu_kernels.build_error()},
        "train_gflop_per_step": flops / 1e9, "grad_rel_diff": diff, "grad_rel_diff_param":
        diff_param, "rows": rows,
        "end_to_end": _summary(_end_to_end(scale, threads, steps, batch, rounds), batch)
        if rounds else None,
    }


def _summary(times: dict[str, dict[str, list]], batch: int) -> dict[str, Any]:
    """Medians and ratios of ``_end_to_end``'s times."""
    med = {k: {t: statistics.median(v[t]) for t in ("wall", "cpu")} for k, v in times.items()}
    ref, opt = med["reference"], med["optimised"]
    return {"rounds_steps": len(times["reference"]["wall"]), "median_s": med,
            "samples_per_s": {k: batch / v["wall"] for k, v in med.items()},
            "speedup": ref["wall"] / opt["wall"], "speedup_cpu": ref["cpu"] / opt["cpu"],
            "times": times}


def format_report(r: dict[str, Any]) -> str:
    """The report as a text table."""
    lines = [
        f"LGUN x{r['scale']} training step: batch {r['batch']} x {r['lr_patch']}^2 LR "
        f"({r['hr_patch']}^2 HR), {r['threads']} thread(s), median of {r['steps']} "
        f"interleaved steps; {r['cpu']}, torch {r['torch']}, load avg {r['loadavg_start_end']}",
        f"{r['train_gflop_per_step']:.1f} GFLOP per step (3 x forward)",
        "wall: elapsed time; cpu: this process's CPU time (what a step costs while it holds a "
        "core); GFLOP/s and % GEMM on CPU time",
        f"{'allocator':<12} {'step':<16} {'s/step':>7} {'cpu s':>7} {'samples/s':>10} "
        f"{'GFLOP/s':>8} {'% GEMM':>7} {'speedup':>8} {'(cpu)':>7}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['phase']:<12} {row['step']:<16} {row['s_per_step']:7.3f} "
            f"{row['cpu_s_per_step']:7.3f} {row['samples_per_s']:10.2f} {row['gflops']:8.1f} "
            f"{100 * row['gflops'] / row['ceiling_gflops']:6.0f}% {row['speedup']:7.2f}x "
            f"{row['speedup_cpu']:6.2f}x")
    nk = r["native_kernels"]
    lines.append(f"optimised: depthwise convs on lgun.cpu_kernels ({nk['convs']} convs)"
                 if nk["convs"] else f"optimised: oneDNN depthwise convs ({nk['unavailable']})")
    ceil = [row["ceiling_gflops"] for row in r["rows"]]
    lines += [
        f"GEMM ceiling ((B*h*w) x 64 @ 64 x 160 fp32): {min(ceil):.1f}-{max(ceil):.1f} GFLOP/s",
        f"grad rel diff (max over parameters): {r['grad_rel_diff']:.2e} "
        f"({r['grad_rel_diff_param']})",
    ]
    e = r["end_to_end"]
    if e:
        ref, opt = e["median_s"]["reference"], e["median_s"]["optimised"]
        lines.append(
            f"end to end, alternating fresh processes ({e['rounds_steps']} steps each): "
            f"reference + default allocator {ref['wall']:.3f} s/step ({ref['cpu']:.3f} cpu), "
            f"pipelines.train's step {opt['wall']:.3f} s/step ({opt['cpu']:.3f} cpu): "
            f"{e['speedup']:.2f}x samples/s ({e['speedup_cpu']:.2f}x per CPU second)")
    b = r["bf16"]
    if b["requested"] and not b["native"]:
        lines.append("bf16: not measured, no native bf16 on this CPU (no avx512_bf16/amx_bf16); "
                     "fp32 only")
    elif b["requested"]:
        lines.append(f"bf16 autocast grad rel diff: {b['grad_rel_diff'][0]:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bench_train",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=2)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant and phase")
    p.add_argument("--batch", type=int, default=16, help="patches per step (recipe: 16)")
    p.add_argument("--bf16", action="store_true",
                   help="also time bf16 autocast (only where the CPU has native bf16)")
    p.add_argument("--rounds", type=int, default=2,
                   help="end-to-end rounds of fresh processes (0: skip; default 2)")
    p.add_argument("--json", type=Path, help="write the report (with all times) here")
    p.add_argument("--child", choices=("reference", "optimised"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # one side of the end-to-end comparison, in its own process
        print(json.dumps(_child(a.child, a.scale, a.threads, a.steps, a.batch)))
        return 0
    # Before torch is imported, so that OpenMP starts with this many threads.
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    load = os.getloadavg()[0]
    r = run(a.scale, a.threads, a.steps, a.batch, a.bf16, a.rounds)
    r["loadavg_start_end"] = [load, os.getloadavg()[0]]
    print(format_report(r))
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
