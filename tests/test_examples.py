"""The examples run end to end on a tiny zoo (as scripts would, through their main())."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from test_datasets import SMOKE_SETS, built_zoo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smoke_zoo(tmp_path_factory, data_root):
    return built_zoo(tmp_path_factory, "smoke", "smoke", SMOKE_SETS)


def test_predict_accuracy(smoke_zoo, capsys):
    result = _example("predict_accuracy").main(["--zoo", str(smoke_zoo), "--steps", "30"])
    assert result["n_test"] == 4 and result["n_fit"] == 12
    for key in ("ridge_r2", "deepsets_r2", "ridge_mae", "deepsets_mae"):
        assert math.isfinite(result[key])
    assert result["ridge_mae"] < 0.5 and result["deepsets_mae"] < 0.5  # accuracies live in [0, 1]
    assert '"ridge_r2"' in capsys.readouterr().out
    assert 0 <= result["phase_accuracy"] <= 1 and 0 <= result["phase_majority_accuracy"] <= 1


def test_weight_statistics_features(smoke_zoo):
    from zoo.datasets import load

    ex = _example("predict_accuracy")
    ids, x = ex.weight_statistics(load(smoke_zoo))
    assert x.shape == (16, 3 * 2 * 8) and len(set(ids)) == 16  # 3 layers x (W, b) x 8 statistics


def test_phase_diagram(smoke_zoo, tmp_path):
    md = tmp_path / "p.md"
    result = _example("phase_diagram").main(["--zoo", str(smoke_zoo), "--out", str(tmp_path / "p.png"),
                                             "--out-md", str(md)])
    assert result["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result["plot"].stat().st_size > 1000
    models = pd.read_parquet(smoke_zoo / "models.parquet")
    ok = models[models["status"] == "ok"]
    assert len(result["cells"]) == ok["cell_id"].nunique() == 4
    # the coverage is recomputed from models.parquet and equals the build's own record
    recorded = json.loads((smoke_zoo / "zoo.json").read_text())["phase_coverage"]["phases"]
    assert {p: recorded[p] for p in result["coverage"]} == result["coverage"]
    assert sum(c["models"] for c in result["coverage"].values()) == len(ok[ok["cell_phase"].isin(list(recorded))])
    best = ok.groupby("cell_id")["test_acc"].mean().idxmax()
    assert result["best_phase"] == ok.loc[ok["cell_id"] == best, "cell_phase"].iloc[0]
    assert "## Coverage" in md.read_text() and "## Cell phase" in md.read_text()


def test_lmc_width_matching_lowers_barriers(capsys):
    result = _example("lmc_width").main(["--widths", "8", "32", "--steps", "150", "--seeds", "2"])
    for row in result["rows"]:  # the matched pair is never worse on the train loss than the raw one
        assert row["matched_barrier_train_loss"] <= row["naive_barrier_train_loss"] + 1e-6


def test_adaptive_vs_grid_replays_the_sampler(smoke_zoo):
    result = _example("adaptive_vs_grid").main([str(smoke_zoo), "--stride", "1", "--budget", "4"])
    assert result["cells_in_grid"] == 4 and result["budget_cells"] == len(result["adaptive_cells"]) >= 1
    assert 0 <= result["adaptive_boundary_fraction"] <= 1
