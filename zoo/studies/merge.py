"""`merge`: weight averaging of k = 2 and k >= 3 models of a cell, after four kinds of alignment.

Why by phase: whether k independently trained models can be averaged into one good model is the
practical face of (aligned) linear mode connectivity, which differs between phases. Per group of
k models of a cell, each alignment maps members 1..k-1 into member 0's basin, the aligned members
are averaged, and the merged model is scored against its members:

- ``naive``: no alignment.
- ``weight``: weight matching (Ainsworth et al. 2023); k = 2 aligns B to A, k >= 3 runs their
  MergeMany: repeatedly match each member to the mean of the others until no member moves.
- ``activation``: activation matching of each member to member 0 on a probe batch.
- ``ste``: the straight-through estimator on the merged model's training loss
  (``zoo.metrics.ste.ste_merge``; k = 2 is Alg. 3 on the midpoint).

Each merge is scored as is (``fix = none``) and, where it applies, corrected: ``bn_reset``
(BatchNorm statistics re-estimated on training samples) for BatchNorm nets, ``repair`` (REPAIR,
Jordan et al. 2023, k-way: each hidden unit's pre-activation mean/std set to the members' mean)
for Linear/Conv stacks. The barrier at the midpoint is the merged model's loss minus the members'
mean loss (for k = 2 exactly B_mid = L(theta(1/2)) - (L_A + L_B) / 2 of the aligned path).

Every family with a permutation spec (fx-traced, or declared: ViT, GPT, Mixer) takes every
alignment; where no fix applies (LayerNorm nets) or an architecture has no spec (then only the
naive average is computed, the other methods' rows are NaN), the rows' ``note`` says so.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..metrics.lmc import repairable, run_module, unit_stats
from ..metrics.matching import (
    activation_matching,
    apply_permutation_stacked,
    identity_perms,
    permutation_spec,
    weight_matching,
)
from ..metrics.paths import has_batchnorm, reset_batchnorm
from ..metrics.ste import ste_merge
from .base import Option, Study, axes_grid, by_phase, pick, populations, save_figure, study_seed, task_data

Tensor = torch.Tensor
METHODS = ("naive", "weight", "activation", "ste")


# ---------------------------------------------------------------- alignments of k members

def _compose(first: dict[str, Tensor], then: dict[str, Tensor]) -> dict[str, Tensor]:
    return {p: torch.gather(first[p], 1, then[p]) for p in first}


def _members(state: dict[str, Tensor], groups: Tensor, perms: dict[str, Tensor], spec) -> list[dict[str, Tensor]]:
    """Member j of every group [G, ...], permuted by perms[:, j], for j = 0..k-1."""
    return [apply_permutation_stacked(spec, {p: v[:, j] for p, v in perms.items()},
                                      {n: v[groups[:, j]] for n, v in state.items()}) for j in range(groups.shape[1])]


def merge_many(spec, params: dict[str, Tensor], groups: Tensor, seed: int = 0, max_iter: int = 100
               ) -> dict[str, Tensor]:
    """MergeMany (Ainsworth et al. 2023, git-re-basin ``match_many``) batched over groups [G, k]:
    per round, each member in a seeded random order is weight-matched to the mean of the other
    (already permuted) members; stop after a round in which no member of any group moved.
    Returns {p: LongTensor[G, k, n]} with member 0 unpermuted; for k = 2 this is weight matching of
    member 1 to member 0."""
    g, k = groups.shape
    perms = {p: v.unsqueeze(1).repeat(1, k, 1) for p, v in identity_perms(spec, g).items()}
    if k == 2:
        pairs = groups[:, :2]
        matched = weight_matching(spec, params, pairs, seed=seed)["perms"]
        return {p: torch.stack([perms[p][:, 0], matched[p]], 1) for p in perms}
    raw = [{n: v[groups[:, j]].double() for n, v in params.items()} for j in range(k)]
    index = torch.stack([torch.arange(g), torch.arange(g) + g], 1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        moved = False
        for j in torch.randperm(k, generator=gen).tolist():
            aligned = [apply_permutation_stacked(spec, {p: v[:, i] for p, v in perms.items()}, raw[i])
                       for i in range(k)]
            mean = {n: sum(aligned[i][n] for i in range(k) if i != j) / (k - 1) for n in params}
            both = {n: torch.cat([mean[n], aligned[j][n]]) for n in params}
            delta = weight_matching(spec, both, index, seed=seed)["perms"]
            changed = torch.stack([(d != torch.arange(d.shape[1])).any(1) for d in delta.values()]).any(0)
            new = _compose({p: v[:, j] for p, v in perms.items()}, delta)
            for p in perms:
                perms[p][:, j] = new[p]
            moved = moved or bool(changed.any())
        if not moved:
            break
    # express the common basin in member 0's units (member 0 unpermuted, like the other alignments)
    back = {p: v[:, 0].argsort(1) for p, v in perms.items()}
    return {p: torch.gather(v, 2, back[p].unsqueeze(1).expand_as(v)) for p, v in perms.items()}


def align(method: str, pop, spec, groups: Tensor, options: dict, seed: int) -> dict[str, Tensor]:
    """Permutations {p: [G, k, n]} mapping each member of each group into member 0's basin."""
    g, k = groups.shape
    if method == "naive":
        return {p: v.unsqueeze(1).repeat(1, k, 1) for p, v in identity_perms(spec, g).items()}
    if method == "weight":
        return merge_many(spec, pop.params, groups, seed=seed)
    if method == "activation":
        pairs = torch.stack([groups[:, 0].repeat(k - 1), groups[:, 1:].T.reshape(-1)], 1)
        matched = activation_matching(pop.model, spec, pop.params, pop.buffers, pairs, pop.x_train[:options["probe"]])
        return {p: torch.cat([torch.arange(n).expand(g, 1, n), matched[p].unflatten(0, (k - 1, g)).transpose(0, 1)], 1)
                for p, n in spec.sizes.items()}
    return ste_merge(pop.model, pop.objective, spec, pop.params, pop.buffers, groups, pop.x_train, pop.y_train,
                     steps=options["ste_steps"], lr=options["ste_lr"], seed=seed)["perms"]


# ---------------------------------------------------------------- REPAIR for k members

@torch.no_grad()
def repair_merged(model: nn.Sequential, members: list[dict[str, Tensor]], merged: dict[str, Tensor], x: Tensor,
                  eps: float = 1e-5) -> dict[str, Tensor]:
    """k-way REPAIR: layer by layer, every hidden unit's pre-activation mean and std on x (over samples
    and positions) in the merged model [G, ...] are set to the mean over the k members' (aligned)
    statistics by rescaling the unit's weight row and bias. For k = 2 this is ``lmc.repair`` at t = 1/2."""
    out = {n: v.clone() for n, v in merged.items()}
    g = next(iter(merged.values())).shape[0]
    h = x.to(next(iter(merged.values())).dtype).expand(g, *x.shape)
    hs = [h] * len(members)
    layers = [name for name, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    for name, m in model.named_children():
        zs = [run_module(name, m, member, hm) for member, hm in zip(members, hs, strict=True)]
        z = run_module(name, m, out, h)
        if name in layers[:-1]:
            stats = [unit_stats(zm) for zm in zs]
            mu_t, sd_t = sum(s[0] for s in stats) / len(stats), sum(s[1] for s in stats) / len(stats)
            mu, sd = unit_stats(z)
            scale = sd_t / (sd + eps)
            w, b = f"{name}.weight", f"{name}.bias"
            out[w] = out[w] * scale.view(*scale.shape, *[1] * (out[w].dim() - 2))
            out[b] = out[b] * scale + (mu_t - mu * scale)
            z = run_module(name, m, out, h)
        hs, h = zs, z
    return out


# ---------------------------------------------------------------- the study

def _groups(pop, ks: list[int], limit: int, seed: int) -> dict[int, list[tuple[str, ...]]]:
    out: dict[int, list[tuple[str, ...]]] = {}
    for cell, members in pop.rows.groupby("cell_id", sort=False)["model_id"]:
        for k in ks:
            out.setdefault(k, []).extend(pick(sorted(members), k, limit, study_seed("merge", seed, cell, k)))
    return {k: v for k, v in out.items() if v}


NO_FIX = ("no BatchNorm reset or REPAIR for this architecture (REPAIR here covers plain Linear/Conv stacks; "
          "its normalisation layers, e.g. LayerNorm, keep no running statistics to reset)")


def run(zoo, options: dict) -> pd.DataFrame:
    data = task_data(zoo)
    return pd.concat([merge_population(pop, options) for pop in populations(zoo, data)], ignore_index=True)


def merge_population(pop, options: dict, sets_by_k: dict[int, list[tuple[str, ...]]] | None = None) -> pd.DataFrame:
    """The study's rows for one population (``base.StudyPopulation``): every group of every k (default: the
    study's seeded member sets per cell), every method, every fix, all groups of a (k, method) at once."""
    try:
        spec, no_spec = permutation_spec(pop.model), ""
    except ValueError as e:  # no hidden-unit symmetry to align: only the naive average applies
        spec, no_spec = None, str(e)
    tables = []
    state = {**pop.params, **pop.buffers}
    test = pop.scores(pop.params, pop.buffers)
    train = pop.scores(pop.params, pop.buffers, pop.x_train, pop.y_train)
    index = {m: i for i, m in enumerate(pop.model_ids)}
    fixes = ["none"] + (["bn_reset"] if has_batchnorm(pop.model) else ["repair"] if repairable(pop.model) else [])
    probe = pop.x_train[:options["probe"]]
    if sets_by_k is None:
        sets_by_k = _groups(pop, options["ks"], options["groups"], options["seed"])
    for k, sets in sets_by_k.items():
        groups = torch.tensor([[index[m] for m in s] for s in sets])
        for method in options["methods"]:
            note = "" if len(fixes) > 1 else NO_FIX
            if spec is None and method != "naive":
                tables.append(_rows(pop, sets, groups, k, method, "none", np.nan, test, train, None, None,
                                    f"{method} alignment cannot apply: {no_spec}"))
                continue
            t0 = time.perf_counter()
            best_step = np.full(len(groups), np.nan)
            if spec is None:
                members = [{n: v[groups[:, j]] for n, v in state.items()} for j in range(k)]
            elif method == "ste":
                found = ste_merge(pop.model, pop.objective, spec, pop.params, pop.buffers, groups, pop.x_train,
                                  pop.y_train, steps=options["ste_steps"], lr=options["ste_lr"],
                                  seed=options["seed"])
                members, best_step = _members(state, groups, found["perms"], spec), found["best_step"]
            else:
                members = _members(state, groups, align(method, pop, spec, groups, options, options["seed"]), spec)
            align_s = (time.perf_counter() - t0) / len(groups)
            merged = {n: sum(mb[n] for mb in members) / k for n in state}
            params, buffers = {n: merged[n] for n in pop.params}, {n: merged[n] for n in pop.buffers}
            for fix in fixes:
                if fix == "bn_reset":
                    fixed_params, fixed_buffers = params, reset_batchnorm(pop.model, params, buffers, probe)
                elif fix == "repair":
                    fixed_params = repair_merged(pop.model, [{n: mb[n] for n in pop.params} for mb in members],
                                                 params, probe)
                    fixed_buffers = buffers
                else:
                    fixed_params, fixed_buffers = params, buffers
                table = _rows(pop, sets, groups, k, method, fix, align_s, test, train,
                              pop.scores(fixed_params, fixed_buffers),
                              pop.scores(fixed_params, fixed_buffers, pop.x_train, pop.y_train), note)
                table["ste_best_step"] = best_step
                tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _rows(pop, sets, groups, k, method, fix, align_s, test, train, merged_test, merged_train, note="") -> pd.DataFrame:
    idx = groups.numpy()
    member = {f"member_mean_{name}": values[key][idx].mean(1) for name, values, key in
              (("acc", test, "acc"), ("loss", test, "loss"), ("train_loss", train, "loss"))}
    none = np.full(len(idx), np.nan)
    merged_test = merged_test or {"acc": none, "loss": none}
    merged_train = merged_train or {"loss": none}
    return pd.DataFrame({
        "cell_id": pop.rows["cell_id"].to_numpy()[idx[:, 0]], "arch_id": pop.arch_id, "k": k,
        "models": [list(s) for s in sets], "method": method, "fix": fix,
        "merged_acc": merged_test["acc"], "merged_loss": merged_test["loss"], "merged_train_loss": merged_train["loss"],
        **member,
        "acc_gap": merged_test["acc"] - member["member_mean_acc"],
        "barrier_mid.test.loss": merged_test["loss"] - member["member_mean_loss"],
        "barrier_mid.train.loss": merged_train["loss"] - member["member_mean_train_loss"],
        "align_s_per_group": align_s, "note": note,
    })


def plot(rows: pd.DataFrame, options: dict, path) -> None:
    plain = rows[rows["fix"] == "none"]
    ks = sorted(plain["k"].unique())
    fig, axes = axes_grid(len(ks))
    methods = [m for m in METHODS if m in set(plain["method"])]
    for ax, k in zip(axes, ks, strict=True):
        phases = by_phase(plain[plain["k"] == k])
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            values = [g.loc[g["method"] == method, "acc_gap"].mean() for g in phases.values()]
            ax.bar(np.arange(len(phases)) + i * width, values, width, label=method)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(np.arange(len(phases)) + width * (len(methods) - 1) / 2, list(phases))
        ax.set_xlabel("phase")
        ax.set_ylabel("merged acc - members' mean acc")
        ax.set_title(f"merge of k = {k}")
        ax.legend(fontsize=8)
    save_figure(fig, path)


STUDY = Study(
    name="merge",
    summary="Weight averaging of k = 2 and k >= 3 models of a cell after naive, weight-matching (MergeMany "
            "for k >= 3), activation-matching and STE alignment, with BatchNorm reset / REPAIR where they apply.",
    row="(group of k models of a cell, alignment method, fix)",
    options={
        "ks": Option([2, 3], "merge sizes k (cells with fewer models are skipped)", type=list, item=int, low=2,
                     high=64),
        "groups": Option(4, "at most this many member sets per (cell, k)", type=int, low=1, high=1000),
        "methods": Option(list(METHODS), "alignments to compare", type=list, item=str, choices=METHODS),
        "ste_steps": Option(200, "STE steps (batches of 128 training samples)", type=int, low=1, high=100_000),
        "ste_lr": Option(0.1, "STE learning rate of the free weights (SGD, momentum 0.9)", low=1e-6, high=100.0),
        "probe": Option(512, "training samples for activation matching, REPAIR and BatchNorm resets", type=int,
                        low=2, high=1_000_000),
        "seed": Option(0, "seed of member-set sampling and matching orders", type=int, low=0),
    },
    run=run,
    plot=plot,
    columns={
        "k / models": "merge size and member model ids (member 0 is the reference basin)",
        "method": "naive, weight (MergeMany for k >= 3), activation or ste",
        "fix": "none, bn_reset (BatchNorm nets) or repair (Linear/Conv stacks, k-way REPAIR)",
        "merged_acc / merged_loss / merged_train_loss": "test accuracy, test and training loss of the merged model",
        "member_mean_acc / member_mean_loss / member_mean_train_loss": "the members' means",
        "acc_gap": "merged_acc - member_mean_acc (0: merging loses nothing)",
        "barrier_mid.<split>.loss": "merged loss - members' mean loss (k = 2: the midpoint barrier of the aligned "
                                    "path; > 0 a barrier)",
        "align_s_per_group": "wall time of the alignment per group (seconds)",
        "ste_best_step": "STE rows: the step at which the kept permutation was found (of ste_steps; late steps "
                         "mean a longer search could still improve it)",
        "note": "why a fix or an alignment does not apply to this architecture (empty: all apply)",
    },
)
