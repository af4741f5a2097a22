"""`finetune`: transfer of each model to a related target task in N steps, against training from scratch.

Why by phase: whether what a model learnt transfers depends on how it learnt it. The target task
is the zoo's own task changed in one controlled way:

- ``regenerate`` (default): the task drawn again by its own generator with changed generative
  knobs, a related task rather than a corruption of the old one. MNIST-1D (``regenerated``): the
  ``mnist1d`` generator the zoo's task comes from, with the zoo's data seed and sizes, the template
  shift (the random translation of each digit template, ``max_translation``: 48 in the source)
  set to ``translation`` and both noise scales (correlated background 0.25, i.i.d. 0.02)
  multiplied by ``noise_scale``; with the source's knobs it reproduces the zoo's data exactly.
  Other tasks have no generator knobs: choose one of the three below.
- ``relabel`` permutes the classes (a seeded derangement: the features still apply, the read-out
  must be relearnt);
- ``noise`` adds Gaussian noise (``strength`` x the training inputs' std, fresh draws for train
  and test); ``translate`` moves the inputs ``strength`` positions along their last axis.

Every model is fine-tuned for
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

TARGETS = ("regenerate", "relabel", "noise", "translate")
MNIST1D_TRANSLATION, MNIST1D_NOISE = 48, (0.25, 0.02)  # the mnist1d generator's defaults (the zoo's task)


def regenerated(task: dict, translation: int = MNIST1D_TRANSLATION, noise_scale: float = 1.0) -> dict:
    """MNIST-1D drawn again by its generator (the ``mnist1d`` package, as ``zoo.generators.tasks.mnist1d``
    draws the zoo's task: its default arguments, seed ``task["data_seed"]``, float32 inputs, the first
    n_train / n_test samples) with the template shift ``max_translation = translation`` and both
    noise scales times ``noise_scale``. {"x_train", "y_train", "x_test", "y_test"} as numpy arrays,
    cached as .npz under the data root like the task itself; numpy's global random state is left as
    it was."""
    from ..io import atomic_path, default_data_root

    seed = int(task["data_seed"])
    cache = default_data_root() / f"mnist1d-seed{seed}-translation{int(translation)}-noise{noise_scale!r}.npz"
    if not cache.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = seed
        args.max_translation = int(translation)
        args.corr_noise_scale = MNIST1D_NOISE[0] * noise_scale
        args.iid_noise_scale = MNIST1D_NOISE[1] * noise_scale
        state = np.random.get_state()
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(state)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=d["x"].astype(np.float32), y=d["y"].astype(np.int64),
                     x_test=d["x_test"].astype(np.float32), y_test=d["y_test"].astype(np.int64))
    n_train, n_test = int(task["n_train"]), int(task["n_test"])
    with np.load(cache) as d:
        return {"x_train": d["x"][:n_train], "y_train": d["y"][:n_train],
                "x_test": d["x_test"][:n_test], "y_test": d["y_test"][:n_test]}


def target_task(data, target: str, strength: float, seed: int, task: dict | None = None,
                translation: int = MNIST1D_TRANSLATION, noise_scale: float = 1.0):
    """(x_train, y_train, x_test, y_test) of the target task, as tensors of the raw task shape.
    ``task``: the zoo's [task] section (``regenerate`` draws from its data seed and sizes)."""
    if target == "regenerate":
        if data.name != "mnist1d" or task is None:
            raise DatasetError(f"study.target=regenerate needs a task with a generator to redraw (mnist1d); "
                               f"for {data.name} choose study.target=relabel, noise or translate")
        d = regenerated(task, translation, noise_scale)
        return tuple(torch.as_tensor(d[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
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
    x_tr, y_tr, x_te, y_te = target_task(data, options["target"], options["strength"], seed,
                                         zoo.manifest["spec"]["task"], options["translation"], options["noise_scale"])
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
        knobs = ({"translation": options["translation"], "noise_scale": options["noise_scale"]}
                 if options["target"] == "regenerate" else {"strength": options["strength"]})
        tables.append(pd.DataFrame({
            "model_id": pop.model_ids, "cell_id": pop.rows["cell_id"].to_numpy(), "target": options["target"],
            **knobs, "steps": steps, "source_acc": pop.rows["test_acc"].to_numpy(), "zero_shot_acc": zero_shot["acc"],
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
    summary="Each model fine-tuned on a related target task (MNIST-1D regenerated with a changed template shift "
            "and noise scale; or relabelled classes, input noise or translation) for N steps, against the same "
            "architecture trained from its own initialisation on the same batches.",
    row="model",
    options={
        "target": Option("regenerate", "target task: regenerate (the task redrawn by its generator with changed "
                         "knobs; MNIST-1D), relabel (class derangement), noise or translate", type=str,
                         choices=TARGETS),
        "translation": Option(12, "regenerate: MNIST-1D template shift, the generator's max_translation (source 48)",
                              type=int, low=1, high=72),
        "noise_scale": Option(2.0, "regenerate: MNIST-1D noise scales (correlated 0.25, i.i.d. 0.02) times this "
                              "(source 1)", low=0.0, high=100.0),
        "strength": Option(1.0, "noise / translate: noise std (units of the inputs' std) or translation "
                           "(positions)", low=0.0, high=1000.0),
        "steps": Option(100, "fine-tuning SGD steps", type=int, low=1, high=100_000),
        "lr_scale": Option(1.0, "lr as a multiple of the model's training lr", low=1e-6, high=100.0),
        "seed": Option(0, "seed of the target task (relabel, noise) and of the batch order", type=int, low=0),
    },
    run=run,
    plot=plot,
    columns={
        "target / steps": "target task and fine-tuning steps",
        "translation / noise_scale (regenerate) or strength": "the target's knobs",
        "source_acc": "the model's published test accuracy on the source task",
        "zero_shot_acc": "the model's accuracy on the target test set before fine-tuning",
        "finetuned_acc / finetuned_loss": "target test accuracy / loss after fine-tuning from the model",
        "scratch_acc / scratch_loss": "the same from the model's own initialisation (step-0 checkpoint)",
        "gain": "finetuned_acc - scratch_acc",
    },
)
