"""Weight matching for all pairs of one population cell: zoo (batched over pairs) vs `rebasin`
(pair by pair). 16 MNIST-1D MLPs (width 64, depth 2) of one hyperparameter cell, 16 seeds ->
all 120 unordered pairs.

Solve vs solve: ours is ``weight_matching`` with the permutation spec derived (fx tracing) before
timing; rebasin is ``PermutationCoordinateDescent.rebasin()`` with its objects (torchview tracing)
built before timing, a fresh copy per round (it permutes model B in place). Both warmed up and
interleaved. Objective J = sum over trainable tensors <theta_A, pi(theta_B)> (float64), evaluated
the same way for both; agreement needs ours >= rebasin on every pair and rebasin to have moved off
the identity on every pair (else "ours >= rebasin" would hold trivially). Prints one JSON line last.

Prints one JSON line per comparison, the headline last, with "ratio" = baseline_s / ours_s
(min over interleaved rounds; benchmarks/_harness.py).
"""

from __future__ import annotations

import argparse
import copy

import _harness as h
import numpy as np
import torch
from rebasin import PermutationCoordinateDescent

from zoo.functional import from_flat, load_flat
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.metrics.matching import permutation_spec, weight_matching


def objective(a: torch.nn.Module, b: torch.nn.Module) -> float:
    with torch.no_grad():
        return sum(float((pa.double() * pb.double()).sum()) for pa, pb in zip(a.parameters(), b.parameters()))


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    args = h.start(ap)
    if args.quick:
        args.models, args.steps = 4, 100

    data = load_task("mnist1d", 4000, 1000, 42)
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=args.width, depth=2)  # noqa: E731
    members = [Member(f"m{i}", seed=2000 + i, lr=0.05) for i in range(args.models)]
    res = train_population(build, members, data, TrainConfig(steps=args.steps, batch_size=64,
                                                             checkpoint_steps=[args.steps]))
    weights = torch.as_tensor(res.weights[-1])
    params, _ = from_flat(weights, res.layout)
    pairs = [(i, j) for i in range(args.models) for j in range(i + 1, args.models)]
    spec = permutation_spec(build())

    models = [load_flat(build(), weights[i], res.layout) for i in range(args.models)]
    x = torch.as_tensor(data.x_train[:8])
    pristine = [PermutationCoordinateDescent(models[i], copy.deepcopy(models[j]), x) for i, j in pairs]
    work: list[PermutationCoordinateDescent] = []

    def fresh():  # untimed: rebasin() permutes model B and keeps its permutations
        torch.manual_seed(0)  # rebasin's random order of permutations
        work[:] = [copy.deepcopy(p) for p in pristine]

    def solve_all():
        for pcd in work:
            pcd.rebasin()
        return work

    ours, theirs = h.interleave(lambda: weight_matching(spec, params, pairs, seed=0), solve_all,
                                rounds=args.rounds, warmup=args.warmup, setup=[None, fresh])
    ours_obj = ours.value["objective"].numpy()
    ident = ours.value["objective_identity"].numpy()
    theirs_obj = np.array([objective(models[i], pcd.model_b) for (i, _), pcd in zip(pairs, theirs.value)])
    moved = np.array([any(not torch.equal(p, q) for p, q in zip(pcd.model_b.parameters(), models[j].parameters()))
                      for (_, j), pcd in zip(pairs, theirs.value)])
    rel = (ours_obj - theirs_obj) / np.abs(theirs_obj)
    agree = bool(moved.all()) and h.within(np.minimum(rel, 0), 1e-3) and h.all_finite(ours_obj)
    h.emit([h.result(
        "matching_vs_rebasin", "rebasin.PermutationCoordinateDescent.rebasin() pair by pair (solve only)",
        ours, theirs, agree=agree, case=f"{len(pairs)} pairs of {args.models} MLPs width {args.width}",
        models=args.models, pairs=len(pairs), width=args.width, depth=2, steps=args.steps,
        rebasin_pairs_moved=int(moved.sum()),
        objective_rel_diff_median=float(np.median(rel)), objective_rel_diff_min=float(rel.min()),
        objective_rel_diff_max=float(rel.max()), pairs_ours_higher=int((rel > 1e-9).sum()),
        pairs_equal=int((np.abs(rel) <= 1e-9).sum()), pairs_rebasin_higher=int((rel < -1e-9).sum()),
        objective_gain_over_identity_median=float(np.median((ours_obj - ident) / np.abs(ident))),
        rebasin_gain_over_identity_median=float(np.median((theirs_obj - ident) / np.abs(ident))),
        sweeps_median=float(ours.value["sweeps"].double().median()), sweeps_max=int(ours.value["sweeps"].max()))])


if __name__ == "__main__":
    main()
