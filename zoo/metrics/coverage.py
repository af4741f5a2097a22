"""Phase coverage: which phases a zoo's cells reach, reported in zoo.json, `zoo info` and the card.

The reference zoo validates full coverage of the phases; here coverage is counted, never assumed:
per phase, the cells whose label (``cell_phase``) it is and the models in them, and a warning
naming every phase no cell reaches.
"""

from __future__ import annotations

import pandas as pd

from .phases import PHASES, PhaseThresholds, assign_phases, resolve_thresholds


def phase_coverage(models: pd.DataFrame) -> dict | None:
    """{"phases": {phase: {"cells", "models"}}, "missing": [...]} of a zoo; None without labels."""
    label = "cell_phase" if "cell_phase" in models else "phase" if "phase" in models else None
    if label is None or "cell_id" not in models:
        return None
    per_cell = models.groupby("cell_id").agg(phase=(label, "first"), models=("model_id", "size"))
    table = {p: {"cells": int((per_cell["phase"] == p).sum()),
                 "models": int(per_cell.loc[per_cell["phase"] == p, "models"].sum())}
             for p in [*PHASES, "unknown"]}
    return {"label": label, "phases": table, "missing": [p for p in PHASES if table[p]["cells"] == 0]}


def coverage_lines(coverage: dict | None) -> list[str]:
    """A plain-text table (phase x cells x models) and, if a phase is missing, a warning line."""
    if not coverage:
        return ["phase coverage: no phase labels (they need a classification task)"]
    lines = [f"{'phase':<9}{'cells':>7}{'models':>8}"]
    lines += [f"{p:<9}{c['cells']:>7}{c['models']:>8}" for p, c in coverage["phases"].items()
              if p != "unknown" or c["cells"]]
    if coverage["missing"]:
        lines.append(f"WARNING: no cell reaches phase {', '.join(coverage['missing'])}; "
                     "the zoo does not cover every phase")
    return lines


def label_zoo(models: pd.DataFrame, thresholds: dict, n_classes: int) -> tuple[pd.DataFrame, dict]:
    """``models`` with its phase columns, and what zoo.json records of them (the resolved thresholds
    and the coverage): the one labelling step of both publish and `zoo metrics`."""
    rule = PhaseThresholds(**thresholds)
    labelled = models.join(assign_phases(models, rule, n_classes=n_classes))
    return labelled, {"phase_thresholds": resolve_thresholds(labelled, rule, n_classes),
                      "phase_coverage": phase_coverage(labelled)}
