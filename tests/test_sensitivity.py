"""Input sensitivity (zoo.metrics.sensitivity): forward-mode diagonal derivatives against central
finite differences, the population metric against a per-model reverse-mode loop, Spearman against scipy."""

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from test_datasets import SMOKE_SETS, built_zoo
from torch import nn

from zoo.datasets.verify import verify
from zoo.functional import layout_of, load_flat, stack_states, to_flat
from zoo.generators.architectures import build_model
from zoo.generators.tasks.base import TaskData
from zoo.generators.tasks.objectives import objective_for
from zoo.metrics.base import Population
from zoo.metrics.sensitivity import METRIC, diagonal_derivatives, per_sample_loss, ranks, spearman
from zoo.spec import MetricsSpec


def mlp(out):
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, out))


def cnn(out):  # BatchNorm on its running statistics, dropout off in eval mode, 2-D inputs [1, 4, 4]
    net = build_model("cnn", in_channels=1, out_dim=out, spatial_dims=2, width=3, depth=1, activation="tanh",
                      dropout=0.3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net


def population(kind="classification", m=3, status=None, arch=mlp, shape=(5,), seed=0):
    torch.manual_seed(seed)
    out = 3 if kind == "classification" else 2
    build = lambda: arch(out).double()  # noqa: E731
    models = [build() for _ in range(m)]
    layout = layout_of(models[0])
    weights = to_flat(*stack_states(models), layout).detach().numpy()[None]
    g = np.random.default_rng(seed)
    x = g.normal(size=(60, int(np.prod(shape))))
    x[:, 4] = 1.0  # a constant feature: no Spearman correlation
    x = x.reshape(60, *shape)
    y = g.integers(0, out, 60) if kind == "classification" else g.normal(size=(60, out))
    data = TaskData("toy", x[:40], y[:40], x[40:], y[40:], n_classes=out, kind=kind)
    return Population(build(), objective_for(data), data, weights, [0], layout, [f"m{i}" for i in range(m)],
                      ["c0"] * m, status or ["ok"] * m, [0.1] * m)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_derivatives_match_central_finite_differences(kind):
    pop = population(kind)
    params, buffers = pop.final
    x, y = torch.as_tensor(pop.data.x_train[:10]), torch.as_tensor(pop.data.y_train[:10])
    loss = per_sample_loss(kind)
    d = diagonal_derivatives(pop.model, params, buffers, x, y, loss, torch.arange(5))  # [M, 3, N, F]
    h = 3e-3  # the third difference's rounding (~eps / h^3) and truncation (~h^2) balance here
    for i in range(pop.m):
        net = load_flat(pop.model, torch.as_tensor(pop.weights[-1, i]), pop.layout).eval()
        for j in range(5):
            def at(t, j=j, net=net):
                shifted = x.clone()
                shifted[:, j] += t * h
                with torch.no_grad():
                    return loss(net(shifted), y)
            fd = [(at(1) - at(-1)) / (2 * h), (at(1) - 2 * at(0) + at(-1)) / h ** 2,
                  (at(2) - 2 * at(1) + 2 * at(-1) - at(-2)) / (2 * h ** 3)]
            for k in range(3):
                torch.testing.assert_close(d[i, k, :, j], fd[k], rtol=1e-4, atol=1e-6)


def reference(pop, probe):
    """Per model, per feature: reverse-mode nested autograd.grad on a plain nn.Module."""
    x, y = torch.as_tensor(pop.data.x_train[:probe]), torch.as_tensor(pop.data.y_train[:probe])
    loss = per_sample_loss(pop.data.kind)
    f = x[0].numel()
    out = []
    for i in pop.healthy:
        net = load_flat(pop.model, torch.as_tensor(pop.weights[-1, i]), pop.layout).eval()
        x_ = x.clone().requires_grad_()
        losses = loss(net(x_), y)
        (g,) = torch.autograd.grad(losses.sum(), x_, create_graph=True)
        d = torch.zeros(3, f, dtype=torch.float64)
        for j in range(f):
            g_j = g.flatten(1)[:, j]
            (h,) = torch.autograd.grad(g_j.sum(), x_, create_graph=True)
            h_j = h.flatten(1)[:, j]
            (t,) = torch.autograd.grad(h_j.sum(), x_, retain_graph=True)
            d[:, j] = torch.stack([g_j, h_j, t.flatten(1)[:, j]]).detach().abs().mean(1)
        rho = [scipy.stats.spearmanr(x.flatten(1)[:, j], losses.detach()).statistic for j in range(f)]
        out.append((d, np.array(rho)))
    return out


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")  # the constant feature
@pytest.mark.parametrize("kind,arch,shape", [("classification", mlp, (5,)), ("regression", mlp, (5,)),
                                             ("classification", cnn, (1, 4, 4))])
def test_population_metric_equals_a_per_model_loop(kind, arch, shape):
    pop = population(kind, m=4, status=["ok", "diverged", "ok", "ok"], arch=arch, shape=shape)
    f = int(np.prod(shape))
    res = METRIC.compute(pop, MetricsSpec(options={"sensitivity_probe": 30}))
    table = res.tables["sensitivity"]
    assert list(table.columns) == ["model_id", "feature", "d1", "d2", "d3", "spearman"]
    assert list(table["model_id"].unique()) == ["m0", "m2", "m3"] and len(table) == 3 * f
    for col in METRIC.columns:
        assert np.isnan(res.per_model[col][1]) and np.isfinite(res.per_model[col][[0, 2, 3]]).all(), col
    varies = np.arange(f) != 4
    for i, (d, rho) in zip(pop.healthy, reference(pop, 30), strict=True):
        rows = table[table["model_id"] == f"m{i}"].sort_values("feature")
        for k in range(3):
            np.testing.assert_allclose(rows[f"d{k + 1}"], d[k], rtol=1e-9, atol=1e-12)
            assert res.per_model[f"sensitivity.d{k + 1}_mean"][i] == pytest.approx(d[k].mean().item(), rel=1e-9)
        np.testing.assert_allclose(rows["spearman"], rho, rtol=1e-12)  # NaN for the constant feature
        want = scipy.stats.spearmanr(d[0, varies], np.abs(rho[varies])).statistic
        assert res.per_model["sensitivity.spearman_agreement"][i] == pytest.approx(want, rel=1e-12)


def test_ranks_and_spearman_equal_scipy_with_ties_and_constants():
    g = np.random.default_rng(3)
    a = g.integers(0, 5, size=(4, 50)).astype(float)  # many ties
    b = g.normal(size=(4, 50))
    np.testing.assert_array_equal(ranks(torch.as_tensor(a)).numpy(), scipy.stats.rankdata(a, axis=1))
    rho = spearman(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(rho, [scipy.stats.spearmanr(a[i], b[i]).statistic for i in range(4)], rtol=1e-12)
    assert np.isnan(spearman(torch.ones(1, 10), torch.as_tensor(b[:1, :10])).item())


def test_token_inputs_and_pinn_tasks_are_refused_with_a_clear_error():
    pop = population()
    pop.data.x_train = pop.data.x_train.astype(np.int64)
    with pytest.raises(ValueError, match="real-valued inputs.*tokens"):
        METRIC.compute(pop, MetricsSpec(options={"sensitivity_probe": 10}))
    assert METRIC.applies("regression") and not METRIC.applies("pinn")


def test_zoo_metrics_sensitivity_measures_a_published_zoo(tmp_path_factory, tmp_path, data_root):
    zoo = tmp_path / "zoo"
    shutil.copytree(built_zoo(tmp_path_factory, "smoke", "smoke", SMOKE_SETS), zoo)
    r = subprocess.run([sys.executable, "-m", "zoo.cli", "metrics", "sensitivity", str(zoo), "--quiet",
                        "--set", "metrics.sensitivity_probe=32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = pd.read_parquet(zoo / "models.parquet")
    table = pd.read_parquet(zoo / "sensitivity.parquet")
    assert all(m[c].notna().all() for c in METRIC.columns)
    assert len(table) == len(m) * 40 and not table.duplicated(["model_id", "feature"]).any()  # MNIST-1D: 40
    means = table.groupby("model_id")["d1"].mean()
    np.testing.assert_allclose(m.set_index("model_id")["sensitivity.d1_mean"].loc[means.index], means, rtol=1e-6)
    assert verify(zoo) == []
