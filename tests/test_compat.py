"""Zoos published before a change still load, verify and re-measure.

``fixtures/zoo-2026-11-30`` was written by ``zoo build --preset fixtures/zoo-2026-11-30.toml`` with
the main of 2026-11-30 (before the metric registry); its build state (.zoo/) was removed, as a
downloaded zoo has none. Never regenerate it: its point is that it is old.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from zoo.datasets import load, verify

FIXTURE = Path(__file__).parent / "fixtures" / "zoo-2026-11-30"


@pytest.fixture
def old_zoo(tmp_path) -> Path:
    dst = tmp_path / "old"
    shutil.copytree(FIXTURE, dst)
    return dst


def test_old_zoo_verifies_and_loads(old_zoo, data_root):
    assert verify(old_zoo) == []
    zoo = load(old_zoo)
    assert len(zoo.model_ids) == 8
    data = zoo.task_data()
    row = zoo.models[zoo.models["status"] == "ok"].iloc[0]
    mid = row["model_id"]
    net = zoo.model(mid)
    with torch.no_grad():
        acc = (net(zoo.input_adapter(row["arch_id"])(torch.as_tensor(data.x_test))).argmax(-1)
               == torch.as_tensor(data.y_test)).float().mean().item()
    stored = zoo.models.set_index("model_id").loc[mid, "test_acc"]
    assert acc == pytest.approx(stored, abs=1e-6)  # the old weights rebuild the old model


@pytest.mark.parametrize("family", ["spectral", "landscape"])
def test_old_zoo_remeasures(old_zoo, family, data_root):
    before = pd.read_parquet(old_zoo / "models.parquet")
    out = subprocess.run([sys.executable, "-m", "zoo.cli", "metrics", family, str(old_zoo), "--quiet",
                          "--set", "metrics.bezier_steps=5"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert verify(old_zoo) == []
    after = pd.read_parquet(old_zoo / "models.parquet")
    assert list(after["model_id"]) == list(before["model_id"])
    for col in ("test_acc", "train_loss", "config.arch.width"):  # what the build wrote stays
        np.testing.assert_array_equal(after[col].to_numpy(), before[col].to_numpy())
    new = "spectral.log_norm_mean" if family == "spectral" else "hessian.top_eig"
    ok = after["status"] == "ok"
    assert np.isfinite(after.loc[ok, new]).all()
