"""Spectral analysis of 64 MNIST-1D MLPs (the default zoo's architecture at widths 64 and 128, trained
300 SGD steps): zoo's batched ``spectral_tables`` vs ``weightwatcher.WeightWatcher(model).analyze()``
model by model, same layers. Ours is timed without FARMS (WW computes the plain ESD only) and with it.
Prints one JSON line last."""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from zoo.functional import from_flat
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.metrics.spectral import spectral_tables


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    data = load_task("mnist1d", 4000, 1000, 42)
    cfg = TrainConfig(steps=300, batch_size=64, checkpoint_steps=[300])
    groups = []
    for width in (64, 128):
        build = lambda w=width: build_model("mlp", in_dim=40, out_dim=10, width=w, depth=2)  # noqa: E731
        members = [Member(f"w{width}-{i}", seed=i, lr=0.05) for i in range(args.models // 2)]
        res = train_population(build, members, data, cfg)
        params, _ = from_flat(torch.from_numpy(res.weights[-1]), res.layout)
        groups.append((build, params, res.model_ids))

    def ours(farms: bool):
        return [spectral_tables(build(), params, ids, 300, farms=farms)[0] for build, params, ids in groups]

    ours(False)  # warm-up
    t = time.perf_counter()
    tables = ours(False)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    ours(True)
    ours_farms_s = time.perf_counter() - t

    t = time.perf_counter()
    ref = []
    for build, params, ids in groups:
        for i, mid in enumerate(ids):
            model = build()
            model.load_state_dict({k: v[i] for k, v in params.items()}, strict=False)
            ref.append((mid, ww.WeightWatcher(model=model).analyze()))
    base_s = time.perf_counter() - t

    diffs, smalln = [], 0
    for mid, d in ref:
        mine = [t_[t_["model_id"] == mid] for t_ in tables if mid in set(t_["model_id"])][0].reset_index(drop=True)
        for k in range(len(d)):
            if d["num_evals"][k] < 20:  # WW's small-sample estimator (documented difference)
                smalln += 1
                continue
            diffs.append(abs(float(mine["alpha"][k]) - float(d["alpha"][k])))
    diffs = np.array(diffs)
    print(json.dumps({"benchmark": "spectral_vs_weightwatcher", "baseline": "weightwatcher analyze() per model",
                      "ours_s": round(ours_s, 3), "baseline_s": round(base_s, 3), "ratio": round(base_s / ours_s, 2),
                      "agree": bool(diffs.max() < 1e-6), "alpha_max_abs_diff": float(diffs.max()),
                      "layers_compared": int(len(diffs)), "layers_skipped_smallN": smalln,
                      "ours_with_farms_s": round(ours_farms_s, 3), "device": "cpu", "threads": args.threads,
                      "models": args.models}))


if __name__ == "__main__":
    main()
