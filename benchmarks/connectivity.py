"""Connectivity of all same-cell pairs of a grid: zoo's batched evaluation vs per-pair loops.

12 cells (widths 16/32/64 x lrs 0.01/0.03/0.05/0.1) x 3 seeds of MNIST-1D MLPs, 300 SGD steps,
36 pairs. Two comparisons, each warmed up and interleaved:
- linear paths (the headline, printed last): all pairs x 11 points as one stacked forward vs a
  per-pair loop that loads each interpolated state into one model per population (built once) and
  runs a plain forward; train (4000) and test (1000) loss and error;
- Bezier bends: all bends trained at once vs one pair at a time with torch.optim.SGD on
  functional_call (the same t and minibatch draws, so the bends agree).
Linear CKA of all pairs (logits and penultimate features) is timed alone, for the record.

Prints one JSON line per comparison, the headline last, with "ratio" = baseline_s / ours_s
(min over interleaved rounds; benchmarks/_harness.py).
"""

from __future__ import annotations

import argparse

import _harness as h
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
def loop_pair(model, params, i, j, ts, splits):
    out = {}
    for t in ts.tolist():
        model.load_state_dict({k: (1 - t) * v[i] + t * v[j] for k, v in params.items()})
        for split, (x, y) in splits.items():
            logits = model(x)
            out.setdefault(f"{split}.loss", []).append(float(F.cross_entropy(logits.double(), y)))
            out.setdefault(f"{split}.err", []).append(float((logits.argmax(1) != y).double().mean()))
    return out


def loop_bend(model, params, i, j, x, y, steps, lr, batch_size, seed):
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


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--bezier-steps", type=int, default=50)
    args = h.start(ap)
    widths, lrs, steps = ((16,), (0.05,), 100) if args.quick else ((16, 32, 64), (0.01, 0.03, 0.05, 0.1), 300)
    if args.quick:
        args.bezier_steps = 10
    data = load_task("mnist1d", 4000, 1000, 42)
    splits = {"train": (torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)),
              "test": (torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))}
    cfg = TrainConfig(steps=steps, batch_size=64, checkpoint_steps=[steps])
    pops, loop_models = [], []  # (template model, params, buffers, pairs) per width; the loop's own model
    for width in widths:
        build = lambda w=width: build_model("mlp", in_dim=40, out_dim=10, width=w, depth=2)  # noqa: E731
        members = [Member(f"w{width}-{lr}-{s}", seed=s, lr=lr) for lr in lrs for s in range(3)]
        res = train_population(build, members, data, cfg)
        params, buffers = from_flat(torch.from_numpy(res.weights[-1]), res.layout)
        pairs = torch.tensor([(c * 3 + a, c * 3 + b) for c in range(len(lrs)) for a, b in ((0, 1), (0, 2), (1, 2))])
        pops.append((build().eval(), params, buffers, pairs))
        loop_models.append(build().eval())
    ts = torch.linspace(0, 1, 11, dtype=torch.float64)
    n_pairs = sum(len(p[3]) for p in pops)

    ours, loop = h.interleave(
        lambda: [linear_connectivity(model, Classification(), params, buffers, pairs, splits, n_points=11)
                 for model, params, buffers, pairs in pops],
        lambda: [[loop_pair(model, params, i, j, ts, splits) for i, j in pairs.tolist()]
                 for model, (_, params, _, pairs) in zip(loop_models, pops)],
        rounds=args.rounds, warmup=args.warmup)
    diff = [np.abs(o[f"curve.{key}"][k] - np.array(bs[k][key]))
            for o, bs in zip(ours.value, loop.value) for k in range(len(bs)) for key in bs[k]]

    x, y = splits["train"]
    lr = 0.05
    bends, bend_loop = h.interleave(
        lambda: [train_bends(model, Classification(), params, buffers, pairs, x, y, args.bezier_steps, lr,
                             "sgd", 0.9, 64, 0) for model, params, buffers, pairs in pops],
        lambda: [[loop_bend(model, params, i, j, x, y, args.bezier_steps, lr, 64, 0) for i, j in pairs.tolist()]
                 for model, params, buffers, pairs in pops],
        rounds=args.rounds, warmup=args.warmup)
    ends = [getattr(b, "end", b) for b in bends.value]  # train_bends returns Bends (.end) or, before, a dict
    bez_diff = [(end[k][q] - loops[q][k]).abs().flatten()
                for end, loops in zip(ends, bend_loop.value) for q in range(len(loops)) for k in loops[q]]
    probe = splits["test"][0]
    cka = h.repeat(lambda: [pair_cka(model, params, buffers, pairs, probe) for model, params, buffers, pairs in pops],
                   rounds=args.rounds, warmup=args.warmup)

    h.emit([
        h.result("bezier_bends", "per-pair loop, torch.optim.SGD on functional_call", bends, bend_loop,
                 agree=h.within(torch.cat(bez_diff), 1e-3), case=f"{n_pairs} pairs, {args.bezier_steps} steps",
                 max_abs_diff=float(torch.cat(bez_diff).max()), pairs=n_pairs, bezier_steps=args.bezier_steps),
        h.result("connectivity", "per-pair loop, one model loaded per interpolated point", ours, loop,
                 agree=h.within(np.concatenate(diff), 1e-4), case=f"{n_pairs} pairs x 11 points, linear paths",
                 max_abs_diff=float(np.max(np.concatenate(diff))), pairs=n_pairs, points=11,
                 cka_s=cka.min, cka_median_s=cka.median, cka_probe=len(probe))])


if __name__ == "__main__":
    main()
