"""Barriers before and after permutation alignment as width grows (Entezari et al. 2022; Ainsworth et
al. 2023; Jordan et al. 2023): MNIST-1D MLPs (depth 2) at several widths, several seeds each, same
hyperparameters; all pairs per width, every alignment of ``zoo.metrics.lmc`` (none, weight matching,
activation matching, weight matching + REPAIR).

    python examples/lmc_width.py [--widths 8 32 128 512] [--steps 2000] [--seeds 4] [--quiet]

Prints a table (mean over pairs of the ``max`` barrier) and one JSON line; progress (stage, models,
models/s, ETA) on stderr unless --quiet."""

from __future__ import annotations

import argparse
import json
import time

import torch

from zoo.functional import from_flat
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.lmc import ALIGNMENTS, lmc_pairs
from zoo.progress import ProgressBar, interruptible

SHORT = {"none": "naive", "weight": "matched", "activation": "activation", "weight+repair": "repair"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 32, 128, 512])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    data = load_task("mnist1d", 4000, 1000, 42)
    splits = {"train": (torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)),
              "test": (torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))}
    probe = splits["train"][0][:512]
    pairs = torch.tensor([(i, j) for i in range(args.seeds) for j in range(i + 1, args.seeds)])
    rows = []
    with ProgressBar(None, len(args.widths) * args.seeds, desc="lmc_width", enabled=not args.quiet) as bar:
        bar.write(f"{'width':>5} {'train loss':>10} | test-error barrier: naive  matched  activation  repair | "
                  "train-loss barrier: naive  matched  repair")
        for width in args.widths:
            build = lambda w=width: build_model("mlp", in_dim=40, out_dim=10, width=w, depth=2)  # noqa: E731
            members = [Member(f"w{width}-{s}", seed=s, lr=0.05) for s in range(args.seeds)]
            with bar.track(args.seeds) as unit:  # train (per step), then measure the pairs
                res = train_population(build, members, data, TrainConfig(
                    steps=args.steps, batch_size=64, checkpoint_steps=[args.steps],
                    on_step=lambda k: unit.report("train", k, args.steps)))
                unit.report("measure", 0, 1)
                params, buffers = from_flat(torch.from_numpy(res.weights[-1]), res.layout)
                table, _ = lmc_pairs(build(), Classification(), params, buffers, pairs, splits, probe,
                                     alignments=ALIGNMENTS, n_points=11, layerwise=False)
            mean = table.groupby("alignment").mean(numeric_only=True)
            row = {"width": width, "train_loss": float(res.metrics["train_loss"][-1].mean()),
                   "test_err": float(1 - res.metrics["test_acc"][-1].mean())}
            for alignment, short in SHORT.items():
                for col, key in (("barrier_max.test.err", "barrier_test_err"), ("barrier_max.train.loss",
                                                                               "barrier_train_loss")):
                    row[f"{short}_{key}"] = float(mean.loc[alignment, col])
                row[f"{short}_l2"] = float(mean.loc[alignment, "l2"])
            rows.append(row)
            r = row
            bar.write(f"{width:5d} {r['train_loss']:10.3f} | {r['naive_barrier_test_err']:25.3f} "
                      f"{r['matched_barrier_test_err']:8.3f} {r['activation_barrier_test_err']:11.3f} "
                      f"{r['repair_barrier_test_err']:7.3f} | {r['naive_barrier_train_loss']:25.3f} "
                      f"{r['matched_barrier_train_loss']:8.3f} {r['repair_barrier_train_loss']:7.3f}")
    result = {"example": "lmc_width", "steps": args.steps, "seeds": args.seeds, "pairs_per_width": len(pairs),
              "wall_s": round(time.perf_counter() - start, 1), "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    interruptible(main, "lmc_width")
