"""The adaptive phase sampler: coarse grid, refinement where neighbouring cells disagree."""

from __future__ import annotations

import itertools

import numpy as np

from zoo.generators.adaptive import adaptive_plans, budget_cells, coarse_cells, lattice, refine
from zoo.spec import load_spec


def test_coarse_cells_keep_both_ends():
    assert coarse_cells((5,), 2) == [(0,), (2,), (4,)]
    assert coarse_cells((6,), 2) == [(0,), (2,), (4,), (5,)]
    assert len(coarse_cells((6, 6), 2)) == 16


def _boundary_distance(cell, boundary=7.5):
    """Distance (in lattice steps) of a cell to the planted phase boundary i + j = 7.5."""
    return abs(cell[0] + cell[1] - boundary) / np.sqrt(2)


def test_refinement_concentrates_near_a_planted_boundary():
    """Phase A where i + j < 7.5, B elsewhere on a 10 x 10 grid; same budget as a regular grid."""
    shape = (10, 10)
    label = {c: "A" if sum(c) < 7.5 else "B" for c in itertools.product(range(10), range(10))}
    chosen = coarse_cells(shape, 3)
    budget = 50
    while len(chosen) < budget:
        new = refine(shape, {c: float(label[c] == "B") for c in chosen}, {c: label[c] for c in chosen},
                     min(8, budget - len(chosen)))
        assert new and not set(new) & set(chosen)
        chosen += new
    regular = [c for c in itertools.product(range(10), range(10)) if (c[0] + c[1]) % 2 == 0]  # 50 cells
    near = lambda cells: np.mean([_boundary_distance(c) < 1.5 for c in cells])  # noqa: E731
    assert len(chosen) == len(regular) == budget
    assert near(chosen) > 1.5 * near(regular)


def test_refine_prefers_steep_metric_changes_without_labels():
    shape = (9,)
    values = {(0,): 0.0, (2,): 0.0, (4,): 0.0, (6,): 1.0, (8,): 1.0}  # a step between 4 and 6
    assert refine(shape, values, {}, 1) == [(5,)]


def test_adaptive_rounds_spend_the_budget_and_replay_deterministically():
    spec = load_spec("smoke", ["phase.budget=12", "phase.coarse_stride=2"])
    spec.phase.axes[0].values = [8, 16, 32]
    spec.phase.axes[1].values = [0.01, 0.03, 0.1]
    shape, cells = lattice(spec)
    assert shape == (3, 3) and budget_cells(spec, len(cells)) == 6
    rounds = []

    def train(plans):
        rounds.append([p.cell_id for p in plans])

    def summarize(plans):  # a fake metric that jumps between widths 8 and 16
        return {p.cell_id: (float(p.config["arch.width"] > 8), "") for p in plans}

    plans = adaptive_plans(spec, train, summarize)
    assert len(plans) == 12 and len({p.cell_id for p in plans}) == 6
    assert len(rounds) == 2 and len(set(rounds[0])) == 4  # the 2 x 2 coarse grid, then one refinement
    refined = {p.config["arch.width"] for p in plans if p.cell_id not in rounds[0]}
    assert refined == {16}  # between the widths where the metric jumps
    assert plans == adaptive_plans(spec, lambda ps: None, summarize)
