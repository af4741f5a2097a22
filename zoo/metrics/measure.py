"""The measure step: every registered metric (``zoo/metrics/registry.py``) for one trained
population, batched over its models.

A population holds whole cells (same config, different seeds), so every same-cell pair is inside
it: pair metrics run here on stacked states, right after training, and land in the population's
shard with the weights. A metric that cannot be computed for a model (it diverged, its task has
no such metric, the metric failed) is NaN, and ``metrics_note`` says why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import Measured, Population, attempt
from .registry import METRICS


def pair_means(pairs: pd.DataFrame, columns: dict[str, str], m: int) -> dict[str, np.ndarray]:
    """Per-model means over the naive pair rows a model takes part in: {out column: [M]}.

    Only finite pair values count: one pair whose metric could not be computed must not blank
    the mean of every model it touches (NaN only where a model has no finite pair)."""
    naive = pairs[pairs["alignment"] == "none"] if len(pairs) else pairs
    if "cross_cell" in naive:
        naive = naive[~naive["cross_cell"].astype(bool)]
    out = {}
    for name, col in columns.items():
        if col not in naive:
            continue
        total, count = np.zeros(m), np.zeros(m)
        values = naive[col].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        for side in ("a", "b"):
            idx = naive[f"index_{side}"].to_numpy()[finite]
            np.add.at(total, idx, values[finite])
            np.add.at(count, idx, 1)
        out[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def merge_pair_rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per (pair_index, alignment) from the pair metrics' rows (each metric its own
    columns), in the order the alignments first appear, then by pair."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    keys = ["pair_index", "alignment"]
    merged = frames[0].set_index(keys)
    for frame in frames[1:]:  # a column two metrics share (an aligned curve) keeps both metrics' rows
        merged = merged.combine_first(frame.set_index(keys))
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    merged = merged.reset_index()[columns]
    order = {a: i for i, a in enumerate(dict.fromkeys(a for f in frames for a in f["alignment"]))}
    rank = merged["alignment"].map(order) * (merged["pair_index"].max() + 1) + merged["pair_index"]
    return merged.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)


def measure_population(pop: Population, spec, report=None) -> Measured:
    """Every enabled metric that applies to the population's task; ``spec`` is the MetricsSpec.
    ``report(stage, done, total)`` (a progress Reporter or Unit) hears "measure" i of n metrics."""
    result = Measured(notes=["" if i in set(pop.healthy.tolist()) else "diverged: no landscape or spectral metrics"
                             for i in range(pop.m)])
    if not len(pop.healthy):
        return result
    pop.model.eval()
    problems: list[str] = []
    pair_frames: list[pd.DataFrame] = []
    pairs = pop.pairs(spec.pairs == "population")
    # a metric undefined for the task kind writes no column (absent by rule, not missing)
    chosen = [m for m in METRICS.values()
              if m.enabled(spec) and m.applies(pop.data.kind) and not (m.needs_pairs and not len(pairs))]
    for i, metric in enumerate(chosen):
        if report:
            report("measure", i, len(chosen))
        out = attempt(problems, metric.name, lambda metric=metric: metric.compute(pop, spec))
        if out is None:
            continue
        result.per_model.update(out.per_model)
        result.per_checkpoint.update(out.per_checkpoint)
        for i, note in enumerate(out.notes):
            if note:
                result.notes[i] = "; ".join(n for n in (result.notes[i], note) if n)
        for name, table in out.tables.items():
            if name == "pairs":
                pair_frames.append(table)
            elif len(table):
                result.tables[name] = pd.concat([result.tables[name], table], ignore_index=True) \
                    if name in result.tables else table
    table = merge_pair_rows(pair_frames)
    if len(table):
        result.per_model.update(_pair_columns(pop, spec, table, result))
    if problems:
        note = "; ".join(problems)
        for i in pop.healthy:
            result.notes[i] = "; ".join(n for n in (result.notes[i], note) if n)
    return result


def _pair_columns(pop: Population, spec, table: pd.DataFrame, result: Measured) -> dict[str, np.ndarray]:
    """Name the pairs' models in ``table`` (stored as ``result.tables["pairs"]``) and return the
    registered per-model pair summaries."""
    pairs = pop.pairs(spec.pairs == "population")
    ids, cells = pop.model_ids, pop.cell_ids
    k = table["pair_index"].to_numpy()
    a, b = pop.healthy[pairs[:, 0].numpy()][k], pop.healthy[pairs[:, 1].numpy()][k]
    table.insert(0, "model_a", [ids[i] for i in a])
    table.insert(1, "model_b", [ids[i] for i in b])
    table.insert(2, "cell_id", [cells[i] for i in a])
    if spec.pairs == "population":  # a's cell above; cross-cell rows stay out of per-model means
        table.insert(3, "cell_id_b", [cells[i] for i in b])
        table.insert(4, "cross_cell", table["cell_id"] != table["cell_id_b"])
    table["index_a"], table["index_b"] = a, b
    summaries = {k: v for metric in METRICS.values() for k, v in metric.pair_summaries.items()}
    result.tables["pairs"] = table.drop(columns=["pair_index", "index_a", "index_b"])
    return pair_means(table, summaries, pop.m)


__all__ = ["measure_population", "merge_pair_rows", "pair_means"]
