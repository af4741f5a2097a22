"""Matrix Nuclear-Norm (zoo.metrics.nuclear): the SVD-free approximation against the exact nuclear
norm, and the population metric against a per-model loop."""

import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from test_datasets import SMOKE_SETS, built_zoo
from torch import nn

from zoo.datasets.verify import verify
from zoo.functional import layout_of, load_flat, stack_states, to_flat
from zoo.generators.tasks.base import TaskData
from zoo.generators.tasks.objectives import objective_for
from zoo.metrics.base import Population
from zoo.metrics.nuclear import METRIC, nuclear_approx, nuclear_exact
from zoo.spec import MetricsSpec


def nuc(a):
    return torch.linalg.matrix_norm(a, "nuc")


def test_approximation_is_exact_when_columns_are_orthogonal():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (200,), generator=g)
    one_hot = nn.functional.one_hot(labels, 10).double()  # disjoint column supports, 3 classes unused
    q = torch.linalg.qr(torch.randn(50, 8, generator=g, dtype=torch.float64)).Q * torch.rand(8, generator=g) * 5
    wide = torch.zeros(8, 30, dtype=torch.float64)  # C > B: B orthogonal columns among zeros
    wide[:, torch.randperm(30, generator=g)[:8]] = torch.linalg.qr(torch.randn(8, 8, generator=g)).Q.double()
    for a in (one_hot, q, wide):
        torch.testing.assert_close(nuclear_approx(a), nuc(a))


def test_approximation_brackets_the_exact_norm_on_softmax_matrices():
    """With C <= B: ||A||_* <= sum of column norms <= sqrt(C) ||A||_*; near 1 for confident,
    class-diverse predictions, 1 / ||p||_2 for one distribution p on every row (sqrt(C) if uniform)."""
    g = torch.Generator().manual_seed(1)
    for b, c, scale in [(64, 10, 1.0), (300, 30, 3.0), (30, 30, 0.3), (500, 3, 10.0)]:
        a = torch.softmax(scale * torch.randn(b, c, generator=g, dtype=torch.float64), -1)
        approx, exact = nuclear_approx(a), nuc(a)
        assert exact * (1 - 1e-12) <= approx <= math.sqrt(c) * exact
    confident = torch.softmax(30 * torch.randn(400, 10, generator=g, dtype=torch.float64), -1)
    assert 1 <= nuclear_approx(confident) / nuc(confident) < 1.01
    p = torch.softmax(torch.randn(10, dtype=torch.float64, generator=g), -1)
    for row in (p, torch.full((10,), 0.1, dtype=torch.float64)):
        same = row.expand(400, 10)
        torch.testing.assert_close(nuclear_approx(same) / nuc(same), 1 / row.norm())


def test_approximation_keeps_the_largest_columns():
    a = torch.rand(3, 5, 20, dtype=torch.float64)
    want = a.norm(dim=1).sort(dim=-1, descending=True).values[:, :5].sum(-1)
    torch.testing.assert_close(nuclear_approx(a), want)
    torch.testing.assert_close(nuclear_exact(a), torch.stack([nuc(m) for m in a]))


def population(m=5, n_test=70, classes=4, status=None):
    torch.manual_seed(0)
    build = lambda: nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, classes))  # noqa: E731
    models = [build() for _ in range(m)]
    for i, net in enumerate(models):  # different scales: from uncertain to confident predictions
        net[2].weight.data *= 1 + 3 * i
    layout = layout_of(models[0])
    weights = to_flat(*stack_states(models), layout).detach().numpy()[None]
    g = np.random.default_rng(0)
    x = g.normal(size=(100 + n_test, 6)).astype(np.float32)
    y = g.integers(0, classes, 100 + n_test)
    data = TaskData("toy", x[:100], y[:100], x[100:], y[100:], n_classes=classes)
    return Population(build(), objective_for(data), data, weights, [0], layout, [f"m{i}" for i in range(m)],
                      ["c0"] * m, status or ["ok"] * m, [0.1] * m), models


def test_population_metric_equals_a_per_model_loop():
    pop, models = population()
    probe = 50
    res = METRIC.compute(pop, MetricsSpec(options={"nuclear_norm_probe": probe}))
    x = torch.as_tensor(pop.data.x_test[:probe])
    for i in range(pop.m):
        net = load_flat(pop.model, torch.as_tensor(pop.weights[-1, i]), pop.layout).eval()
        with torch.no_grad():
            a = torch.softmax(net(x).double(), -1)
        want = {"nuclear.norm": a.norm(dim=0).sum() / probe, "nuclear.exact": nuc(a) / probe,
                "nuclear.fro": a.norm() / math.sqrt(probe)}
        for col, v in want.items():
            assert res.per_model[col][i] == pytest.approx(v.item(), rel=1e-5), col
    assert set(res.per_model) == set(METRIC.columns)
    assert res.per_model["nuclear.norm"][-1] > res.per_model["nuclear.norm"][0]  # confident > uncertain


def test_unhealthy_models_get_nan_and_leave_the_others_unchanged():
    spec = MetricsSpec(options={"nuclear_norm_probe": 40})
    full = METRIC.compute(population()[0], spec)
    res = METRIC.compute(population(status=["ok", "diverged", "ok", "ok", "failed"])[0], spec)
    for col in METRIC.columns:
        assert np.isnan(res.per_model[col][[1, 4]]).all()
        np.testing.assert_allclose(res.per_model[col][[0, 2, 3]], full.per_model[col][[0, 2, 3]], rtol=1e-6)
    none = METRIC.compute(population(m=2, status=["failed", "failed"])[0], spec)
    assert all(np.isnan(v).all() and v.shape == (2,) for v in none.per_model.values())


def test_zoo_metrics_nuclear_norm_measures_a_published_zoo(tmp_path_factory, tmp_path, data_root):
    zoo = tmp_path / "zoo"
    shutil.copytree(built_zoo(tmp_path_factory, "smoke", "smoke", SMOKE_SETS), zoo)
    r = subprocess.run([sys.executable, "-m", "zoo.cli", "metrics", "nuclear_norm", str(zoo), "--quiet",
                        "--set", "metrics.nuclear_norm_probe=64"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = pd.read_parquet(zoo / "models.parquet")
    norm, exact = m["nuclear.norm"], m["nuclear.exact"]
    assert norm.notna().all() and (exact <= norm * (1 + 1e-9)).all() and (norm <= math.sqrt(10) * exact).all()
    assert m["nuclear.fro"].between(1 / math.sqrt(10), 1).all()
    assert "`nuclear.norm`" in (zoo / "README.md").read_text() and verify(zoo) == []
