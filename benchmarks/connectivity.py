"""Linear-path connectivity of all same-cell pairs of a grid: zoo's batched evaluation (all pairs x
points of a population as one stacked forward) vs a per-pair loop that loads each interpolated
model and evaluates it with a plain forward. 12 cells (widths 16/32/64 x lrs 0.01/0.03/0.05/0.1) x 3 seeds
of MNIST-1D MLPs, 300 SGD steps; 11 points; train (4000) and test (1000) loss and error. Best of
``--repeats`` runs each, after one warm-up.

Also timed (extra fields): Bezier bend training of the same 36 pairs, all at once vs one pair at a
time with torch.optim.SGD on functional_call (the same t and minibatch draws, so the bends agree),
and linear CKA of all pairs (logits and penultimate features). Prints one JSON line last."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from zoo.functional import from_flat
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.connectivity import _pair_draws, linear_connectivity, train_bends
from zoo.metrics.similarity import pair_cka


@torch.no_grad()
def loop_pair(build, params, i, j, ts, splits):
    out = {}
    for t in ts.tolist():
        model = build().eval()
        model.load_state_dict({k: (1 - t) * v[i] + t * v[j] for k, v in params.items()})
        for split, (x, y) in splits.items():
            logits = model(x)
            out.setdefault(f"{split}.loss", []).append(float(F.cross_entropy(logits.double(), y)))
            out.setdefault(f"{split}.err", []).append(float((logits.argmax(1) != y).double().mean()))
    return out


def loop_bend(build, params, i, j, x, y, steps, lr, batch_size, seed):
    model = build()
    ts, idx = _pair_draws(torch.tensor([[i, j]]), len(x), steps, batch_size, seed)
    theta = {k: ((v[i] + v[j]) / 2).clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.SGD(list(theta.values()), lr=lr, momentum=0.9)
    for step in range(steps):
        t = float(ts[0, step])
        phi = {k: (1 - t) ** 2 * params[k][i] + 2 * t * (1 - t) * theta[k] + t ** 2 * params[k][j] for k in theta}
        b = idx[0, step]
        loss = F.cross_entropy(torch.func.functional_call(model, phi, (x[b],)), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in theta.items()}


def best_of(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bezier-steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_task("mnist1d", 4000, 1000, 42)
    splits = {"train": (torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)),
              "test": (torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))}
    cfg = TrainConfig(steps=300, batch_size=64, checkpoint_steps=[300])
    pops = []
    for width in (16, 32, 64):
        build = lambda w=width: build_model("mlp", in_dim=40, out_dim=10, width=w, depth=2)  # noqa: E731
        members = [Member(f"w{width}-{lr}-{s}", seed=s, lr=lr) for lr in (0.01, 0.03, 0.05, 0.1) for s in range(3)]
        res = train_population(build, members, data, cfg)
        params, buffers = from_flat(torch.from_numpy(res.weights[-1]), res.layout)
        pairs = torch.tensor([(c * 3 + a, c * 3 + b) for c in range(4) for a, b in ((0, 1), (0, 2), (1, 2))])
        pops.append((build, params, buffers, pairs))
    ts = torch.linspace(0, 1, 11, dtype=torch.float64)

    ours, ours_s = best_of(lambda: [linear_connectivity(build(), Classification(), params, buffers, pairs, splits,
                                                        n_points=11) for build, params, buffers, pairs in pops],
                           args.repeats)
    base, base_s = best_of(lambda: [[loop_pair(build, params, i, j, ts, splits) for i, j in pairs.tolist()]
                                    for build, params, buffers, pairs in pops], args.repeats)
    diff = max(abs(o[f"curve.{key}"][k] - np.array(bs[k][key])).max()
               for o, bs in zip(ours, base) for k in range(len(bs)) for key in bs[k])

    x, y = splits["train"]
    steps, lr = args.bezier_steps, 0.05
    bends, bez_s = best_of(lambda: [train_bends(build(), Classification(), params, buffers, pairs, x, y, steps, lr,
                                                "sgd", 0.9, 64, 0).end for build, params, buffers, pairs in pops], 1)
    loops, bez_loop_s = best_of(lambda: [[loop_bend(build, params, i, j, x, y, steps, lr, 64, 0)
                                          for i, j in pairs.tolist()] for build, params, buffers, pairs in pops], 1)
    bez_diff = max(float((bend[k][q] - loop[q][k]).abs().max())
                   for bend, loop in zip(bends, loops) for q in range(len(loop)) for k in loop[q])
    probe = splits["test"][0]
    _, cka_s = best_of(lambda: [pair_cka(build(), params, buffers, pairs, probe)
                                for build, params, buffers, pairs in pops], args.repeats)

    n_pairs = sum(len(p[3]) for p in pops)
    print(json.dumps({"benchmark": "connectivity", "baseline": "per-pair loop, one interpolated model at a time",
                      "ours_s": round(ours_s, 3), "baseline_s": round(base_s, 3), "ratio": round(base_s / ours_s, 2),
                      "agree": bool(diff < 1e-4 and bez_diff < 1e-3), "max_abs_diff": float(diff),
                      "pairs": n_pairs, "points": 11, "device": "cpu", "threads": args.threads,
                      "bezier_steps": steps, "bezier_ours_s": round(bez_s, 3), "bezier_loop_s": round(bez_loop_s, 3),
                      "bezier_ratio": round(bez_loop_s / bez_s, 2), "bezier_max_abs_diff": bez_diff,
                      "cka_s": round(cka_s, 4), "cka_probe": len(probe)}))


if __name__ == "__main__":
    main()
