"""What every study shares: the Study record, typed options, and a published zoo as populations.

A study reads a published zoo and computes something downstream of training (ensembles, merges,
pruning, fine-tuning, shifts). It never loops over models in Python where it can avoid it: each
architecture's models are loaded as one stacked population (``StudyPopulation``) and evaluated with
the same vectorized forward as training and metrics (``zoo.functional.make_forward``), in float64
on the CPU like the trainer's checkpoint evaluation, so a study's numbers at "no change" equal the
published ones.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..datasets.reader import Zoo
from ..errors import DatasetError, SpecError
from ..functional import Layout, evaluate, from_flat, make_forward
from ..generators.tasks import TaskData, load_task_section
from ..generators.tasks.objectives import objective_for
from ..progress import track

Tensor = torch.Tensor


# ---------------------------------------------------------------- options and the Study record

@dataclass(frozen=True)
class Option:
    """One study option: its default, type (``list`` takes ``item`` elements), bounds and meaning."""

    default: Any
    help: str
    type: type = float
    item: type | None = None  # element type of a list option
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None

    def check(self, name: str, value: Any) -> Any:
        """``value`` converted to the option's type, or SpecError naming ``study.<name>``."""
        where = f"study.{name}"
        if self.type is list:
            if not isinstance(value, list) or not value:
                raise SpecError(f"{where}: expected a non-empty list of {self.item.__name__}, got {value!r}")
            return [self._scalar(where, v, self.item) for v in value]
        return self._scalar(where, value, self.type)

    def _scalar(self, where: str, v: Any, t: type) -> Any:
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, bool) and t is not bool or not isinstance(v, t):
            raise SpecError(f"{where}: expected {t.__name__}, got {type(v).__name__} {v!r}")
        if t is float and not math.isfinite(v):
            raise SpecError(f"{where}: must be a finite number, got {v!r}")
        if self.low is not None and v < self.low or self.high is not None and v > self.high:
            raise SpecError(f"{where}: {v!r} is outside [{self.low}, {self.high}]")
        if self.choices is not None and v not in self.choices:
            raise SpecError(f"{where}={v!r} is not allowed; choose one of: {', '.join(map(str, self.choices))}")
        return v


@dataclass(frozen=True)
class Study:
    """A downstream study: adding one is one file with a ``STUDY = Study(...)`` and a registry line."""

    name: str
    summary: str  # one line: what it measures (help text, dataset card)
    row: str  # what one row of studies/<name>.parquet is
    options: dict[str, Option]
    run: Callable[[Zoo, dict], pd.DataFrame]  # rows with model_id / model_a, model_b / models, and cell_id
    plot: Callable[[pd.DataFrame, dict, Path], None]  # draws the study's PNG to the given path
    columns: dict[str, str]  # column -> meaning, for the dataset card

    def resolve(self, overrides: list[str]) -> dict:
        """Defaults updated by ``study.key=value`` items, each checked; SpecError on any problem."""
        from ..spec import parse_value

        values = {k: o.default for k, o in self.options.items()}
        for item in overrides:
            key, eq, text = item.partition("=")
            section, dot, name = key.strip().partition(".")
            if not eq or section != "study" or not dot:
                raise SpecError(f"--set {item!r}: expected study.key=value, e.g. study.{next(iter(self.options))}=...")
            if name not in self.options:
                raise SpecError(f"--set {item!r}: study {self.name} has no option {name!r}; options: "
                                + ", ".join(self.options))
            values[name] = parse_value(text.strip())
        return {k: self.options[k].check(k, v) for k, v in values.items()}


# ---------------------------------------------------------------- a zoo as populations

def task_data(zoo: Zoo) -> TaskData:
    """The zoo's task data (train and test), for classification zoos only: studies score accuracy."""
    try:
        data = load_task_section(zoo.manifest["spec"]["task"])
    except (ValueError, RuntimeError, OSError) as e:
        raise DatasetError(f"cannot load the zoo's task data: {e}") from None
    if data.kind != "classification":
        raise DatasetError(f"studies need a classification zoo; {zoo.root} is a {data.kind} task ({data.name})")
    return data


@dataclass
class StudyPopulation:
    """The ok models of one architecture as stacked float64 tensors, with the task data they take."""

    arch_id: str
    model_ids: list[str]
    rows: pd.DataFrame  # models.parquet rows, in model_ids order
    model: nn.Module  # template (eval mode) of the architecture
    build: Callable[[], nn.Module]  # a freshly initialised model of the architecture
    params: dict[str, Tensor]  # [M, ...]
    buffers: dict[str, Tensor]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    objective: Any
    layout: Layout
    adapt: Callable[[Tensor], Tensor]  # raw task inputs [N, *input_shape] -> model inputs (study dtype)

    @property
    def forward(self):
        return make_forward(self.model)

    def stacked(self, flat: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Stacked params and buffers of flat vectors [M, P] in this architecture's layout."""
        return from_flat(flat, self.layout)

    def scores(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor | None = None,
               y: Tensor | None = None) -> dict[str, np.ndarray]:
        """Test (or given x, y) loss and accuracy [N states] of stacked states of this architecture."""
        x, y = (self.x_test, self.y_test) if x is None else (x, y)
        out = evaluate(make_forward(self.model), self.model, self.objective, params, buffers, x, y)
        return {k: v.double().numpy() for k, v in out.items()}

    @torch.no_grad()
    def logits(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor | None = None,
               chunk: int = 512) -> Tensor:
        """Outputs [N states, samples, classes] on x (default: the test set), in eval mode."""
        x = self.x_test if x is None else x
        forward, m = make_forward(self.model), next(iter(params.values())).shape[0]
        parts = [forward(params, buffers, x[s:s + chunk].unsqueeze(0).expand(m, *x[s:s + chunk].shape))
                 for s in range(0, len(x), chunk)]
        return torch.cat(parts, 1)


def populations(zoo: Zoo, data: TaskData, dtype: torch.dtype = torch.float64) -> Iterator[StudyPopulation]:
    """One StudyPopulation per architecture of ``zoo`` (its ``status == ok`` models, in view order), or
    per architecture and task data where a phase axis varies a task field (task.beta, task.n_train)."""
    ok = zoo.models[zoo.models["status"] == "ok"]
    for aid in dict.fromkeys(ok["arch_id"]):
        groups = zoo.subset(ok.loc[ok["arch_id"] == aid, "model_id"]).by_task()
        for view in groups:
            with track(len(view.model_ids)):  # the progress bar counts these models done when the study moves on
                yield _population(aid, view, data if len(groups) == 1 else view.task_data(view.model_ids[0]), dtype)


def _population(aid: str, view: Zoo, data: TaskData, dtype: torch.dtype) -> StudyPopulation:
    """The study's StudyPopulation of ``view``'s models (one architecture, one task data)."""
    from ..generators.architectures import build_for_task

    ids = view.model_ids
    build, adapt = build_for_task(view.config(ids[0]), data.input_shape, data.n_classes, data.extras.get("vocab_size"))
    layout = view.layout_of(aid)
    params, buffers = from_flat(torch.from_numpy(view.weights(ids)).to(dtype), layout)
    as_x = _adapter(adapt, dtype)
    return StudyPopulation(aid, ids, view.models, build().to(dtype).eval(), build, params, buffers,
                      as_x(data.x_train), torch.as_tensor(data.y_train), as_x(data.x_test),
                      torch.as_tensor(data.y_test), objective_for(data), layout, as_x)


def _adapter(adapt: Callable, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    def as_x(a) -> Tensor:
        t = adapt(torch.as_tensor(a))
        return t.to(dtype) if t.is_floating_point() else t

    return as_x


def study_seed(*parts: object) -> int:
    """A 62-bit seed from names (model id, study, option): one random stream per use, never shared."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def pick(items: list, size: int, limit: int, seed: int) -> list[tuple]:
    """Up to ``limit`` distinct size-subsets of ``items`` (all of them if there are few), seeded."""
    from itertools import combinations

    n = len(items)
    if size > n:
        return []
    if math.comb(n, size) <= limit:
        return list(combinations(items, size))
    rng, chosen = np.random.default_rng(seed), set()
    while len(chosen) < limit:
        chosen.add(tuple(sorted(rng.choice(n, size, replace=False).tolist())))
    return [tuple(items[i] for i in c) for c in sorted(chosen)]


# ---------------------------------------------------------------- short training from given weights

def train_stacked(pop: StudyPopulation, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor,
                  labels: Tensor, order: Tensor, lr: Tensor, momentum: Tensor,
                  masks: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """SGD with momentum on N stacked states; returns the trained (params, buffers).

    ``x`` [n, ...] shared inputs, ``labels`` [N, n] each state's labels, ``order`` [N, steps, B] each
    state's batch indices, ``lr`` / ``momentum`` [N]. Why not ``train_population``: that trainer
    starts from each model's initialisation; studies start from published (or pruned) weights and
    may hold pruning ``masks`` (1 = keep) fixed. The step is the trainer's: one batched forward of
    all states, one backward of the summed per-state losses, one update of the stacked tensors.
    BatchNorm normalises with batch statistics (running stats updated); dropout is off.
    """
    from ..metrics.paths import batch_statistics

    n = order.shape[0]
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    b = {k: v.clone() for k, v in buffers.items()}
    velocity = {k: torch.zeros_like(v) for k, v in p.items()}
    forward = make_forward(pop.model)
    rows = torch.arange(n).unsqueeze(1)

    def per_state(t: Tensor, like: Tensor) -> Tensor:
        return t.to(like).view(n, *[1] * (like.dim() - 1))

    with batch_statistics(pop.model):
        for step in range(order.shape[1]):
            idx = order[:, step]
            loss = pop.objective.batch_loss(forward, p, b, x[idx], labels[rows, idx])
            grads = torch.autograd.grad(loss.sum(), list(p.values()))
            with torch.no_grad():
                for (k, v), g in zip(p.items(), grads, strict=True):
                    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                    velocity[k] = per_state(momentum, g) * velocity[k] + g
                    v.sub_(per_state(lr, v) * velocity[k])
                    if masks is not None and k in masks:
                        v.mul_(masks[k])
    return {k: v.detach() for k, v in p.items()}, b


def own_training_data(pop: StudyPopulation, y: Tensor, n_classes: int, steps: int, salt: str) -> tuple[Tensor, Tensor]:
    """(labels [M, n], batch order [M, steps, B]) of each model of ``pop`` on its own training data.

    Labels (label noise) and the data subset are the model's own, rebuilt exactly as in training
    (``population.member_data`` from the model's rng seed); the batches are a fresh seeded walk of
    that subset (stream ``salt``), so a short fine-tune does not replay the first training steps.
    """
    from ..generators.population import Member, member_data

    labels, orders = [], []
    batch = int(pop.rows["config.train.batch_size"].iloc[0])
    for mid, row in zip(pop.model_ids, pop.rows.to_dict("records"), strict=True):
        member = Member(mid, int(mid[2:], 16), lr=0.0, label_noise=float(row.get("config.task.label_noise", 0.0)),
                        train_fraction=float(row.get("config.task.train_fraction", 1.0)))
        own, subset, _ = member_data(member, y, n_classes, 1, batch)
        pool = subset.nonzero()[:, 0]
        labels.append(own)
        orders.append(pool[batch_order(len(pool), steps, batch, study_seed(mid, salt))])
    return torch.stack(labels), torch.stack(orders)


def batch_order(n: int, steps: int, batch: int, seed: int) -> Tensor:
    """Batch indices [steps, batch] walking seeded epoch permutations of n samples."""
    g = torch.Generator().manual_seed(seed % (2**63 - 1))
    epochs = math.ceil(steps * batch / n)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(epochs)])[:steps * batch].view(steps, batch)


# ---------------------------------------------------------------- plots

def axes_grid(n: int):
    """A matplotlib figure with ``n`` side-by-side panels (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 3.8), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` as PNG atomically, without the timestamped Software tag (same bytes on rerun)."""
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})
    plt.close(fig)


def by_phase(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows grouped by their cell's phase (``cell_phase``, else ``phase``; "all" without one)."""
    label = "cell_phase" if "cell_phase" in rows else "phase" if "phase" in rows else None
    if label is None:
        return {"all": rows}
    return {str(k): g for k, g in rows.groupby(rows[label].fillna("unknown").astype(str), sort=True)}


__all__ = ["Option", "Study", "StudyPopulation", "axes_grid", "batch_order", "by_phase", "own_training_data", "pick",
           "populations", "save_figure", "study_seed", "task_data", "train_stacked"]
