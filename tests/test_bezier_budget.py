"""The Bezier bend's budget follows the models' training: it connects well-trained wide MLPs,
finds a known curve, reports its final loss and convergence, and the spec fields are validated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.generators.tasks.objectives import objective_for
from zoo.metrics.base import Population
from zoo.metrics.connectivity import BEND_LR_SCALE, bend_steps, bezier_connectivity, linear_connectivity, train_bends
from zoo.metrics.measure import measure_population
from zoo.metrics.phases import PhaseThresholds
from zoo.spec import MetricsSpec, SpecError, load_spec

CONNECTED = PhaseThresholds().mc_tolerance * math.log(10)  # the phase labels' |mc| tolerance


def test_wide_well_trained_mlps_are_connected(data_root):
    """Two width-128 MNIST-1D MLPs trained to ~0.002 loss: the straight line has a barrier of ~2
    nats, the default bend (as many steps as the models trained) finds a curve within the connected
    tolerance. The old 100-step bend did not."""
    torch.set_num_threads(1)
    data = load_task("mnist1d", 1000, 500, 42, data_root)
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=128, depth=2)  # noqa: E731
    res = train_population(build, [Member("a", 0, lr=0.05), Member("b", 1, lr=0.05)], data,
                           TrainConfig(steps=1500, batch_size=64, checkpoint_steps=[1500]))
    assert res.metrics["train_loss"][-1].max() < 0.01

    def pair(**fields):
        spec = MetricsSpec(hessian=False, spectral=False, cka=False, lmc="none", **fields)
        m = measure_population(Population(
            model=build(), objective=objective_for(data), data=data, weights=res.weights,
            steps=res.checkpoint_steps, layout=res.layout, model_ids=["a", "b"], cell_ids=["c", "c"],
            status=res.status, lr=[0.05, 0.05], optimizer="sgd", momentum=0.9), spec)
        return m.pairs.iloc[0]

    row = pair()
    assert row["barrier_max.train.loss"] > 1.0  # the straight line crosses a real barrier
    assert row["bezier_steps"] == 1500  # the models' own budget
    assert abs(row["mc.train.loss"]) <= CONNECTED
    assert row["bezier_converged"] and 0 < row["bezier_final_loss"] < 0.02
    short = pair(bezier_steps=100)
    assert short["bezier_steps"] == 100 and abs(short["mc.train.loss"]) > CONNECTED
    assert not short["bezier_converged"]


class Parabola:
    """Loss (y - (1 - x^2))^2 of the model's output (x, y) for input 1: zero on the parabola
    y = 1 - x^2, which the quadratic Bezier curve from (-1, 0) to (1, 0) with bend (0, 2) traces
    exactly; the straight line y = 0 between the two minima rises to loss 1 at x = 0."""

    metrics = ("loss",)

    @staticmethod
    def _loss(out):
        return (out[..., 1] - (1 - out[..., 0] ** 2)) ** 2

    def batch_loss(self, forward, params, buffers, xb, yb):
        return self._loss(forward(params, buffers, xb)).mean(1)

    def sample_metrics(self, forward, params, buffers, xb, yb):
        return {"loss": self._loss(forward(params, buffers, xb))}

    def reduce(self, per_sample, weight, split):
        return {k: v.double().mean(1) for k, v in per_sample.items()}


def test_bend_finds_a_known_curve():
    model = nn.Linear(1, 2, bias=False).double()
    params = {"weight": torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64).unsqueeze(-1)}
    x = torch.ones(8, 1, dtype=torch.float64)
    splits = {"train": (x, torch.zeros(8))}
    pairs = torch.tensor([[0, 1]])
    kw = dict(steps=200, lr=0.1, batch_size=8, schedule="cosine")
    line = linear_connectivity(model, Parabola(), params, {}, pairs, splits, n_points=11)
    assert line["barrier_max.train.loss"][0] == pytest.approx(1.0)
    bend = train_bends(model, Parabola(), params, {}, pairs, x, splits["train"][1], **kw).end["weight"][0, :, 0]
    np.testing.assert_allclose(bend.numpy(), [0.0, 2.0], atol=0.02)  # the parabola's bend, from (0, 0)
    curve = bezier_connectivity(model, Parabola(), params, {}, pairs, splits, *splits["train"], n_points=11,
                                tol=0.01, **kw)
    assert abs(curve["mc.train.loss"][0]) < 0.01 and curve["bezier_final_loss"][0] < 1e-3
    assert curve["bezier_converged"][0] and curve["bezier_steps"][0] == 200
    short = bezier_connectivity(model, Parabola(), params, {}, pairs, splits, *splits["train"], n_points=11,
                                tol=0.01, **{**kw, "steps": 4})
    assert not short["bezier_converged"][0] and short["bezier_final_loss"][0] > 0.05


def test_bend_lr_scale_is_the_curve_sensitivity():
    t = np.linspace(0, 1, 100001)
    c = 2 * t * (1 - t)  # how far phi(t) moves per unit of bend
    assert abs(BEND_LR_SCALE * np.mean(c ** 2) - 1) < 1e-4


def test_budget_follows_training_unless_fixed():
    assert bend_steps(MetricsSpec(), 3000) == 3000
    assert bend_steps(MetricsSpec(bezier_budget=0.25), 3000) == 750
    assert bend_steps(MetricsSpec(bezier_budget=1e-6), 3000) == 1  # never rounds to "off"
    assert bend_steps(MetricsSpec(bezier_steps=40), 3000) == 40
    assert bend_steps(MetricsSpec(bezier_steps=0), 3000) == 0


@pytest.mark.parametrize("override, field", [
    ("metrics.bezier_steps=-2", "metrics.bezier_steps"),
    ("metrics.bezier_budget=0", "metrics.bezier_budget"),
    ("metrics.bezier_budget=-0.5", "metrics.bezier_budget"),
    ("metrics.bezier_budget=nan", "metrics.bezier_budget"),
    ("metrics.bezier_budget=inf", "metrics.bezier_budget"),
    ("metrics.bezier_lr=nan", "metrics.bezier_lr"),
    ("metrics.bezier_lr=-1.0", "metrics.bezier_lr"),
])
def test_bad_budget_fields_are_one_line_spec_errors(override, field):
    with pytest.raises(SpecError) as err:
        load_spec("default", [override])
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_budget_fields_accept_their_documented_values():
    spec = load_spec("default", ["metrics.bezier_budget=0.5", "metrics.bezier_steps=-1"])
    assert spec.metrics.bezier_budget == 0.5 and spec.metrics.bezier_steps == -1
    assert load_spec("default").metrics.bezier_steps == -1
