"""Population trainer vs a plain per-model PyTorch loop, and the trainer's throughput curve.

Headline: the same MNIST-1D MLPs (depth 2, width 64), data, seeds and SGD steps, trained by
``train_population`` and by ``torch.optim.SGD`` one model at a time, interleaved. Agreement: the
same run in float64 must give the same published float32 weights (<= 1 ulp) and most float32
models agree to 1e-4 (batched and per-model GEMMs round differently).

Curve: the trainer alone over widths x population sizes, as time per training step from the
difference of a long and a short run (setup and the end-of-run evaluation cancel), with achieved
GEMM GFLOP/s as a % of this machine's bmm peak (training GEMM FLOPs only: 6 x batch x weights).

``--device cuda``: the population trainer on the GPU vs the same trainer on the CPU instead.
Prints one JSON line per curve point, the headline last.

Prints one JSON line per comparison, the headline last, with "ratio" = baseline_s / ours_s
(min over interleaved rounds; benchmarks/_harness.py).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import _harness as h
import numpy as np
import torch

from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.reference import train_model_loop
from zoo.generators.tasks import load_task


def builder(width: int):
    return lambda: build_model("mlp", in_dim=40, out_dim=10, width=width, depth=2)


def train_flop(width: int, models: int, steps: int, batch: int = 64) -> float:
    """GEMM FLOPs of training: forward 2 x batch x weights, backward twice that."""
    weights = 40 * width + width * width + width * 10
    return 6.0 * batch * weights * models * steps


def members(n: int, lr: float = 0.01) -> list[Member]:
    return [Member(f"m{i}", seed=1000 + i, lr=lr, momentum=0.9) for i in range(n)]


def headline(args, data, peak: float) -> dict:
    build, mems = builder(args.width), members(args.models)
    cfg = TrainConfig(steps=args.steps, batch_size=64, checkpoint_steps=[args.steps])
    ours, loop = h.interleave(lambda: train_population(build, mems, data, cfg).weights[-1],
                              lambda: np.stack([train_model_loop(build, m, data, cfg) for m in mems]),
                              rounds=args.rounds, warmup=args.warmup)
    diff = np.abs(ours.value - loop.value).max(axis=1)
    # float32 rounding differs between batched and per-model GEMMs and a ReLU that flips sign
    # amplifies it; the same run in float64 shows whether the two trainers compute the same thing.
    cfg64 = replace(cfg, dtype=torch.float64)
    sub = mems[: args.check64]
    ours64 = train_population(build, sub, data, cfg64).weights[-1]
    loop64 = np.stack([train_model_loop(build, m, data, cfg64) for m in sub]).astype(np.float32)
    ulps64 = np.abs(ours64 - loop64) / np.spacing(np.abs(loop64))
    flop = train_flop(args.width, args.models, args.steps)
    return h.result("population_vs_loop", "per-model torch.optim.SGD loop", ours, loop,
                    agree=h.within(ulps64, 1) and h.within(np.median(diff), 1e-4),
                    case=f"width {args.width}, {args.models} models, {args.steps} steps",
                    pct_bmm_peak=h.pct_of_peak(flop, ours.min, peak),
                    baseline_pct_bmm_peak=h.pct_of_peak(flop, loop.min, peak),
                    max_abs_diff=float(diff.max()), median_abs_diff=float(np.median(diff)),
                    models_within_1e4=int((diff <= 1e-4).sum()), max_ulps_float64_run=float(ulps64.max()),
                    models=args.models, width=args.width, steps=args.steps, train_gflop=flop / 1e9,
                    ms_per_model_step_ours=1e3 * ours.min / (args.models * args.steps),
                    ms_per_model_step_loop=1e3 * loop.min / (args.models * args.steps))


def curve_steps(width: int, m: int, quick: bool) -> tuple[int, int]:
    """(short, long) step counts: the timed difference is ~150 GFLOP of work, 20-400 steps."""
    if quick:
        return 2, 12
    n = int(np.clip(1.5e11 / train_flop(width, m, 1), 20, 400))
    return 5, 5 + n


def curve_point(width: int, m: int, data, steps: tuple[int, int], args, peak: float, device: str = "cpu") -> dict:
    build, mems = builder(width), members(m)
    short, long = (TrainConfig(steps=s, batch_size=64, checkpoint_steps=[s], device=device) for s in steps)
    sync = torch.cuda.synchronize if device == "cuda" else None
    lo, hi = h.interleave(lambda: train_population(build, mems, data, short),
                          lambda: train_population(build, mems, data, long),
                          rounds=args.rounds, warmup=args.warmup, sync=sync)
    n = steps[1] - steps[0]
    per_round = h.Side([b - a for a, b in zip(lo.times, hi.times)])
    flop = train_flop(width, m, n)
    return h.result("population_curve", None, per_round, None, agree=None, device=device,
                    case=f"width {width}, {m} models", pct_bmm_peak=h.pct_of_peak(flop, per_round.min, peak),
                    gflops=flop / per_round.min / 1e9, width=width, models=m, steps_timed=n,
                    ms_per_step=1e3 * per_round.min / n, us_per_model_step=1e6 * per_round.min / (n * m),
                    method=f"time({steps[1]} steps) - time({steps[0]} steps), per round")


def gpu_vs_cpu(m: int, width: int, steps: int, data, args) -> dict:
    """The same population on CUDA and on the CPU (both the population trainer)."""
    build, mems = builder(width), members(m)
    cfg = TrainConfig(steps=steps, batch_size=64, checkpoint_steps=[steps])
    gpu, cpu = h.interleave(lambda: train_population(build, mems, data, replace(cfg, device="cuda")).weights[-1],
                            lambda: train_population(build, mems, data, cfg).weights[-1],
                            rounds=args.rounds, warmup=args.warmup, sync=torch.cuda.synchronize)
    diff = np.abs(gpu.value - cpu.value).max(axis=1)
    flop = train_flop(width, m, steps)
    return h.result("population_gpu_vs_cpu", "population trainer on the CPU", gpu, cpu,
                    agree=h.within(np.median(diff), 1e-3), device="cuda",
                    case=f"width {width}, {m} models, {steps} steps",
                    pct_bmm_peak=h.pct_of_peak(flop, gpu.min, args.bmm_peak),
                    median_abs_diff=float(np.median(diff)), max_abs_diff=float(diff.max()),
                    device_name=torch.cuda.get_device_name())


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--check64", type=int, default=16, help="models re-run in float64 for agreement")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the trainer on the GPU vs on the CPU instead of the loop comparison")
    args = h.start(ap)
    data = load_task("mnist1d", 4000, 1000, 42)
    if args.device == "cuda":
        h.peak(args, "cuda")
        cases = [(8, 16, 20)] if args.quick else [(64, 64, 300), (1024, 256, 50)]  # (models, width, steps)
        h.emit([gpu_vs_cpu(m, w, s, data, args) for m, w, s in cases])
        return
    peak = h.peak(args)
    if args.quick:
        args.models, args.steps, args.check64 = 8, 50, 4
    # the curve measures steps, not evaluation: a small evaluation set keeps 1,024-model runs short
    small = replace(data, x_train=data.x_train[:512], y_train=data.y_train[:512],
                    x_test=data.x_test[:64], y_test=data.y_test[:64])
    widths, sizes = ((16, 64), (4, 16)) if args.quick else ((16, 64, 256), (16, 64, 256, 1024))
    records = [curve_point(w, m, small, curve_steps(w, m, args.quick), args, peak) for w in widths for m in sizes]
    records.append(headline(args, data, peak))
    h.emit(records)


if __name__ == "__main__":
    main()
