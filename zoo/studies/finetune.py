"""`finetune`: transfer of each model to a related target task in N steps, against training from scratch.

Why by phase: whether what a model learnt transfers depends on how it learnt it. The target task
is the zoo's own task changed in one controlled way: ``relabel`` permutes the classes (a seeded
derangement: the features still apply, the read-out must be relearnt), ``noise`` adds Gaussian
noise (``strength`` x the training inputs' std, fresh draws for train and test), ``translate``
moves the inputs ``strength`` positions along their last axis. Every model is fine-tuned for
``steps`` SGD steps (its own lr x ``lr_scale``, momentum and batch size, clean target labels) and so
is the same architecture from the model's own initialisation (the published step-0 checkpoint), on
the same batches; both are trained together as one stacked population.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetError
from .base import (
    Option,
    Study,
    axes_grid,
    batch_order,
    by_phase,
    populations,
    save_figure,
    study_seed,
    task_data,
    train_stacked,
)
from .shift import shifted

TARGETS = ("relabel", "noise", "translate")


def target_task(data, target: str, strength: float, seed: int):
    """(x_train, y_train, x_test, y_test) of the target task, as tensors of the raw task shape."""
    x_train, x_test = torch.as_tensor(data.x_train), torch.as_tensor(data.x_test)
    y_train, y_test = torch.as_tensor(data.y_train), torch.as_tensor(data.y_test)
    if target == "relabel":
        perm = relabelling(data.n_classes, seed)
        return x_train, perm[y_train], x_test, perm[y_test]
    if not x_train.is_floating_point():
        raise DatasetError(f"finetune target {target} needs real-valued inputs; {data.name} has token inputs")
    if target == "translate" and abs(int(strength)) >= x_train.shape[-1]:
        raise DatasetError(f"study.strength: a translation must be shorter than the inputs ({x_train.shape[-1]})")
    scale = float(x_train.std())
    return (shifted(x_train, target, strength, scale, seed), y_train,
            shifted(x_test, target, strength, scale, seed + 1), y_test)


def relabelling(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of n classes with no fixed point (a random cyclic shift of a shuffle)."""
    g = torch.Generator().manual_seed(seed % (2**63 - 1))
    order = torch.randperm(n, generator=g)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(1)  # class order[i] -> order[i-1]: one n-cycle
    return perm


def run(zoo, options: dict) -> pd.DataFrame:
    data = task_data(zoo)
    seed = study_seed("finetune", options["target"], options["seed"])
    x_tr, y_tr, x_te, y_te = target_task(data, options["target"], options["strength"], seed)
    steps, tables = options["steps"], []
    for pop in populations(zoo, data):
        view = zoo.arch(pop.arch_id)
        if 0 not in view.steps():
            raise DatasetError(f"arch {pop.arch_id} has no step-0 checkpoint to train from scratch")
        init = pop.stacked(torch.from_numpy(view.weights(pop.model_ids, step=0)).to(pop.x_train.dtype))
        x_train, x_test = pop.adapt(x_tr), pop.adapt(x_te)
        m = len(pop.model_ids)
        both = {n: torch.cat([pop.params[n], init[0][n]]) for n in pop.params}
        both_buffers = {n: torch.cat([pop.buffers[n], init[1][n]]) for n in pop.buffers}
        batch = int(pop.rows["config.train.batch_size"].iloc[0])
        order = torch.stack([batch_order(len(x_train), steps, batch, study_seed(mid, "finetune", options["seed"]))
                             for mid in pop.model_ids]).repeat(2, 1, 1)
        lr = torch.tensor(pop.rows["config.train.lr"].to_numpy(float)).repeat(2) * options["lr_scale"]
        momentum = torch.tensor(pop.rows["config.train.momentum"].to_numpy(float)).repeat(2)
        zero_shot = pop.scores(pop.params, pop.buffers, x_test, y_te)
        tuned, tuned_buffers = train_stacked(pop, both, both_buffers, x_train, y_tr.expand(2 * m, -1), order, lr,
                                             momentum)
        score = pop.scores(tuned, tuned_buffers, x_test, y_te)
        tables.append(pd.DataFrame({
            "model_id": pop.model_ids, "cell_id": pop.rows["cell_id"].to_numpy(), "target": options["target"],
            "steps": steps, "source_acc": pop.rows["test_acc"].to_numpy(), "zero_shot_acc": zero_shot["acc"],
            "finetuned_acc": score["acc"][:m], "finetuned_loss": score["loss"][:m],
            "scratch_acc": score["acc"][m:], "scratch_loss": score["loss"][m:],
            "gain": score["acc"][:m] - score["acc"][m:]}))
    return pd.concat(tables, ignore_index=True)


def plot(rows: pd.DataFrame, options: dict, path) -> None:
    fig, (left, right) = axes_grid(2)
    phases = by_phase(rows)
    left.bar(list(phases), [g["gain"].mean() for g in phases.values()])
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_xlabel("phase")
    left.set_ylabel("fine-tuned acc - scratch acc")
    left.set_title(f"transfer to {options['target']} in {options['steps']} steps")
    for phase, group in phases.items():
        right.scatter(group["scratch_acc"], group["finetuned_acc"], s=14, label=phase)
    lim = [float(np.nanmin(rows[["scratch_acc", "finetuned_acc"]])), float(np.nanmax(rows[["scratch_acc",
                                                                                            "finetuned_acc"]]))]
    right.plot(lim, lim, color="grey", linestyle=":")
    right.set_xlabel("from scratch: target accuracy")
    right.set_ylabel("fine-tuned: target accuracy")
    right.legend(fontsize=8, title="phase")
    save_figure(fig, path)


STUDY = Study(
    name="finetune",
    summary="Each model fine-tuned on a related target task (relabelled classes, input noise or translation) "
            "for N steps, against the same architecture trained from its own initialisation on the same batches.",
    row="model",
    options={
        "target": Option("relabel", "target task: relabel (class derangement), noise or translate", type=str,
                         choices=TARGETS),
        "strength": Option(1.0, "noise std (units of the inputs' std) or translation (positions)", low=0.0,
                           high=1000.0),
        "steps": Option(100, "fine-tuning SGD steps", type=int, low=1, high=100_000),
        "lr_scale": Option(1.0, "lr as a multiple of the model's training lr", low=1e-6, high=100.0),
        "seed": Option(0, "seed of the target task and the batch order", type=int, low=0),
    },
    run=run,
    plot=plot,
    columns={
        "target / steps": "target task and fine-tuning steps",
        "source_acc": "the model's published test accuracy on the source task",
        "zero_shot_acc": "the model's accuracy on the target test set before fine-tuning",
        "finetuned_acc / finetuned_loss": "target test accuracy / loss after fine-tuning from the model",
        "scratch_acc / scratch_loss": "the same from the model's own initialisation (step-0 checkpoint)",
        "gain": "finetuned_acc - scratch_acc",
    },
)
