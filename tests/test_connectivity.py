"""Barriers and Bezier mode connectivity on constructed landscapes; batched pairs = pair by pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from zoo.functional import stack_states
from zoo.generators.architectures import build_model
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.connectivity import bezier_connectivity, linear_connectivity, mode_connectivity, train_bends
from zoo.metrics.paths import barrier_variants, reset_batchnorm


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
    model = nn.Linear(1, len(ws[0]), bias=False).double()
    return model, {"weight": torch.tensor(ws, dtype=torch.float64).unsqueeze(-1)}


SPLIT = {"train": (torch.ones(4, 1, dtype=torch.float64), torch.zeros(4))}
PAIR = torch.tensor([[0, 1]])


def test_convex_path_has_no_barrier():
    model, params = _weights([0.5], [2.0])
    bowl = Landscape(lambda out: (out ** 2).sum(-1))  # v(t) = (0.5 + 1.5 t)^2
    r = linear_connectivity(model, bowl, params, {}, PAIR, SPLIT, n_points=11)
    assert r["curve.train.loss"].shape == (1, 11)
    np.testing.assert_allclose(r["curve.train.loss"][0], (0.5 + 1.5 * np.linspace(0, 1, 11)) ** 2)
    assert r["barrier_lin.train.loss"][0] == pytest.approx(0.0, abs=1e-12)  # max of v - chord: the endpoints
    assert r["barrier_max.train.loss"][0] == pytest.approx(4.0 - (0.25 + 4.0) / 2)  # the higher endpoint
    assert r["barrier_mid.train.loss"][0] == pytest.approx(1.25 ** 2 - (0.25 + 4.0) / 2)


def test_double_well_has_the_known_barrier():
    model, params = _weights([-1.0], [1.0])
    well = Landscape(lambda out: ((out ** 2).sum(-1) - 1) ** 2)  # v(t) = ((2t-1)^2 - 1)^2: 0 at the ends, 1 at 1/2
    r = linear_connectivity(model, well, params, {}, PAIR, SPLIT, n_points=11)
    for variant in ("max", "lin", "mid"):
        assert r[f"barrier_{variant}.train.loss"][0] == pytest.approx(1.0)
    assert mode_connectivity(r["curve.train.loss"])[0] == pytest.approx(-1.0)  # a barrier is negative


def test_asymmetric_quartic_by_hand():
    """w from 0 to 2 under v(w) = w^2 (w - 2)^2 + w: v(t) = 16 t^2 (1 - t)^2 + 2t on t in [0, 1]."""
    model, params = _weights([0.0], [2.0])
    quartic = Landscape(lambda out: out[..., 0] ** 2 * (out[..., 0] - 2) ** 2 + out[..., 0])
    r = linear_connectivity(model, quartic, params, {}, PAIR, SPLIT, n_points=21)
    t = np.linspace(0, 1, 21)
    v = 16 * t ** 2 * (1 - t) ** 2 + 2 * t
    np.testing.assert_allclose(r["curve.train.loss"][0], v, atol=1e-12)
    assert r["barrier_max.train.loss"][0] == pytest.approx(v.max() - 1.0)
    assert r["barrier_lin.train.loss"][0] == pytest.approx(1.0)  # v - chord = 16 t^2 (1-t)^2, max 1 at t = 1/2
    assert r["barrier_mid.train.loss"][0] == pytest.approx(1.0 + 1.0 - 1.0)


def test_barrier_variants_and_mc_by_hand():
    ts = np.linspace(0, 1, 5)
    curve = np.array([[1.0, 3.0, 2.0, 2.5, 2.0]])
    b = barrier_variants(curve, ts)
    assert b["max"][0] == pytest.approx(3.0 - 1.5)
    assert b["lin"][0] == pytest.approx(3.0 - 1.25)
    assert b["mid"][0] == pytest.approx(2.0 - 1.5)
    # mc = mean of the ends - v(t*), t* the interior point farthest from that mean
    mc = mode_connectivity(np.array([[1.0, 3.0, 2.0, 2.5, 2.0],   # bump: t* = 1/4, mc = 1.5 - 3 < 0
                                     [2.0, 1.0, 0.5, 1.5, 2.0],   # valley below the ends: mc = 2 - 0.5 > 0
                                     [0.0, 0.5, -2.0, 1.0, 0.0]]))  # the larger deviation wins, whatever its sign
    np.testing.assert_allclose(mc, [-1.5, 1.5, 2.0])
    with pytest.raises(ValueError):
        mode_connectivity(np.zeros((1, 2)))


def test_bezier_bend_goes_around_a_ring_barrier():
    """Loss (|w|^2 - 1)^2: two points on the unit ring; the chord cuts inside, a curve can follow it."""
    model, params = _weights([1.0, 0.0], [-0.6, 0.8])
    ring = Landscape(lambda out: ((out ** 2).sum(-1) - 1) ** 2)
    line = linear_connectivity(model, ring, params, {}, PAIR, SPLIT, n_points=21)
    curve = bezier_connectivity(model, ring, params, {}, PAIR, SPLIT, *SPLIT["train"], steps=300, lr=0.05,
                                batch_size=4, n_points=21)
    line_mc = mode_connectivity(line["curve.train.loss"])[0]
    assert line_mc < -0.3  # the chord has a real barrier (mc < 0)
    assert curve["bezier_curve.train.loss"].max() < 0.2 * line["curve.train.loss"].max()
    assert curve["mc.train.loss"][0] > line_mc and abs(curve["mc.train.loss"][0]) < 0.1
    np.testing.assert_allclose(curve["bezier_curve.train.loss"][0, [0, -1]], 0.0, atol=1e-12)  # the ends stay


def test_bezier_bend_connects_permuted_relu_nets():
    """A ReLU net and its hidden-unit permutation compute the same function; the straight line
    between them averages different units (a barrier), a trained bend finds a low path (Adam)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.randn(256, 4, dtype=torch.float64)
    with torch.no_grad():
        net[2].weight.mul_(4.0)
        y = net(x).argmax(1)  # the net labels its own data: err 0 at both ends
    perm = torch.roll(torch.arange(8), 3)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    permuted = {"0.weight": state["0.weight"][perm], "0.bias": state["0.bias"][perm],
                "2.weight": state["2.weight"][:, perm], "2.bias": state["2.bias"]}
    params = {k: torch.stack([state[k], permuted[k]]) for k in state}
    splits = {"train": (x, y)}
    line = linear_connectivity(net, Classification(), params, {}, PAIR, splits, n_points=11)
    curve = bezier_connectivity(net, Classification(), params, {}, PAIR, splits, x, y, steps=300, lr=0.02,
                                optimizer="adam", batch_size=64, n_points=11)
    assert np.allclose(line["curve.train.loss"][0, 0], line["curve.train.loss"][0, -1])
    assert line["barrier_max.train.loss"][0] > 0.2 and mode_connectivity(line["curve.train.loss"])[0] < -0.2
    bez = curve["bezier_curve.train.loss"][0]
    assert bez[1:-1].max() < bez[0]  # the curve never rises above its ends: no barrier left
    assert curve["mc.train.loss"][0] > 0  # it even dips below them (mc > 0), where the line has mc < 0


def _population(kind: str, n: int = 4):
    torch.manual_seed(0)
    if kind == "mlp":
        models = [build_model("mlp", in_dim=6, out_dim=3, width=12, depth=2) for _ in range(n)]
        x = torch.randn(48, 6)
    else:
        models = [build_model("cnn", in_channels=1, out_dim=3, spatial_dims=1, width=4, depth=2) for _ in range(n)]
        x = torch.randn(48, 1, 12)
        for m in models:
            m.train()
            with torch.no_grad():
                m(x * 2 + 0.5)  # running statistics different from x's own
            m.eval()
    params, buffers = stack_states(models)
    return models, params, buffers, x, torch.randint(0, 3, (48,))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_batched_pairs_equal_pair_by_pair(kind):
    models, params, buffers, x, y = _population(kind)
    splits = {"train": (x, y), "test": (x[:20], y[:20])}
    pairs = torch.tensor([[0, 1], [2, 3], [0, 3]])
    bn_x = x if kind == "cnn" else None
    lin = linear_connectivity(models[0], Classification(), params, buffers, pairs, splits, n_points=5, bn_reset_x=bn_x)
    kw = dict(steps=6, optimizer="sgd", batch_size=8, n_points=5, seed=3, schedule="cosine", tol=0.05)
    bez = bezier_connectivity(models[0], Classification(), params, buffers, pairs, splits, x, y,
                              lr=torch.tensor([0.1, 0.05, 0.2]), **kw)
    for k in range(len(pairs)):
        alone = linear_connectivity(models[0], Classification(), params, buffers, pairs[k:k + 1], splits, n_points=5,
                                    bn_reset_x=bn_x)
        assert alone.keys() == lin.keys()
        for key, v in alone.items():
            np.testing.assert_allclose(lin[key][k], v[0], rtol=1e-5, atol=1e-6, err_msg=key)
        one = bezier_connectivity(models[0], Classification(), params, buffers, pairs[k:k + 1], splits, x, y,
                                  lr=[0.1, 0.05, 0.2][k], **kw)
        for key, v in one.items():
            np.testing.assert_allclose(bez[key][k], v[0], rtol=1e-5, atol=1e-6, err_msg=key)
    assert {f"mc.{s}.{m}" for s in splits for m in ("loss", "err")} <= bez.keys()
    assert {"bezier_steps", "bezier_final_loss", "bezier_converged"} <= bez.keys()  # compared pair by pair above
    assert bez["bezier_curve.test.err"].shape == (3, 5)
    # the straight-line curve at t = 0 / 1 is the endpoints, scored by a plain forward (eval mode)
    for k, (i, j) in enumerate(pairs.tolist()):
        for end, m in ((0, i), (-1, j)):
            model = models[m]
            if kind == "cnn":  # with reset statistics: the model's own batch statistics on x
                p, b = stack_states([model])
                model = build_model("cnn", in_channels=1, out_dim=3, spatial_dims=1, width=4, depth=2)
                model.load_state_dict({name: v[0] for name, v in {**p, **reset_batchnorm(model, p, b, x)}.items()})
            with torch.no_grad():
                loss = nn.functional.cross_entropy(model.eval()(x), y).item()
            assert lin["curve.train.loss"][k, end] == pytest.approx(loss, rel=1e-5)
            assert bez["bezier_curve.train.loss"][k, end] == pytest.approx(loss, rel=1e-5)


def test_bezier_training_matches_a_torch_optimizer():
    """One pair alone: the bend's updates equal torch.optim.SGD / Adam on phi(t) with the same draws."""
    models, params, buffers, x, y = _population("mlp", 2)
    pairs = torch.tensor([[0, 1]])
    for name, opt_cls, kw in (("sgd", torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
                              ("adam", torch.optim.Adam, dict(lr=0.01))):
        bend = train_bends(models[0], Classification(), params, buffers, pairs, x, y, steps=4, lr=kw["lr"],
                           optimizer=name, momentum=0.9, batch_size=8, seed=1).end
        from zoo.metrics.connectivity import _pair_draws

        ts, idx = _pair_draws(pairs, len(x), 4, 8, 1)
        theta = {k: ((v[0] + v[1]) / 2).clone().requires_grad_(True) for k, v in params.items()}
        opt = opt_cls(list(theta.values()), **kw)
        model = models[0]
        for step in range(4):
            t = float(ts[0, step])
            phi = {k: (1 - t) ** 2 * params[k][0] + 2 * t * (1 - t) * theta[k] + t ** 2 * params[k][1] for k in theta}
            loss = nn.functional.cross_entropy(torch.func.functional_call(model, phi, (x[idx[0, step]],)),
                                               y[idx[0, step]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for k in theta:
            np.testing.assert_allclose(bend[k][0], theta[k].detach(), rtol=1e-4, atol=1e-6, err_msg=f"{name} {k}")


def test_diverging_pair_keeps_a_finite_bend():
    models, params, buffers, x, y = _population("mlp", 2)
    pairs = torch.tensor([[0, 1], [1, 0]])
    kw = dict(steps=30, batch_size=8)
    bends = train_bends(models[0], Classification(), params, buffers, pairs, x, y, lr=torch.tensor([0.05, 1e30]), **kw)
    alone = train_bends(models[0], Classification(), params, buffers, pairs[:1], x, y, lr=0.05, **kw).end
    bend = bends.end
    assert bends.finite.tolist() == [True, False]
    for k, v in bend.items():
        assert bool(v.isfinite().all())
        np.testing.assert_allclose(v[0], alone[k][0], rtol=1e-5, atol=1e-6)
