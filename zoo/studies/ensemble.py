"""`ensemble`: logit-averaged ensembles of k = 2..n models, within a cell and across cells by phase.

Why by phase: seeds of one cell may be functionally near-identical (high CKA, phase IV-B) or
diverse (low CKA, IV-A); an ensemble gains only from diversity. Rows:

- ``kind = cell``: k seeds of one cell (up to ``groups`` subsets per cell and k).
- ``kind = phase-consistent`` / ``phase-mixed``: k models, one from each of k different cells of
  the same architecture (equal size), the cells all in one phase or not all in one phase. The pair
  compares ensembles of equal size and capacity whose members differ only in temperature/load.

An ensemble predicts argmax of the mean logits of its members (Lakshminarayanan et al. average
probabilities; logits are what the issue asks for and what weight averaging approximates). Its
gain is its accuracy minus the mean member accuracy; ``similarity.cka`` (members' mean from
models.parquet) and ``pair_cka`` (mean over member pairs of pairs.parquet ``cka.logits``) are
joined so the gain can be read against CKA; ``members_cka`` is the members' logit CKA on the test
set, computed here because cross-cell pairs have no pairs.parquet row.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .base import Option, Study, axes_grid, by_phase, pick, populations, save_figure, study_seed, task_data


def ensemble_scores(logits: torch.Tensor, groups: list[tuple[int, ...]], y: torch.Tensor) -> dict[str, np.ndarray]:
    """Accuracy and cross-entropy [G] of the mean logits of each group (indices into logits [M, N, C])."""
    acc, loss = np.empty(len(groups)), np.empty(len(groups))
    by_size: dict[int, list[int]] = {}
    for g, members in enumerate(groups):
        by_size.setdefault(len(members), []).append(g)
    for rows in by_size.values():  # one batched mean per group size
        idx = torch.tensor([groups[g] for g in rows])
        mean = logits[idx].mean(1)  # [G, N, C]
        acc[rows] = (mean.argmax(-1) == y).double().mean(1).numpy()
        loss[rows] = F.cross_entropy(mean.transpose(1, 2), y.expand(len(rows), -1), reduction="none").mean(1).numpy()
    return {"acc": acc, "loss": loss}


def _cross_cell_groups(cells: pd.DataFrame, k: int, limit: int, seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """(kind, cell ids) of up to ``limit`` phase-consistent and ``limit`` phase-mixed k-sets of cells."""
    phase = cells["cell_phase"].fillna("unknown").astype(str).to_dict()
    consistent, mixed = [], []
    for combo in combinations(sorted(phase), k):
        (consistent if len({phase[c] for c in combo}) == 1 else mixed).append(combo)
    out = []
    for kind, combos in (("phase-consistent", consistent), ("phase-mixed", mixed)):
        out += [(kind, c[0]) for c in pick(combos, 1, limit, seed)]
    return out


def run(zoo, options: dict) -> pd.DataFrame:
    data = task_data(zoo)
    pair_cka = _pair_cka(zoo.pairs)
    cka = zoo.models.set_index("model_id")["similarity.cka"] if "similarity.cka" in zoo.models else None
    limit, tables = options["groups"], []
    for pop in populations(zoo, data):
        logits = pop.logits(pop.params, pop.buffers)
        y = pop.y_test
        member_acc = (logits.argmax(-1) == y).double().mean(1).numpy()
        index = {m: i for i, m in enumerate(pop.model_ids)}
        rows = pop.rows
        groups: list[dict] = []
        for cell, members in rows.groupby("cell_id", sort=False)["model_id"]:
            ids = sorted(members)
            for k in range(2, len(ids) + 1):
                for combo in pick(ids, k, limit, study_seed("ensemble", options["seed"], cell, k)):
                    groups.append({"kind": "cell", "k": k, "cell_id": cell, "models": list(combo),
                                   "cells": [cell] * k})
        if options["mixed"] and "cell_phase" in rows:
            cells = rows.groupby("cell_id")[["cell_phase"]].first()
            by_cell = rows.groupby("cell_id")["model_id"].apply(sorted).to_dict()
            largest = rows.groupby("cell_id").size().max()
            for k in range(2, min(largest, len(cells)) + 1):
                for kind, combo in _cross_cell_groups(cells, k, limit, study_seed("ensemble", options["seed"],
                                                                                   pop.arch_id, k)):
                    rng = np.random.default_rng(study_seed("ensemble-members", options["seed"], *combo))
                    members = [by_cell[c][rng.integers(len(by_cell[c]))] for c in combo]
                    groups.append({"kind": kind, "k": k, "cell_id": None, "models": members, "cells": list(combo)})
        if not groups:
            continue
        idx = [tuple(index[m] for m in g["models"]) for g in groups]
        scores = ensemble_scores(logits, idx, y)
        table = pd.DataFrame(groups)
        table["arch_id"] = pop.arch_id
        table["ensemble_acc"], table["ensemble_loss"] = scores["acc"], scores["loss"]
        table["member_mean_acc"] = [member_acc[list(i)].mean() for i in idx]
        table["member_best_acc"] = [member_acc[list(i)].max() for i in idx]
        table["gain"] = table["ensemble_acc"] - table["member_mean_acc"]
        table["gain_over_best"] = table["ensemble_acc"] - table["member_best_acc"]
        table["similarity.cka"] = [float(cka.loc[g["models"]].mean()) if cka is not None else np.nan
                                   for g in groups]
        table["pair_cka"] = [_mean_pair_cka(g["models"], pair_cka) for g in groups]
        table["members_cka"] = _members_cka(logits, idx)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _pair_cka(pairs: pd.DataFrame | None) -> dict[frozenset, float]:
    if pairs is None or "cka.logits" not in pairs:
        return {}
    raw = pairs[pairs["alignment"] == "none"]
    return {frozenset((a, b)): float(v) for a, b, v in zip(raw["model_a"], raw["model_b"], raw["cka.logits"])
            if np.isfinite(v)}


def _members_cka(logits: torch.Tensor, groups: list[tuple[int, ...]]) -> np.ndarray:
    """Mean linear CKA of the test logits over each group's member pairs [G] (one batched CKA)."""
    from ..metrics.similarity import linear_cka

    pairs = sorted({p for g in groups for p in combinations(sorted(g), 2)})
    idx = torch.tensor(pairs)
    cka = dict(zip(pairs, linear_cka(logits[idx[:, 0]], logits[idx[:, 1]]).tolist(), strict=True))
    return np.array([np.mean([cka[p] for p in combinations(sorted(g), 2)]) for g in groups])


def _mean_pair_cka(models: list[str], pair_cka: dict[frozenset, float]) -> float:
    values = [pair_cka[frozenset(p)] for p in combinations(models, 2) if frozenset(p) in pair_cka]
    return float(np.mean(values)) if values else np.nan


def plot(rows: pd.DataFrame, options: dict, path) -> None:
    fig, (left, right) = axes_grid(2)
    cell = rows[rows["kind"] == "cell"]
    for phase, group in by_phase(cell).items():
        curve = group.groupby("k")["gain"].mean()
        left.plot(curve.index, curve.to_numpy(), marker="o", label=f"cell, {phase}")
        right.scatter(group["members_cka"], group["gain"], s=14, label=f"cell, {phase}")
    for kind, style, marker in (("phase-consistent", "--", "s"), ("phase-mixed", ":", "x")):
        group = rows[rows["kind"] == kind]
        if len(group):
            curve = group.groupby("k")["gain"].mean()
            left.plot(curve.index, curve.to_numpy(), style, marker=marker, color="k", label=kind)
            right.scatter(group["members_cka"], group["gain"], s=14, marker=marker, color="k", label=kind)
    left.set_xlabel("ensemble size k")
    left.set_ylabel("accuracy gain over mean member")
    left.set_title("ensemble gain by phase")
    left.legend(fontsize=7)
    right.set_xlabel("members' logit CKA (test set)")
    right.set_ylabel("accuracy gain over mean member")
    right.set_title("gain vs CKA")
    right.legend(fontsize=7)
    save_figure(fig, path)


STUDY = Study(
    name="ensemble",
    summary="Logit-averaged ensembles of k = 2..n seeds of a cell, and phase-consistent vs phase-mixed "
            "ensembles across cells of one architecture; gain over the mean member against CKA.",
    row="ensemble (group of models)",
    options={
        "groups": Option(8, "at most this many member sets per (cell, k) and per (architecture, k, kind)",
                         type=int, low=1, high=10_000),
        "mixed": Option(True, "also ensembles across cells of one architecture (phase-consistent / -mixed)",
                        type=bool),
        "seed": Option(0, "seed of the member-set sampling", type=int, low=0),
    },
    run=run,
    plot=plot,
    columns={
        "kind": "cell (k seeds of one cell), phase-consistent or phase-mixed (k cells of one architecture, "
                "one model each, cells all in one phase or not)",
        "k / models / cells": "ensemble size, member model ids, their cells",
        "ensemble_acc / ensemble_loss": "test accuracy / cross-entropy of the mean of the members' logits",
        "member_mean_acc / member_best_acc": "mean / best test accuracy of the members alone",
        "gain / gain_over_best": "ensemble_acc - member_mean_acc / - member_best_acc",
        "similarity.cka": "mean over members of models.parquet similarity.cka (same-cell logit CKA)",
        "pair_cka": "mean over member pairs of pairs.parquet cka.logits (NaN where no pair row exists)",
        "members_cka": "mean over member pairs of linear CKA of their logits on the test set (computed here, "
                       "so cross-cell ensembles have one too)",
        "cell_phase": "phase of the cell; for cross-cell ensembles the common phase, or 'mixed'",
    },
)
