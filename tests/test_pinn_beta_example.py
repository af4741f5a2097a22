"""docs/results/pinn_beta.md as a tested example (issue 15, item 5): the PINN failure transition in beta on
1-D convection (Krishnapriyan et al. 2021), on a tiny run through examples/pinn_beta.py's main(); and the
beta axis of `zoo build`: each beta cell trains and is scored on its own data."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_examples import _example

from zoo.cli import main as zoo_main
from zoo.datasets import load
from zoo.generators.tasks.embedded import convection

TINY = ["task.n_train=512", "task.n_test=256", "train.batch_size=128", "train.steps=400", "train.checkpoints=4",
        "phase.seeds=[0,1]", "phase.axes=[{key='arch.width',values=[16]},{key='task.beta',values=[1.0,30.0]}]"]


def test_pinn_fails_at_large_beta(tmp_path, capsys):
    md, png = tmp_path / "p.md", tmp_path / "p.png"
    result = _example("pinn_beta").main([*[a for s in TINY for a in ("--set", s)], "--fail-at", "0.5", "--quiet",
                                         "--out-md", str(md), "--plot", str(png)])
    s = result["summary"]
    assert s["betas"] == [1.0, 30.0] and len(result["records"]) == 4
    small, large = s["per_beta"]
    # beta = 1 is learned, beta = 30 is not (the trivial-solution failure: relative L2 near 1)
    assert small["max"] < 0.5 and large["min"] > 0.7 and large["min"] > 2 * small["max"]
    assert (small["fails"], large["fails"]) == (False, True)
    assert s["first_failing_beta"] == 30.0 and s["largest_learned_beta"] == 1.0 and s["monotone"]
    for r in result["records"]:
        assert len(r["rel_l2_curve"]) == len(r["steps"]) == 5 and r["steps"][-1] == 400
        assert all(math.isfinite(v) for v in r["rel_l2_curve"])
    text = md.read_text()
    assert "2-core CPU dev VM" in text and "load average" in text and "python examples/pinn_beta.py" in text
    assert "| 30 | 2 |" in text and "fails from beta = 30" in text and "![PINN test error vs beta](p.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["example"] == "pinn_beta"


@pytest.fixture(scope="module")
def pinn_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinn") / "zoo"
    sets = [*TINY, "train.steps=30", "train.checkpoints=1", "metrics.hessian=false", "metrics.spectral=false",
            "metrics.connectivity=false", "metrics.cka=false", "metrics.lmc='none'"]
    assert zoo_main(["build", "--preset", "pinn-convection", "--out", str(root), "--quiet",
                     *[a for s in sets for a in ("--set", s)]]) == 0
    return root


def _rel_l2_against_exact(root, beta: float) -> tuple[float, float]:
    """(stored test_rel_l2, rel. L2 of the rebuilt model against sin(x - beta t)) of one beta cell's model."""
    zoo = load(root)
    models = pd.read_parquet(root / "models.parquet")
    row = models[models["config.task.beta"] == beta].iloc[0]
    data = convection(int(row["config.task.n_train"]), int(row["config.task.n_test"]),
                      int(row["config.task.data_seed"]), beta=beta)
    with torch.no_grad():
        u = zoo.model(row["model_id"])(torch.from_numpy(data.x_test))[:, 0].double().numpy()
    exact = data.y_test.astype(np.float64)
    return float(row["test_rel_l2"]), float(np.linalg.norm(u - exact) / np.linalg.norm(exact))


def test_build_scores_the_task_beta_cell_against_its_solution(pinn_zoo):
    stored, recomputed = _rel_l2_against_exact(pinn_zoo, 1.0)  # task.beta = 1.0 in the preset: right data
    assert math.isclose(stored, recomputed, rel_tol=1e-4)


def test_build_scores_every_beta_cell_against_its_own_solution(pinn_zoo):
    stored, recomputed = _rel_l2_against_exact(pinn_zoo, 30.0)
    assert math.isclose(stored, recomputed, rel_tol=1e-4)


def test_a_published_zoo_gives_each_beta_cell_its_own_task_data(pinn_zoo):
    """Readers, zoo metrics and the studies split a zoo by the task data its models were trained on."""
    zoo = load(pinn_zoo)
    groups = zoo.by_task()
    assert sorted(g.models["config.task.beta"].iloc[0] for g in groups) == [1.0, 30.0]
    for g in groups:
        beta = float(g.models["config.task.beta"].iloc[0])
        assert all(g.models["config.task.beta"] == beta)
        assert g.task_data(g.model_ids[0]).extras["beta"] == beta
    assert zoo.task_data().extras["beta"] == 1.0  # the spec's own [task] section
    assert len(load(pinn_zoo).subset(groups[0].model_ids).by_task()) == 1
