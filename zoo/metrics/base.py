"""The metric registry's vocabulary: a Population, a Metric and what a metric returns.

A metric family is one file under ``zoo/metrics/`` that defines ``METRIC = Metric(...)``: its
name, the spec switch that turns it on, the options it adds to ``[metrics]``, what it applies to,
the columns it writes (each with a one-line doc: the dataset card is generated from them) and its
``compute(population, spec) -> Measured``. ``zoo/metrics/registry.py`` lists the files; the
measure step, ``zoo metrics NAME``, the spec's options and the card are derived from that list.

A metric sees a trained population as a ``Population`` record: the stacked checkpoints and what
the models were trained with. Its ``healthy`` models (status ok, finite weights) are the ones a
metric measures; ``spread`` puts their values back into one entry per model (NaN elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..functional import Layout, from_flat

Tensor = torch.Tensor

# The tables of a published zoo that metrics write rows into, with the columns that key a row
# (``zoo metrics`` replaces rows with the same key and keeps the others). A metric adding a
# table declares it in ``Metric.tables``.
TABLE_KEYS = {"pairs": ["model_a", "model_b", "alignment"], "layers": ["model_id", "step", "layer"]}


@dataclass
class Measured:
    """What the measure step (or one metric) produced for one population."""

    per_model: dict[str, np.ndarray] = field(default_factory=dict)  # column -> [M] (NaN: not measured)
    per_checkpoint: dict[str, np.ndarray] = field(default_factory=dict)  # column -> [K, M] (checkpoint rows)
    notes: list[str] = field(default_factory=list)  # per model: why metrics are missing ("" if none)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # table name -> rows

    @property
    def pairs(self) -> pd.DataFrame:
        return self.tables.get("pairs", pd.DataFrame())

    @property
    def layers(self) -> pd.DataFrame:
        return self.tables.get("layers", pd.DataFrame())


@dataclass
class Population:
    """One trained population as every metric sees it (the build's and ``zoo metrics``'s input).

    ``data`` holds the task with inputs already adapted to the architecture; ``weights`` [K, M, P]
    are the checkpoints at ``steps`` (the last = the steps the models trained); ``lr`` is each
    model's learning rate; ``optimizer``, ``momentum`` and ``batch_size`` are the cell's.
    """

    model: nn.Module  # one instance of the architecture; metrics call it functionally
    objective: Any  # zoo.generators.tasks.objectives: batch_loss / sample_metrics / reduce
    data: Any  # zoo.generators.tasks.TaskData
    weights: np.ndarray
    steps: list[int]
    layout: Layout
    model_ids: list[str]
    cell_ids: list[str]
    status: list[str]
    lr: list[float]
    optimizer: str = "sgd"
    momentum: float = 0.0
    batch_size: int = 64

    @property
    def m(self) -> int:
        return len(self.model_ids)

    @cached_property
    def healthy(self) -> np.ndarray:
        """Indices of the models a metric measures: status ok and finite final weights."""
        ok = np.array([s == "ok" for s in self.status], dtype=bool) & np.isfinite(self.weights[-1]).all(1)
        return np.flatnonzero(ok)

    def state(self, k: int = -1, idx: np.ndarray | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Stacked (params, buffers) of checkpoint ``k`` for the models ``idx`` (default: healthy)."""
        idx = self.healthy if idx is None else idx
        params, buffers = from_flat(torch.as_tensor(self.weights[k]), self.layout)
        index = torch.as_tensor(idx, dtype=torch.long)
        return ({n: v.index_select(0, index) for n, v in params.items()},
                {n: v.index_select(0, index) for n, v in buffers.items()})

    @cached_property
    def final(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(params, buffers) of the healthy models' final weights."""
        return self.state(-1)

    def pairs(self, across_cells: bool = False) -> Tensor:
        """[K, 2] pairs (i < j) of healthy models sharing a cell (``across_cells``: any two; a
        population holds one architecture), as indices into ``healthy``, in population order."""
        cells = [self.cell_ids[i] for i in self.healthy]
        pairs = [(i, j) for i in range(len(cells)) for j in range(i + 1, len(cells))
                 if across_cells or cells[i] == cells[j]]
        return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)

    @cached_property
    def splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """{"train": (x, y), "test": (x, y)} as tensors."""
        d = self.data
        return {"train": (torch.as_tensor(d.x_train), torch.as_tensor(d.y_train)),
                "test": (torch.as_tensor(d.x_test), torch.as_tensor(d.y_test))}

    def probe(self, n: int, split: str = "test") -> Tensor:
        """The first ``n`` inputs of a split: the fixed probe batch of representation metrics."""
        return self.splits[split][0][:n]

    def spread(self, values, idx: np.ndarray | None = None) -> np.ndarray:
        """Values of the models ``idx`` (default: healthy) as one entry per model, NaN elsewhere."""
        values = np.asarray(values, dtype=np.float64)
        out = np.full((self.m, *values.shape[1:]), np.nan)
        out[self.healthy if idx is None else idx] = values
        return out


@dataclass(frozen=True)
class Option:
    """A ``[metrics]`` field a metric adds: its default, allowed range (``"[1, 1e6]"``, ends
    included ``[ ]`` or excluded ``( )``) or choices, and a one-line doc."""

    default: Any
    doc: str = ""
    range: str | None = None
    choices: tuple | None = None


@dataclass(frozen=True)
class Metric:
    """One metric family: everything the measure step, ``zoo metrics``, the spec and the card
    need to know about it.

    ``switch`` is the ``[metrics]`` field that turns it on (default: ``name``); the metric runs
    when the field is not ``off``, and ``zoo metrics NAME`` sets it to ``on``. ``applies_to`` is
    "model", "pair" or "layer"; ``kinds`` the task kinds it can measure (empty: all).
    ``protocol`` states its defaults and their reference (README's table). ``pair_summaries`` are
    per-model columns averaged from the naive pair rows a model is in
    ({model column: pairs column}). ``tables`` are tables it adds beyond pairs/layers, with their key
    columns. ``compute(population, metrics_spec)`` returns a ``Measured`` whose per-model arrays
    have one entry per model of the population (``Population.spread``); pair rows carry
    ``pair_index`` (into ``pairs``) and ``alignment``.
    """

    name: str
    about: str
    applies_to: str
    columns: dict[str, str]
    compute: Callable[[Population, Any], Measured]
    protocol: str = ""  # defaults and the reference they follow (README's metrics table)
    switch: str = ""
    on: Any = True
    off: Any = False
    options: dict[str, Option] = field(default_factory=dict)
    kinds: tuple[str, ...] = ()
    group: str = ""
    pair_summaries: dict[str, str] = field(default_factory=dict)
    tables: dict[str, list[str]] = field(default_factory=dict)
    needs_pairs: bool = False  # computes over the population's pairs (given as ``pairs`` [K, 2])

    @property
    def field(self) -> str:
        return self.switch or self.name

    def enabled(self, spec) -> bool:
        return getattr(spec, self.field) != self.off

    def applies(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds


def pair_rows(columns: dict[str, np.ndarray], n_pairs: int, alignment: str = "none") -> pd.DataFrame:
    """Pair-metric output ({column: [K] or [K, T]}) as rows keyed by pair_index and alignment
    (a [K, T] value becomes one list per row)."""
    rows = pd.DataFrame({"pair_index": np.arange(n_pairs), "alignment": alignment})
    for k, v in columns.items():
        v = np.asarray(v)
        rows[k] = list(v) if v.ndim > 1 else v
    return rows


def attempt(problems: list[str], name: str, fn):
    """Run one metric; a metric that cannot handle this architecture or task records why (one
    line in ``metrics_note``) instead of costing the build its trained weights."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure of an optional measurement is reported, not raised
        problems.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return None


__all__ = ["Measured", "Metric", "Option", "Population", "TABLE_KEYS", "attempt", "pair_rows"]
