"""The merge study's work on a grid of cells: zoo's study code (all groups of a (k, alignment) at once) vs a
per-group loop of the same work.

MNIST-1D MLPs (depth 2), widths 16 and 64 x learning rates 0.01 / 0.03 / 0.1 x 3 seeds, 600 SGD steps
(trained before timing; one population per width), so each width has 3 cells with 3 pairs (k = 2) and one
group of three (k = 3) each. Both sides do the merge study's default work on every group: the naive,
weight-matching (MergeMany for k = 3), activation-matching and STE alignments, the merged model with and
without k-way REPAIR, its test and training loss and accuracy, in float64:

- ours: ``zoo.studies.merge.merge_population``, the function ``zoo study merge`` runs per population;
- baseline: one group at a time, calling the same alignment functions with that one group and scoring
  the merged model by loading it into one nn.Module per population (built once) and a plain forward.

STE runs ``--ste-steps`` steps (default 50, the study's default is 200: the work per step is the same at
any budget, so the ratio holds; it is ~75 % of the study's time). Agreement: every merged accuracy and
loss equal within 1e-8. Prints one JSON line, "ratio" = baseline_s / ours_s (min over interleaved
rounds; benchmarks/_harness.py).
"""

from __future__ import annotations

import argparse

import _harness as h
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from zoo.functional import from_flat
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.lmc import repairable
from zoo.metrics.matching import permutation_spec
from zoo.metrics.ste import ste_merge
from zoo.studies.base import StudyPopulation
from zoo.studies.merge import STUDY, _groups, _members, align, merge_population, repair_merged


def population(width: int, lrs, seeds: int, steps: int, data) -> StudyPopulation:
    """A trained population of one width, as the studies load it from a zoo (float64 states)."""
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=width, depth=2)  # noqa: E731
    members = [Member(f"m-w{width}-lr{lr}-s{s}", seed=s, lr=lr) for lr in lrs for s in range(seeds)]
    res = train_population(build, members, data, TrainConfig(steps=steps, batch_size=64, checkpoint_steps=[steps]))
    params, buffers = from_flat(torch.from_numpy(res.weights[-1]).double(), res.layout)
    ids = [m.model_id for m in members]
    rows = pd.DataFrame({"model_id": ids, "cell_id": [f"w{width}-lr{m.lr}" for m in members],
                         "config.train.lr": [m.lr for m in members]})
    x = lambda a: torch.as_tensor(a).double()  # noqa: E731
    return StudyPopulation(f"mlp-w{width}", ids, rows, build().double().eval(), build, params, buffers,
                      x(data.x_train), torch.as_tensor(data.y_train), x(data.x_test), torch.as_tensor(data.y_test),
                      Classification(), res.layout, x)


@torch.no_grad()
def _score(net: torch.nn.Module, state: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    net.load_state_dict(state)
    logits = net(x)
    return float((logits.argmax(-1) == y).double().mean()), float(F.cross_entropy(logits, y))


def loop_population(pop: StudyPopulation, net: torch.nn.Module, options: dict, sets_by_k: dict) -> pd.DataFrame:
    """The same work one group at a time: align that group, merge, fix, score with a plain forward."""
    spec = permutation_spec(pop.model)
    state = {**pop.params, **pop.buffers}
    index = {m: i for i, m in enumerate(pop.model_ids)}
    fixes = ["none"] + (["repair"] if repairable(pop.model) else [])
    probe = pop.x_train[:options["probe"]]
    out = []
    for k, sets in sets_by_k.items():
        for s in sets:
            group = torch.tensor([[index[m] for m in s]])
            for method in options["methods"]:
                if method == "ste":
                    perms = ste_merge(pop.model, pop.objective, spec, pop.params, pop.buffers, group, pop.x_train,
                                      pop.y_train, steps=options["ste_steps"], lr=options["ste_lr"],
                                      seed=options["seed"])["perms"]
                else:
                    perms = align(method, pop, spec, group, options, options["seed"])
                members = _members(state, group, perms, spec)
                merged = {n: sum(mb[n] for mb in members) / k for n in state}
                for fix in fixes:
                    params = {n: merged[n] for n in pop.params}
                    if fix == "repair":
                        params = repair_merged(pop.model, [{n: mb[n] for n in pop.params} for mb in members], params,
                                               probe)
                    one = {n: v[0] for n, v in {**params, **{n: merged[n] for n in pop.buffers}}.items()}
                    acc, loss = _score(net, one, pop.x_test, pop.y_test)
                    _, train_loss = _score(net, one, pop.x_train, pop.y_train)
                    out.append({"models": list(s), "method": method, "fix": fix, "merged_acc": acc,
                                "merged_loss": loss, "merged_train_loss": train_loss})
    return pd.DataFrame(out)


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--ste-steps", type=int, default=50)
    args = h.start(ap)
    widths, lrs, steps = ((8,), (0.03,), 100) if args.quick else ((16, 64), (0.01, 0.03, 0.1), 600)
    if args.quick:
        args.ste_steps = 5
    data = load_task("mnist1d", 4000, 1000, 42)
    pops = [population(w, lrs, 3, steps, data) for w in widths]
    options = STUDY.resolve([f"study.ste_steps={args.ste_steps}"])
    sets = [_groups(pop, options["ks"], options["groups"], options["seed"]) for pop in pops]
    nets = [pop.build().double().eval() for pop in pops]  # the loop's models, built once
    n_groups = sum(len(v) for s in sets for v in s.values())

    ours, loop = h.interleave(
        lambda: pd.concat([merge_population(pop, options, s) for pop, s in zip(pops, sets)], ignore_index=True),
        lambda: pd.concat([loop_population(pop, net, options, s) for pop, net, s in zip(pops, nets, sets)],
                          ignore_index=True),
        rounds=args.rounds, warmup=args.warmup)
    keys = ["models", "method", "fix"]
    a = ours.value.assign(models=ours.value["models"].map(tuple)).set_index(keys).sort_index()
    b = loop.value.assign(models=loop.value["models"].map(tuple)).set_index(keys).sort_index()
    cols = ["merged_acc", "merged_loss", "merged_train_loss"]
    diff = np.abs(a.loc[b.index, cols].to_numpy() - b[cols].to_numpy()) if len(a) == len(b) else np.array([np.nan])
    h.emit([h.result(
        "merge_study", "per-group loop of the same work, one nn.Module per population for scoring", ours, loop,
        agree=h.within(diff, 1e-8),
        case=f"{n_groups} groups (k = 2, 3) x {len(options['methods'])} alignments x 2 fixes, STE "
             f"{args.ste_steps} steps, widths {'/'.join(map(str, widths))}",
        max_abs_diff=float(np.nanmax(diff)), groups=n_groups, rows=len(b), ste_steps=args.ste_steps)])


if __name__ == "__main__":
    main()
