"""`prune`: global magnitude pruning at increasing sparsity, with and without a short fine-tune.

Why by phase: flat, well-connected minima (phases III/IV) are expected to tolerate pruning better
than sharp ones. Per model, the weight matrices (trainable tensors with >= 2 dims; biases and
normalisation parameters are kept) are pooled and the ``round(s * count)`` smallest in magnitude
are zeroed (one global threshold per model, ties broken by position). The fine-tune is SGD with
the model's own lr and momentum on its own training data, masks held (pruned weights stay zero).
The critical sparsity is the first listed sparsity whose accuracy falls below ``threshold`` x the
dense accuracy (NaN if none does).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .base import (
    Option,
    Study,
    axes_grid,
    by_phase,
    own_training_data,
    populations,
    save_figure,
    task_data,
    train_stacked,
)

Tensor = torch.Tensor


def prunable(params: dict[str, Tensor]) -> list[str]:
    """Names of the stacked tensors [M, ...] global magnitude pruning acts on: weight matrices/kernels."""
    return [k for k, v in params.items() if v.dim() >= 3]


def magnitude_masks(params: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Per model, 0/1 masks zeroing the round(sparsity * count) smallest |w| over all prunable tensors."""
    names = prunable(params)
    m = params[names[0]].shape[0]
    flat = torch.cat([params[k].reshape(m, -1) for k in names], 1)
    n_prune = round(sparsity * flat.shape[1])
    order = torch.sort(flat.abs(), dim=1, stable=True).indices
    keep = torch.ones_like(flat)
    keep.scatter_(1, order[:, :n_prune], 0.0)
    sizes = [params[k][0].numel() for k in names]
    return {k: part.view_as(params[k]) for k, part in zip(names, keep.split(sizes, 1), strict=True)}


def critical(sparsities: np.ndarray, retained: np.ndarray, threshold: float) -> float:
    """First sparsity (ascending) whose retained accuracy is below ``threshold``; NaN if none."""
    below = np.flatnonzero(retained < threshold)
    return float(sparsities[below[0]]) if below.size else np.nan


def run(zoo, options: dict) -> pd.DataFrame:
    data = task_data(zoo)
    sparsities = sorted(options["sparsities"])
    steps = options["finetune_steps"]
    tables = []
    for pop in populations(zoo, data):
        dense = pop.scores(pop.params, pop.buffers)["acc"]
        if steps:
            labels, order = own_training_data(pop, torch.as_tensor(data.y_train), data.n_classes, steps, "prune")
            lr = torch.tensor(pop.rows["config.train.lr"].to_numpy(float)) * options["lr_scale"]
            momentum = torch.tensor(pop.rows["config.train.momentum"].to_numpy(float))
        for s in sparsities:
            masks = magnitude_masks(pop.params, s)
            pruned = {k: v * masks[k] if k in masks else v for k, v in pop.params.items()}
            score = pop.scores(pruned, pop.buffers)
            row = {"model_id": pop.model_ids, "cell_id": pop.rows["cell_id"].to_numpy(), "sparsity": s,
                   "n_pruned": sum(int((1 - v[0]).sum()) for v in masks.values()),
                   "dense_acc": dense, "pruned_acc": score["acc"], "pruned_loss": score["loss"],
                   "retained": score["acc"] / dense}
            if steps:
                tuned, tuned_buffers = train_stacked(pop, pruned, pop.buffers, pop.x_train, labels, order, lr,
                                                     momentum, masks)
                tuned_score = pop.scores(tuned, tuned_buffers)
                row.update(finetuned_acc=tuned_score["acc"], finetuned_loss=tuned_score["loss"],
                           retained_finetuned=tuned_score["acc"] / dense)
            tables.append(pd.DataFrame(row))
    rows = pd.concat(tables, ignore_index=True)
    for col, out in (("retained", "critical_sparsity"), ("retained_finetuned", "critical_sparsity_finetuned")):
        if col in rows:
            crit = {m: critical(g["sparsity"].to_numpy(), g[col].to_numpy(), options["threshold"])
                    for m, g in rows.groupby("model_id")}
            rows[out] = rows["model_id"].map(crit)
    return rows


def plot(rows: pd.DataFrame, options: dict, path) -> None:
    fig, axes = axes_grid(2)
    for ax, col, title in ((axes[0], "retained", "pruned"), (axes[1], "retained_finetuned", "pruned + fine-tuned")):
        if col not in rows:
            ax.set_visible(False)
            continue
        for phase, group in by_phase(rows).items():
            curve = group.groupby("sparsity")[col].mean()
            ax.plot(curve.index, curve.to_numpy(), marker="o", label=phase)
        ax.axhline(options["threshold"], color="grey", linestyle=":")
        ax.set_xlabel("sparsity (fraction of weights zeroed)")
        ax.set_ylabel("accuracy / dense accuracy")
        ax.set_title(title)
        ax.legend(fontsize=8, title="phase")
    save_figure(fig, path)


STUDY = Study(
    name="prune",
    summary="Global magnitude pruning of the weight matrices at increasing sparsity, with and without a "
            "short fine-tune (masks held); accuracy retained and the critical sparsity.",
    row="(model, sparsity)",
    options={
        "sparsities": Option([0.5, 0.7, 0.8, 0.9, 0.95, 0.98], "fractions of weights zeroed",
                             type=list, item=float, low=0.0, high=0.999),
        "finetune_steps": Option(50, "SGD steps of the masked fine-tune (0: none)", type=int, low=0, high=100_000),
        "lr_scale": Option(1.0, "fine-tune lr as a multiple of the model's training lr", low=1e-6, high=100.0),
        "threshold": Option(0.9, "critical sparsity: accuracy below this fraction of dense", low=0.0, high=1.0),
    },
    run=run,
    plot=plot,
    columns={
        "sparsity / n_pruned": "fraction and number of weight-matrix entries zeroed (global magnitude, per model)",
        "dense_acc": "test accuracy before pruning (equals models.parquet test_acc)",
        "pruned_acc / pruned_loss / retained": "test accuracy / loss after pruning; retained = pruned_acc / dense_acc",
        "finetuned_acc / finetuned_loss / retained_finetuned": "the same after the masked fine-tune",
        "critical_sparsity(_finetuned)": "first sparsity whose retained accuracy is below the threshold (NaN: none)",
    },
)
