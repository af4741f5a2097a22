"""Phase labels on constructed cases: each row of the taxonomy, thresholds, missing metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from zoo.metrics.phases import PhaseThresholds, assign_phases, label, resolve_thresholds

CHANCE = math.log(10)
LOW, HIGH = 0.05, 2.0  # train losses well below / above 0.25 * log(10) = 0.58
SHARP, FLAT = 100.0, 1.0  # Hessian traces; the zoo median (threshold) lies between them


def _zoo(rows):
    df = pd.DataFrame(rows, columns=["train_loss", "hessian.trace", "connectivity.mc", "similarity.cka"])
    df.insert(0, "cell_id", [f"c{i}" for i in range(len(df))])
    return df


CASES = [  # (train loss, trace, mc, cka) -> phase
    ((HIGH, SHARP, -0.5, 0.3), "I"),
    ((HIGH, SHARP, +0.5, 0.3), "II"),
    ((LOW, FLAT, -0.5, 0.3), "III"),
    ((LOW, FLAT, 0.0, 0.5), "IV-A"),
    ((LOW, FLAT, 0.01, 0.97), "IV-B"),
]


def test_each_phase_of_the_table():
    zoo = _zoo([c for c, _ in CASES] + [(LOW, FLAT, 0.0, 0.95)] * 2 + [(HIGH, SHARP, -1, 0.1)] * 2)
    out = assign_phases(zoo, n_classes=10)
    assert out["phase"].tolist()[:5] == [p for _, p in CASES]
    assert out["cell_phase"].tolist()[:5] == [p for _, p in CASES]  # one model per cell here
    assert out.loc[0, "phase.connectivity"] == "barrier" and out.loc[1, "phase.connectivity"] == "bump"


def test_combinations_off_the_table_get_the_closest_phase_of_their_loss_class():
    assert label(("low", "sharp", "connected", "high")) == "IV-B"
    assert label(("high", "flat", "connected", "high")) in ("I", "II")  # never a low-loss phase
    assert label(("low", "flat", "bump", "low")) == "IV-A"


def test_thresholds_move_labels_and_are_recorded():
    zoo = _zoo([(0.4, FLAT, 0.0, 0.95), (0.4, SHARP, 0.0, 0.95), (HIGH, SHARP, -1, 0.1)])
    assert assign_phases(zoo)["phase"][0] == "IV-B"  # 0.4 < 0.25 * log 10
    strict = PhaseThresholds(loss_fraction=0.1)
    assert assign_phases(zoo, strict)["phase"][0] in ("I", "II")
    assert assign_phases(zoo, PhaseThresholds(cka_high=0.99))["phase"][0] == "IV-A"
    resolved = resolve_thresholds(zoo, strict, 10)
    json.dumps(resolved)
    assert resolved["loss_max"] == pytest.approx(0.1 * CHANCE)
    assert resolved["log10_sharpness_min"] == pytest.approx(np.log10(SHARP))  # median of {1, 100, 100}


def test_missing_metrics_give_unknown_not_a_crash():
    zoo = _zoo([(LOW, FLAT, np.nan, 0.95), (LOW, np.nan, 0.0, 0.95), (LOW, FLAT, 0.0, 0.95)])
    out = assign_phases(zoo)
    assert out["phase"].tolist()[:2] == ["unknown", "unknown"]
    bare = pd.DataFrame({"cell_id": ["a"], "train_loss": [0.1]})
    assert assign_phases(bare)["phase"].tolist() == ["unknown"]


def test_cell_phase_uses_the_cell_median():
    zoo = _zoo([(LOW, FLAT, 0.0, 0.95)] * 3 + [(HIGH, SHARP, -1, 0.1)] * 3)
    zoo["cell_id"] = ["a", "a", "a", "b", "b", "b"]
    zoo.loc[0, "similarity.cka"] = 0.2  # one outlier seed in cell a
    out = assign_phases(zoo)
    assert out["phase"][0] == "IV-A" and out["phase"][1] == "IV-B"
    assert set(out["cell_phase"][:3]) == {"IV-B"} and set(out["cell_phase"][3:]) == {"I"}
