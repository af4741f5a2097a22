"""Batched spectral metrics vs WeightWatcher, model by model, on 64 MLPs of the default zoo (MNIST-1D,
depth 2, width 64: layers 64x40, 64x64, 10x64), trained together for a few hundred SGD steps with
``train_population`` (cheap, and enough to move the spectra off initialization). Prints one JSON line last.

Three timings, each ours vs the WW loop over the same models and layers:
- core (the JSON ``ratio``): ESD, power-law fit, norms, ranks; WW ``analyze()`` with its defaults vs
  ``spectral_tables(farms=False, mp_fit=False)``;
- mp: the same plus the Marchenko-Pastur soft rank; WW ``analyze(mp_fit=True)`` on ``--mp-models``
  models (it is slow) vs ours on the same models;
- full: ours with FARMS and mp_softrank on all models (WW has no FARMS; for the record).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings

import numpy as np
import torch

from zoo.functional import from_flat, load_flat
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.metrics.spectral import spectral_tables

PAIRS = [("alpha", "alpha"), ("xmin", "xmin"), ("ks_distance", "D"), ("log_norm", "log_norm"),
         ("log_spectral_norm", "log_spectral_norm"), ("stable_rank", "stable_rank"), ("entropy", "entropy"),
         ("alpha_weighted", "alpha_weighted")]


def ww_loop(models, **kwargs):
    import weightwatcher as ww

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in models:
            out.append(ww.WeightWatcher(model=m).analyze(**kwargs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--mp-models", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)

    data = load_task("mnist1d", 4000, 1000, 42)
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=args.width, depth=2)  # noqa: E731
    lrs = np.geomspace(0.001, 0.3, args.models)  # the default preset's temperature range
    members = [Member(f"m{i}", seed=1000 + i, lr=float(lrs[i]), momentum=0.9) for i in range(args.models)]
    res = train_population(build, members, data, TrainConfig(steps=args.steps, batch_size=64,
                                                             checkpoint_steps=[args.steps]))
    flat = torch.as_tensor(res.weights[-1])
    params, _ = from_flat(flat, res.layout)
    models = [load_flat(build(), flat[i], res.layout) for i in range(args.models)]
    ids, template = res.model_ids, build()

    spectral_tables(template, {k: v[:2] for k, v in params.items()}, ids[:2], 0)  # warm-up
    t = time.perf_counter()
    ours, _ = spectral_tables(template, params, ids, args.steps, farms=False, mp_fit=False)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = ww_loop(models)
    base_s = time.perf_counter() - t

    diffs = {mine: 0.0 for mine, _ in PAIRS}
    for i, r in enumerate(ref):
        o = ours[ours["model_id"] == ids[i]].reset_index(drop=True)
        assert len(o) == len(r), (len(o), len(r))
        for mine, theirs in PAIRS:
            diffs[mine] = max(diffs[mine], float(np.abs(o[mine] - r[theirs].astype(float)).max()))

    k = min(args.mp_models, args.models)
    sub = {n: v[:k] for n, v in params.items()}
    t = time.perf_counter()
    ours_mp, _ = spectral_tables(template, sub, ids[:k], args.steps, farms=False, mp_fit=True)
    ours_mp_s = time.perf_counter() - t
    t = time.perf_counter()
    ref_mp = ww_loop(models[:k], mp_fit=True)
    base_mp_s = time.perf_counter() - t
    mp_rel = np.concatenate([np.abs(ours_mp[ours_mp["model_id"] == ids[i]]["mp_softrank"].to_numpy()
                                    / r["mp_softrank"].astype(float).to_numpy() - 1) for i, r in enumerate(ref_mp)])
    # WW polishes its MP sigma with Nelder-Mead, which now and then leaves the grid cell for another
    # local minimum; ours stays in the cell: typically ~1e-4 apart, a few layers up to ~1e-2
    mp_med, mp_rel = float(np.median(mp_rel)), float(mp_rel.max())

    t = time.perf_counter()
    full, summary = spectral_tables(template, params, ids, args.steps)
    full_s = time.perf_counter() - t

    agree = diffs["alpha"] <= 1e-6 and diffs["ks_distance"] <= 1e-6 and mp_med <= 1e-3 and mp_rel <= 2e-2
    print(f"core: ours {ours_s:.3f} s, WW loop {base_s:.3f} s; mp ({k} models): ours {ours_mp_s:.3f} s, "
          f"WW {base_mp_s:.3f} s; full (FARMS + mp, {args.models} models) {full_s:.3f} s")
    print("max abs diff vs WW:", {k_: f"{v:.2e}" for k_, v in diffs.items()})
    print(f"mp_softrank relative diff: median {mp_med:.2e}, max {mp_rel:.2e}")
    print("mean alpha by layer:", full.groupby("layer")[["alpha", "farms_alpha"]].mean().round(3).to_dict())
    print(json.dumps({"benchmark": "spectral_vs_weightwatcher",
                      "baseline": "weightwatcher.WeightWatcher(model=m).analyze() per model",
                      "ours_s": round(ours_s, 4), "baseline_s": round(base_s, 4), "ratio": round(base_s / ours_s, 2),
                      "agree": bool(agree), "max_abs_alpha_diff": diffs["alpha"],
                      "max_abs_diff": {k_: v for k_, v in diffs.items()},
                      "mp_models": k, "ours_mp_s": round(ours_mp_s, 4), "baseline_mp_s": round(base_mp_s, 4),
                      "ratio_mp": round(base_mp_s / ours_mp_s, 2), "max_rel_mp_softrank_diff": mp_rel,
                      "median_rel_mp_softrank_diff": mp_med,
                      "ours_full_s": round(full_s, 4), "device": "cpu", "threads": args.threads,
                      "models": args.models, "width": args.width, "train_steps": args.steps,
                      "layers_per_model": int(len(full) // args.models)}))


if __name__ == "__main__":
    main()
