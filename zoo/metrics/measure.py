"""The measure step: every metric family for one trained population, batched over its models.

A population holds whole cells (same config, different seeds), so every same-cell pair is inside
it: connectivity, CKA and aligned LMC run here on stacked states, right after training, and land
in the population's shard with the weights. A metric that cannot be computed for a model (it
diverged, its task has no such metric) is NaN, and ``metrics_note`` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..functional import Layout, from_flat
from ..spec import MetricsSpec

Tensor = torch.Tensor


@dataclass
class Measured:
    per_model: dict[str, np.ndarray] = field(default_factory=dict)  # column -> [M]
    per_checkpoint: dict[str, np.ndarray] = field(default_factory=dict)  # column -> [K, M] (checkpoint rows)
    notes: list[str] = field(default_factory=list)  # per model: why metrics are missing ("" if none)
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (pair, alignment)
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (model, step, layer)


def attempt(problems: list[str], family: str, fn):
    """Run one metric family; a family that cannot handle this architecture or task records why
    (one line in ``metrics_note``) instead of costing the build its trained weights."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure of an optional measurement is reported, not raised
        problems.append(f"{family}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return None


def same_cell_pairs(cell_ids: list[str], ok: np.ndarray, across_cells: bool = False) -> Tensor:
    """[K, 2] index pairs (i < j) of healthy models sharing a cell (or any two, ``across_cells``:
    a population holds one architecture), in population order."""
    pairs = [(i, j) for i in range(len(cell_ids)) for j in range(i + 1, len(cell_ids))
             if (across_cells or cell_ids[i] == cell_ids[j]) and ok[i] and ok[j]]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def _subset(state: dict[str, Tensor], idx: np.ndarray) -> dict[str, Tensor]:
    index = torch.as_tensor(idx, dtype=torch.long)
    return {k: v.index_select(0, index) for k, v in state.items()}


def _scatter(values: np.ndarray, idx: np.ndarray, m: int) -> np.ndarray:
    out = np.full((m, *values.shape[1:]), np.nan, dtype=np.float64)
    out[idx] = values
    return out


def _per_sample_loss(kind: str):
    if kind == "classification":
        return None  # the Hessian module's cross-entropy
    return lambda out, y: (out - y).pow(2).flatten(2).mean(2)


def hessian_columns(model: nn.Module, params, buffers, data, spec: MetricsSpec) -> dict[str, np.ndarray]:
    """Top eigenvalue(s), trace and (optionally) SLQ summary on the first
    hessian_batches x hessian_batch_size training samples."""
    from .hessian import hessian_metrics

    n = min(spec.hessian_batches * spec.hessian_batch_size, len(data.x_train))
    x, y = torch.as_tensor(data.x_train[:n]), torch.as_tensor(data.y_train[:n])
    batches = [(x[i:i + spec.hessian_batch_size], y[i:i + spec.hessian_batch_size])
               for i in range(0, n, spec.hessian_batch_size)]
    out = hessian_metrics(model, params, buffers, batches, top_k=spec.hessian_top_k,
                          max_iter=spec.hessian_max_iter, tol=spec.hessian_tol, seed=0,
                          density=spec.hessian_density, loss=_per_sample_loss(data.kind))
    cols = {}
    for k, v in out.items():
        v = np.asarray(v, dtype=np.float64)
        if v.ndim == 1:
            cols[k] = v
        elif k == "hessian.top_eigs" and v.shape[1] > 1:
            cols.update({f"hessian.eig_{i + 1}": v[:, i] for i in range(v.shape[1])})
        elif k in ("hessian.eig_iters", "hessian.eig_converged"):
            cols[k] = v[:, 0]
    return cols


def _splits(data) -> dict[str, tuple[Tensor, Tensor]]:
    return {"train": (torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)),
            "test": (torch.as_tensor(data.x_test), torch.as_tensor(data.y_test))}


def bend_steps(spec: MetricsSpec, trained_steps: int) -> int:
    """The Bezier bend's steps: ``metrics.bezier_steps``, or for -1 ``bezier_budget`` x the steps
    the models trained (at least 1)."""
    if spec.bezier_steps >= 0:
        return spec.bezier_steps
    return max(1, round(spec.bezier_budget * trained_steps))


def mc_tolerance(spec: MetricsSpec, data) -> float | None:
    """The phase labels' connected tolerance on mc: mc_tolerance x log(classes) (classification
    only; other tasks get the bend's relative default)."""
    from .phases import PhaseThresholds

    if data.kind != "classification":
        return None
    return PhaseThresholds(**spec.thresholds).mc_tolerance * math.log(data.n_classes)


def pair_tables(model: nn.Module, objective, params, buffers, pairs: Tensor, data,
                spec: MetricsSpec, lr: Tensor, optimizer: str, momentum: float,
                problems: list[str] | None = None, trained_steps: int = 1000, batch_size: int = 64) -> pd.DataFrame:
    """One row per (pair, alignment): naive curves, barriers, Bezier mc and CKA on the "none"
    rows; aligned barriers, distances and permutations on the others. ``lr`` [K]: each pair's
    training learning rate; the Bezier bend trains at ``BEND_LR_SCALE`` x it (or metrics.bezier_lr)
    with the cell's optimizer, batch size and ``bend_steps`` steps, cosine-annealed."""
    from .connectivity import BEND_LR_SCALE, bezier_connectivity, linear_connectivity
    from .similarity import pair_cka

    problems = [] if problems is None else problems
    splits = _splits(data)
    probe = torch.as_tensor(data.x_test[:spec.probe_size])
    bn_x = torch.as_tensor(data.x_train[:spec.probe_size])
    cols: dict[str, np.ndarray] = {}
    if spec.connectivity:
        cols.update(attempt(problems, "connectivity", lambda: linear_connectivity(
            model, objective, params, buffers, pairs, splits, n_points=spec.curve_points, bn_reset_x=bn_x)) or {})
        steps = bend_steps(spec, trained_steps)
        if steps:
            bend_lr = torch.full_like(lr, spec.bezier_lr) if spec.bezier_lr else lr * BEND_LR_SCALE
            cols.update(attempt(problems, "bezier", lambda: bezier_connectivity(
                model, objective, params, buffers, pairs, splits, splits["train"][0], splits["train"][1],
                steps=steps, lr=bend_lr, optimizer=optimizer, momentum=momentum, batch_size=batch_size,
                n_points=spec.curve_points, seed=0, bn_reset_x=bn_x, schedule="cosine",
                tol=mc_tolerance(spec, data))) or {})
    if spec.cka and data.kind == "classification":
        cka = attempt(problems, "cka", lambda: pair_cka(model, params, buffers, pairs, probe)) or {}
        cols.update({k: np.asarray(v) for k, v in cka.items()})
    rows = pd.DataFrame({"pair_index": np.arange(len(pairs)), "alignment": "none"})
    for k, v in cols.items():
        v = np.asarray(v)
        rows[k] = list(v) if v.ndim > 1 else v
    tables = [rows]
    if spec.lmc != "none":
        from .lmc import lmc_pairs

        alignments = {"weight": ("weight",), "ste": ("weight", "ste"),
                      "all": ("weight", "activation", "weight+repair")}[spec.lmc]
        aligned, perms = attempt(problems, "lmc", lambda: lmc_pairs(
            model, objective, params, buffers, pairs, splits, probe, alignments=alignments,
            n_points=spec.curve_points, layerwise=spec.lmc == "all")) or (pd.DataFrame(), {})
        for key, value in perms.items():  # "<alignment>/<perm name>" -> [K, n]
            alignment, _, name = key.partition("/")
            sel = aligned["alignment"] == alignment
            col = np.empty(len(aligned), dtype=object)
            for row in np.flatnonzero(sel.to_numpy()):
                col[row] = np.asarray(value)[aligned["pair_index"].iloc[row]]
            aligned[f"perm.{name}"] = col
        if len(aligned):
            tables.append(aligned)
    return pd.concat(tables, ignore_index=True)


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


PAIR_SUMMARIES = {"connectivity.mc": "mc.train.loss", "connectivity.barrier": "barrier_max.train.loss",
                  "similarity.cka": "cka.logits"}


def measure_population(model: nn.Module, objective, data, weights: np.ndarray, steps: list[int],
                       layout: Layout, model_ids: list[str], cell_ids: list[str], status: list[str],
                       spec: MetricsSpec, lr: list[float], optimizer: str, momentum: float,
                       batch_size: int = 64) -> Measured:
    """All metric families for one population; ``weights`` [K, M, P] are its checkpoints, the last
    at ``steps[-1]`` = the steps the models trained (the Bezier bend's budget follows it, with the
    models' ``batch_size``)."""
    m = len(model_ids)
    final = torch.as_tensor(weights[-1])
    ok = np.array([s == "ok" for s in status]) & np.isfinite(weights[-1]).all(1)
    idx = np.flatnonzero(ok)
    notes = ["" if o else "diverged: no landscape or spectral metrics" for o in ok]
    result = Measured(notes=notes)
    if not len(idx):
        return result
    params, buffers = from_flat(final, layout)
    params, buffers = _subset(params, idx), _subset(buffers, idx)
    model.eval()
    problems: list[str] = []

    if spec.hessian and data.kind != "pinn":
        for k, v in (attempt(problems, "hessian", lambda: hessian_columns(model, params, buffers, data, spec))
                     or {}).items():
            result.per_model[k] = _scatter(v, idx, m)
        if spec.hessian_checkpoints and "hessian.trace" in result.per_model:  # sharpness along training
            sharp = {name: np.full((len(steps), m), np.nan) for name in ("hessian.top_eig", "hessian.trace")}
            for k in range(len(steps)):
                p_k, b_k = from_flat(torch.as_tensor(weights[k]), layout)
                ok_k = np.isfinite(weights[k][idx]).all(1)
                if not ok_k.any():
                    continue
                cols = hessian_columns(model, _subset(p_k, idx[ok_k]), _subset(b_k, idx[ok_k]), data, spec)
                for name in sharp:
                    sharp[name][k, idx[ok_k]] = cols[name]
            result.per_checkpoint = sharp
    elif spec.hessian:
        problems.append("hessian: not computed for the physics-informed loss")

    if spec.spectral:
        attempt(problems, "spectral", lambda: _spectral(model, weights, steps, layout, model_ids, idx, spec, result))

    cells = [cell_ids[i] for i in idx]
    pairs = same_cell_pairs(cells, np.ones(len(idx), bool), across_cells=spec.pairs == "population")
    if len(pairs) and (spec.connectivity or spec.cka or spec.lmc != "none"):
        pair_lr = torch.tensor([lr[idx[i]] for i in pairs[:, 0].tolist()], dtype=torch.float64)  # model a's
        table = pair_tables(model, objective, params, buffers, pairs, data, spec, lr=pair_lr,
                            optimizer=optimizer, momentum=momentum, problems=problems,
                            trained_steps=steps[-1], batch_size=batch_size)
        a, b = idx[pairs[:, 0].numpy()], idx[pairs[:, 1].numpy()]
        k = table["pair_index"].to_numpy()
        table.insert(0, "model_a", [model_ids[i] for i in a[k]])
        table.insert(1, "model_b", [model_ids[i] for i in b[k]])
        table.insert(2, "cell_id", [cell_ids[i] for i in a[k]])
        if spec.pairs == "population":  # a's cell above; cross-cell rows stay out of per-model means
            table.insert(3, "cell_id_b", [cell_ids[i] for i in b[k]])
            table.insert(4, "cross_cell", table["cell_id"] != table["cell_id_b"])
        table["index_a"], table["index_b"] = a[k], b[k]
        result.per_model.update(pair_means(table, PAIR_SUMMARIES, m))
        result.pairs = table.drop(columns=["pair_index", "index_a", "index_b"])
    if problems:
        note = "; ".join(problems)
        result.notes = [n or note if i in set(idx.tolist()) else n for i, n in enumerate(result.notes)]
    return result


def _spectral(model, weights, steps, layout, model_ids, idx, spec, result) -> None:
    """Spectral tables of the chosen checkpoints; the final one's summary goes to the model rows."""
    from .spectral import spectral_tables

    chosen = range(len(steps)) if spec.spectral_checkpoints == "all" else [len(steps) - 1]
    layer_tables = []
    for k in chosen:
        p_k, _ = from_flat(torch.as_tensor(weights[k]), layout)
        layers, summary = spectral_tables(model, _subset(p_k, idx), [model_ids[i] for i in idx], steps[k],
                                          farms=spec.farms)
        layer_tables.append(layers)
        if k == len(steps) - 1:
            summary = summary.set_index("model_id").reindex(model_ids)
            for col in summary.columns:
                result.per_model[col] = summary[col].to_numpy(dtype=np.float64)
    result.layers = pd.concat(layer_tables, ignore_index=True)


__all__ = ["Measured", "PAIR_SUMMARIES", "bend_steps", "hessian_columns", "mc_tolerance", "measure_population",
           "pair_means", "pair_tables", "same_cell_pairs"]
