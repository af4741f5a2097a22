"""Barriers and Bezier mode connectivity on constructed landscapes; CKA vs its formula; batching."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zoo.functional import stack_states
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.connectivity import bezier_connectivity, linear_connectivity, mode_connectivity
from zoo.metrics.paths import barrier_variants
from zoo.metrics.similarity import linear_cka, pair_cka, rbf_cka, representations


class Landscape:
    """A loss that depends only on the model's output for input 1: out = the weight vector w."""

    metrics = ("loss",)

    def __init__(self, fn):
        self.fn = fn

    def batch_loss(self, forward, params, buffers, xb, yb):
        return self.fn(forward(params, buffers, xb)).mean(1)

    def sample_metrics(self, forward, params, buffers, xb, yb):
        return {"loss": self.fn(forward(params, buffers, xb))}

    def reduce(self, per_sample, weight, split):
        return {k: v.double().mean(1) for k, v in per_sample.items()}


def _weights(*ws):
    model = nn.Linear(1, len(ws[0]), bias=False)
    return model, {"weight": torch.tensor(ws, dtype=torch.float64).unsqueeze(-1)}


SPLIT = {"train": (torch.ones(4, 1, dtype=torch.float64), torch.zeros(4))}


def test_convex_path_has_no_barrier():
    model, params = _weights([0.5], [2.0])
    bowl = Landscape(lambda out: (out ** 2).sum(-1))
    r = linear_connectivity(model.double(), bowl, params, {}, torch.tensor([[0, 1]]), SPLIT, n_points=11)
    assert r["barrier_lin.train.loss"][0] <= 1e-12  # a convex curve stays under its chord
    assert np.isclose(r["barrier_max.train.loss"][0], 4.0 - (0.25 + 4.0) / 2)  # max is the higher endpoint
    assert np.isclose(r["barrier_mid.train.loss"][0], 1.25 ** 2 - (0.25 + 4.0) / 2)


def test_double_well_has_the_known_barrier():
    model, params = _weights([-1.0], [1.0])
    well = Landscape(lambda out: ((out ** 2).sum(-1) - 1) ** 2)  # minima at +-1, height 1 at 0
    r = linear_connectivity(model.double(), well, params, {}, torch.tensor([[0, 1]]), SPLIT, n_points=11)
    for variant in ("max", "lin", "mid"):
        assert np.isclose(r[f"barrier_{variant}.train.loss"][0], 1.0)
    assert np.isclose(mode_connectivity(r["curve.train.loss"])[0], -1.0)  # a barrier is negative


def test_barrier_variants_by_hand():
    ts = np.linspace(0, 1, 5)
    curve = np.array([[1.0, 3.0, 2.0, 2.5, 2.0]])
    b = barrier_variants(curve, ts)
    assert np.isclose(b["max"][0], 3.0 - 1.5)
    assert np.isclose(b["lin"][0], 3.0 - 1.25)
    assert np.isclose(b["mid"][0], 2.0 - 1.5)


def test_bezier_bend_goes_around_a_ring_barrier():
    """Loss (|w|^2 - 1)^2: two points on the unit ring; the chord cuts inside, a curve can follow it."""
    a, b = [1.0, 0.0], [-0.6, 0.8]
    model, params = _weights(a, b)
    ring = Landscape(lambda out: ((out ** 2).sum(-1) - 1) ** 2)
    pairs = torch.tensor([[0, 1]])
    line = linear_connectivity(model.double(), ring, params, {}, pairs, SPLIT, n_points=21)
    curve = bezier_connectivity(model.double(), ring, params, {}, pairs, SPLIT, *SPLIT["train"], steps=300, lr=0.05,
                                batch_size=4, n_points=21)
    assert mode_connectivity(line["curve.train.loss"])[0] < -0.3  # the chord has a real barrier
    assert curve["bezier_curve.train.loss"].max() < 0.2 * line["curve.train.loss"].max()
    assert curve["mc.train.loss"][0] > mode_connectivity(line["curve.train.loss"])[0]


def _mlps(n=4, bn=False, seed=0):
    torch.manual_seed(seed)
    layers = lambda: [nn.Linear(6, 16), *([nn.BatchNorm1d(16)] if bn else []), nn.ReLU(), nn.Linear(16, 3)]  # noqa: E731
    models = [nn.Sequential(*layers()) for _ in range(n)]
    if bn:
        for m in models:
            m.train()
            m(torch.randn(64, 6))  # non-trivial running statistics
    return models


def test_batched_pairs_equal_pair_by_pair():
    for bn in (False, True):
        models = _mlps(4, bn)
        params, buffers = stack_states(models)
        x, y = torch.randn(50, 6), torch.randint(0, 3, (50,))
        splits = {"train": (x, y), "test": (x[:20], y[:20])}
        pairs = torch.tensor([[0, 1], [2, 3], [0, 3]])
        kw = dict(n_points=5, bn_reset_x=x if bn else None)
        together = linear_connectivity(models[0], Classification(), params, buffers, pairs, splits, **kw)
        bez = bezier_connectivity(models[0], Classification(), params, buffers, pairs, splits, x, y, steps=5,
                                  lr=torch.tensor([0.1, 0.1, 0.1]), batch_size=8, n_points=5, bn_reset_x=x)
        for k in range(len(pairs)):
            alone = linear_connectivity(models[0], Classification(), params, buffers, pairs[k:k + 1], splits, **kw)
            for key, v in alone.items():
                np.testing.assert_allclose(together[key][k], v[0], rtol=1e-5, atol=1e-6, err_msg=key)
        assert bez["mc.train.loss"].shape == (3,) and np.isfinite(bez["mc.test.err"]).all()


def _cka_direct(x, y):
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(kx, ky) / np.sqrt(hsic(kx, kx) * hsic(ky, ky))


def test_linear_cka_formula_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 7))
    y = x @ rng.normal(size=(7, 5)) + 0.3 * rng.normal(size=(40, 5))
    X, Y = torch.as_tensor(x)[None], torch.as_tensor(y)[None]
    assert np.isclose(float(linear_cka(X, Y)[0]), _cka_direct(x, y))
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    assert np.isclose(float(linear_cka(torch.as_tensor(x @ q * 3.5)[None], Y)[0]), _cka_direct(x, y))
    assert np.isclose(float(linear_cka(X, X)[0]), 1.0)
    assert np.isclose(float(rbf_cka(torch.as_tensor(x @ q * 2.0)[None], Y)[0]), float(rbf_cka(X, Y)[0]))
    assert np.isclose(float(rbf_cka(X, X)[0]), 1.0)
    assert not np.isclose(float(linear_cka(torch.as_tensor(x * np.arange(1, 8))[None], Y)[0]), _cka_direct(x, y))


def test_pair_cka_uses_logits_and_penultimate_and_batches():
    models = _mlps(3)
    params, buffers = stack_states(models)
    x = torch.randn(30, 6)
    reps = representations(models[0], params, buffers, x)
    with torch.no_grad():
        np.testing.assert_allclose(reps["logits"][1], models[1](x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(reps["penultimate"][2], models[2][:2](x), rtol=1e-5, atol=1e-6)
    pairs = torch.tensor([[0, 1], [1, 2]])
    got = pair_cka(models[0], params, buffers, pairs, x)
    for k, (i, j) in enumerate(pairs.tolist()):
        with torch.no_grad():
            assert np.isclose(got["cka.logits"][k], _cka_direct(models[i](x).double().numpy(),
                                                                 models[j](x).double().numpy()))
