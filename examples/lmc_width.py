"""Barriers before and after weight matching as width grows (Entezari et al. 2022; Ainsworth et al. 2023):
MNIST-1D MLPs (depth 2) at several widths, 4 seeds each, same hyperparameters; all 6 pairs per width.

    python examples/lmc_width.py [--widths 8 32 128 512] [--steps 2000]

Prints a table (mean over pairs) and one JSON line."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from zoo.functional import from_flat
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.connectivity import linear_connectivity
from zoo.metrics.lmc import lmc_pairs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 32, 128, 512])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args(argv)
    data = load_task("mnist1d", 4000, 1000, 42)
    splits = {"train": (torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)),
              "test": (torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))}
    pairs = torch.tensor([(i, j) for i in range(args.seeds) for j in range(i + 1, args.seeds)])
    rows = []
    for width in args.widths:
        build = lambda w=width: build_model("mlp", in_dim=40, out_dim=10, width=w, depth=2)  # noqa: E731
        members = [Member(f"w{width}-{s}", seed=s, lr=0.05) for s in range(args.seeds)]
        res = train_population(build, members, data, TrainConfig(steps=args.steps, batch_size=64,
                                                                 checkpoint_steps=[args.steps]))
        params, buffers = from_flat(torch.from_numpy(res.weights[-1]), res.layout)
        naive = linear_connectivity(build(), Classification(), params, buffers, pairs, splits, n_points=11)
        aligned, _ = lmc_pairs(build(), Classification(), params, buffers, pairs, splits, splits["test"][0][:512],
                               alignments=("weight",), n_points=11, layerwise=False)
        rows.append({"width": width, "train_loss": float(res.metrics["train_loss"][-1].mean()),
                     "naive_barrier_test_err": float(np.mean(naive["barrier_max.test.err"])),
                     "matched_barrier_test_err": float(aligned["barrier_max.test.err"].mean()),
                     "naive_barrier_train_loss": float(np.mean(naive["barrier_max.train.loss"])),
                     "matched_barrier_train_loss": float(aligned["barrier_max.train.loss"].mean())})
        r = rows[-1]
        print(f"width {width:4d}  train loss {r['train_loss']:.3f}  test-error barrier naive "
              f"{r['naive_barrier_test_err']:.3f} -> matched {r['matched_barrier_test_err']:.3f}   "
              f"train-loss barrier {r['naive_barrier_train_loss']:.3f} -> {r['matched_barrier_train_loss']:.3f}")
    result = {"example": "lmc_width", "steps": args.steps, "seeds": args.seeds, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
