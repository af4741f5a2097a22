"""Does the adaptive sampler spend its budget near phase boundaries? Replays `zoo build --phase adaptive`
on a published full-grid zoo (every model an adaptive build trains is bitwise one of the grid's models,
as ids and seeds derive from configs), and compares with a regular grid of the same budget.

    python examples/adaptive_vs_grid.py zoo-out [--budget 54]

Boundary cells: cells of the full grid with a lattice neighbour (4-neighbourhood) of a different phase."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from zoo.datasets import load
from zoo.generators.adaptive import adaptive_plans, coarse_cells, lattice
from zoo.metrics.phases import PhaseThresholds, assign_phases
from zoo.progress import interruptible
from zoo.spec import spec_from_dict


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo")
    ap.add_argument("--budget", type=int, default=0, help="models (default: half the grid)")
    ap.add_argument("--stride", type=int, default=3, help="coarse grid stride (phase.coarse_stride)")
    ap.add_argument("--metric", default="test_acc", help="phase.refine_metric")
    args = ap.parse_args(argv)
    zoo = load(args.zoo)
    spec = spec_from_dict(zoo.manifest["spec"])
    spec.phase.budget, spec.phase.coarse_stride = args.budget, args.stride
    spec.phase.refine_metric = args.metric
    models = zoo.models.set_index("model_id")
    shape, cells = lattice(spec)
    index_of = {plans[0].cell_id: c for c, plans in cells.items()}
    phase = models.groupby("cell_id")["cell_phase"].first()
    grid_phase = {index_of[c]: p for c, p in phase.items()}

    def boundary(c):
        return any(grid_phase.get(tuple(np.add(c, d))) not in (None, grid_phase[c])
                   for d in [(1, 0), (-1, 0), (0, 1), (0, -1)])

    def summarize(plans):  # exactly what the build computes from the models trained so far
        seen = models.loc[[p.model_id for p in plans]].reset_index()
        labels = assign_phases(seen, PhaseThresholds(**spec.metrics.thresholds), n_classes=10)["cell_phase"]
        seen["label"] = labels.to_numpy()
        g = seen.groupby("cell_id")
        return {c: (float(x[spec.phase.refine_metric].mean()), str(x["label"].iloc[0])) for c, x in g}

    plans = adaptive_plans(spec, lambda ps: None, summarize)
    chosen = sorted({index_of[p.cell_id] for p in plans})
    regular = coarse_cells(shape, 2)[:len(chosen)]  # a regular sub-grid of the same size
    frac = lambda cs: float(np.mean([boundary(c) for c in cs]))  # noqa: E731
    print(pd.Series(grid_phase).unstack().to_string())
    result = {"cells_in_grid": len(cells), "boundary_cells_in_grid": int(sum(map(boundary, cells))),
                      "budget_cells": len(chosen), "adaptive_boundary_fraction": round(frac(chosen), 3),
                      "regular_boundary_fraction": round(frac(regular), 3),
                      "full_grid_boundary_fraction": round(frac(list(cells)), 3), "adaptive_cells": chosen}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    interruptible(main, "adaptive_vs_grid")
