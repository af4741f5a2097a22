"""Adaptive phase sampling: spend the model budget where the phase plane changes.

Start from a coarse sub-grid of the axis values (every ``coarse_stride``-th value, ends kept),
train and measure it, then repeatedly add the unvisited grid cells whose visited neighbours
disagree most: a different phase label among them counts 1, plus the spread of the refine metric
(scaled by its range over the visited cells). Rounds stop when the budget of models is spent or
no cell is left. Decisions depend only on trained results, which are deterministic, so a killed
adaptive build resumes by replaying the same rounds.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..spec import ZooSpec
from .sampling import ModelPlan, grid

Cell = tuple[int, ...]


def lattice(spec: ZooSpec) -> tuple[tuple[int, ...], dict[Cell, list[ModelPlan]]]:
    """The full grid as lattice indices: (shape, {index tuple: the cell's plans})."""
    shape = tuple(len(a.values) for a in spec.phase.axes)
    plans = grid(spec)
    per_cell = len(spec.phase.seeds)
    cells = itertools.product(*[range(n) for n in shape])
    return shape, {c: plans[k * per_cell:(k + 1) * per_cell] for k, c in enumerate(cells)}


def coarse_cells(shape: tuple[int, ...], stride: int) -> list[Cell]:
    """Every ``stride``-th index along each axis, always including both ends."""
    keep = [sorted({*range(0, n, stride), n - 1}) for n in shape]
    return list(itertools.product(*keep))


def refine(shape: tuple[int, ...], values: dict[Cell, float], labels: dict[Cell, str], n_new: int) -> list[Cell]:
    """The ``n_new`` unvisited cells with the most disagreement among their nearest visited cells."""
    visited = np.array(sorted(values), dtype=int).reshape(-1, len(shape))
    vals = np.array([values[tuple(c)] for c in visited], dtype=float)
    finite = vals[np.isfinite(vals)]
    scale = (finite.max() - finite.min()) if finite.size and finite.max() > finite.min() else 1.0
    scored = []
    for cell in itertools.product(*[range(n) for n in shape]):
        if cell in values:
            continue
        dist = np.abs(visited - np.array(cell)).max(1)  # Chebyshev distance on the lattice
        near = np.flatnonzero(dist == dist.min())
        if len(near) < 2:
            near = np.flatnonzero(dist <= np.sort(dist)[1])
        v = vals[near][np.isfinite(vals[near])]
        spread = (v.max() - v.min()) / scale if v.size else 0.0
        differ = float(len({labels.get(tuple(visited[i]), "") for i in near}) > 1)
        scored.append((-(spread + differ), cell))
    scored.sort()
    return [cell for _, cell in scored[:n_new]]


def budget_cells(spec: ZooSpec, n_cells: int) -> int:
    """Cells the budget pays for (phase.budget models; 0 means half the full grid)."""
    per_cell = len(spec.phase.seeds)
    budget = spec.phase.budget or (n_cells * per_cell) // 2
    return max(1, min(n_cells, budget // per_cell))


def adaptive_plans(spec: ZooSpec, train, summarize) -> list[ModelPlan]:
    """Run the rounds. ``train(plans)`` trains and measures plans (resuming what exists);
    ``summarize(plans) -> {cell_id: (value, label)}`` reads their results back."""
    shape, cells = lattice(spec)
    limit = budget_cells(spec, len(cells))
    chosen = coarse_cells(shape, spec.phase.coarse_stride)[:limit]
    while True:
        plans = [p for c in chosen for p in cells[c]]
        train(plans)
        if len(chosen) >= limit:
            return plans
        summary = summarize(plans)
        values = {c: summary[cells[c][0].cell_id][0] for c in chosen}
        labels = {c: summary[cells[c][0].cell_id][1] for c in chosen}
        step = min(limit - len(chosen), max(1, len(chosen) // 2))
        new = refine(shape, values, labels, step)
        if not new:
            return plans
        chosen = chosen + new


__all__ = ["adaptive_plans", "budget_cells", "coarse_cells", "lattice", "refine"]
