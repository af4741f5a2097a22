"""CKA against its direct formulas (HSIC with the centring matrix; Kornblith's RBF recipe), its
invariances, batched = pair by pair, and representations of an MLP and a CNN with BatchNorm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import zoo.metrics.similarity as sim
from zoo.functional import stack_states
from zoo.generators.architectures import build_model
from zoo.metrics.similarity import linear_cka, pair_cka, rbf_cka, representations


def _hsic(k, l_):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l_ @ h)


def _cka_direct(x, y):
    kx, ky = x @ x.T, y @ y.T
    return _hsic(kx, ky) / np.sqrt(_hsic(kx, kx) * _hsic(ky, ky))


def _rbf_direct(x, y, sigma=0.8):
    """Kornblith et al.'s recipe: exp(-d^2 / (2 sigma^2 median(d^2))), median over all n x n entries."""
    def gram(z):
        d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * sigma ** 2 * np.median(d2)))
    kx, ky = gram(x), gram(y)
    return _hsic(kx, ky) / np.sqrt(_hsic(kx, kx) * _hsic(ky, ky))


def _t(a):
    return torch.as_tensor(a)[None]


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 7))
    y = np.tanh(x @ rng.normal(size=(7, 5))) + 0.3 * rng.normal(size=(40, 5))
    return rng, x, y


def test_cka_matches_the_direct_formulas(xy):
    rng, x, y = xy
    assert float(linear_cka(_t(x), _t(y))[0]) == pytest.approx(_cka_direct(x, y), rel=1e-12)
    wide = rng.normal(size=(40, 60))  # D > N: the Gram route
    assert float(linear_cka(_t(wide), _t(y))[0]) == pytest.approx(_cka_direct(wide, y), rel=1e-10)
    for sigma in (0.8, 0.3):
        assert float(rbf_cka(_t(x), _t(y), sigma)[0]) == pytest.approx(_rbf_direct(x, y, sigma), rel=1e-10)
    odd = x[:39], y[:39]  # odd n: the median is one entry, even n^2 the mean of two
    assert float(rbf_cka(_t(odd[0]), _t(odd[1]))[0]) == pytest.approx(_rbf_direct(*odd), rel=1e-10)
    assert 0 < _cka_direct(x, y) < 1 and abs(_rbf_direct(x, y) - _cka_direct(x, y)) > 1e-3


def test_cka_invariances(xy):
    rng, x, y = xy
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    for cka in (linear_cka, rbf_cka):
        base = float(cka(_t(x), _t(y))[0])
        assert float(cka(_t(x @ q * 3.5 + 2.0), _t(y))[0]) == pytest.approx(base, rel=1e-10)  # rotation, scale, shift
        assert float(cka(_t(y), _t(x))[0]) == pytest.approx(base, rel=1e-12)  # symmetric
        assert float(cka(_t(x), _t(x))[0]) == pytest.approx(1.0, rel=1e-12)
        assert float(cka(_t(x * np.arange(1, 8)), _t(y))[0]) != pytest.approx(base, rel=1e-3)  # not anisotropic
    pad = np.concatenate([x, np.zeros((40, 3))], 1)  # different widths are fine
    assert float(linear_cka(_t(pad), _t(x))[0]) == pytest.approx(1.0)


def test_batched_cka_equals_pair_by_pair(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 30, 6, generator=g), torch.randn(5, 30, 4, generator=g)
    y[1] = x[1, :, :4] + 0.1 * y[1]
    for cka in (linear_cka, rbf_cka):
        together = cka(x, y)
        alone = torch.cat([cka(x[k:k + 1], y[k:k + 1]) for k in range(5)])
        torch.testing.assert_close(together, alone)
    monkeypatch.setattr(sim, "GRAM_ELEMENTS", 2 * 30 * 30 * 2)  # two pairs per chunk
    torch.testing.assert_close(rbf_cka(x, y), together)


def _population(kind: str):
    torch.manual_seed(0)
    if kind == "mlp":
        models = [build_model("mlp", in_dim=6, out_dim=3, width=12, depth=2) for _ in range(3)]
        x = torch.randn(32, 6)
    else:
        models = [build_model("cnn", in_channels=1, out_dim=3, spatial_dims=1, width=5, depth=2) for _ in range(3)]
        x = torch.randn(32, 1, 12)
        for m in models:
            m.train()
            with torch.no_grad():
                m(torch.randn(64, 1, 12) * 2 + 1)  # running stats that differ from the probe's
    for m in models:
        m.eval()
    return models, x


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_representations_and_pair_cka(kind):
    models, x = _population(kind)
    params, buffers = stack_states(models)
    before = {k: v.clone() for k, v in buffers.items()}
    reps = representations(models[0], params, buffers, x)
    for k in buffers:
        torch.testing.assert_close(buffers[k], before[k])  # running stats untouched
    for i, model in enumerate(models):
        seen: list[torch.Tensor] = []
        handle = model[-1].register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[0]))  # head input
        with torch.no_grad():
            logits = model(x)
        handle.remove()
        torch.testing.assert_close(reps["logits"][i], logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reps["penultimate"][i], seen[0].flatten(1), rtol=1e-5, atol=1e-5)
    assert reps["penultimate"].shape == (3, 32, 12 if kind == "mlp" else 5)
    pairs = torch.tensor([[0, 1], [1, 2], [2, 0]])
    for kind_ in ("linear", "rbf"):
        got = pair_cka(models[0], params, buffers, pairs, x, kind=kind_)
        assert set(got) == {"cka.logits", "cka.penultimate"}
        for k, (i, j) in enumerate(pairs.tolist()):
            for name in ("logits", "penultimate"):
                a, b = reps[name][i].double().numpy(), reps[name][j].double().numpy()
                want = _cka_direct(a, b) if kind_ == "linear" else _rbf_direct(a, b)
                assert got[f"cka.{name}"][k] == pytest.approx(want, rel=1e-5), (kind_, name, k)
    same = pair_cka(models[0], params, buffers, torch.tensor([[1, 1]]), x)
    np.testing.assert_allclose(same["cka.logits"], 1.0, rtol=1e-6)
    with pytest.raises(ValueError):
        pair_cka(models[0], params, buffers, pairs, x, kind="cosine")


def test_penultimate_is_the_head_that_runs_last():
    """The head is found by execution order, not by registration order."""
    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 2)
            self.body = nn.Sequential(nn.Linear(3, 8), nn.Tanh())

        def forward(self, x):
            return self.head(self.body(x))

    models = [HeadFirst() for _ in range(2)]
    params, buffers = stack_states(models)
    x = torch.randn(10, 3)
    reps = representations(models[0], params, buffers, x)
    with torch.no_grad():
        torch.testing.assert_close(reps["penultimate"][1], models[1].body(x))


def test_constant_representations_follow_the_rule(xy):
    """A constant representation has CKA 0 with a varying one and 1 with another constant one
    (the formula alone gives 0/0 = NaN); float32 rounding of a constant still counts as constant."""
    rng, x, y = xy
    flat = np.repeat(rng.normal(size=(1, 5)), 40, axis=0)
    jitter = torch.as_tensor(flat, dtype=torch.float32) * (1 + torch.finfo(torch.float32).eps * torch.randn(40, 5))
    assert sim.constant(_t(flat)).item() and sim.constant(jitter[None]).item() and not sim.constant(_t(x)).item()
    for cka in (linear_cka, rbf_cka):
        assert float(cka(_t(flat), _t(y))[0]) == 0.0
        assert float(cka(_t(x), _t(flat * 0))[0]) == 0.0  # all zeros too
        assert float(cka(_t(flat), _t(flat[:, :2] + 7))[0]) == 1.0
        assert float(cka(jitter[None].double(), _t(y))[0]) == 0.0
        assert float(cka(_t(x), _t(y))[0]) == pytest.approx(_cka_direct(x, y) if cka is linear_cka
                                                          else _rbf_direct(x, y))  # the rest unchanged


def test_a_collapsed_model_gets_rule_values_and_its_cell_a_phase(mnist1d_small):
    """Plant a model collapsed to chance (zero head weights: the same logits for every input) in a
    three-model cell: its pairs get CKA 0, the healthy pair its real CKA, every model a finite
    mean over its pairs, and the cell a phase label instead of 'unknown'."""
    from zoo.functional import evaluate, from_flat, make_forward, to_flat
    from zoo.generators.population import Member, TrainConfig, train_population
    from zoo.generators.tasks.objectives import objective_for
    from zoo.metrics.base import Population
    from zoo.metrics.measure import measure_population
    from zoo.metrics.phases import assign_phases
    from zoo.spec import MetricsSpec

    data = mnist1d_small
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=16, depth=2)  # noqa: E731
    res = train_population(build, [Member(f"m{s}", s, lr=0.05) for s in range(3)], data,
                           TrainConfig(steps=300, batch_size=64, checkpoint_steps=[300]))
    params, buffers = from_flat(torch.as_tensor(res.weights[-1]), res.layout)
    params["4.weight"][0] = 0.0  # model 0 collapses: logits = its head bias
    weights = to_flat(params, buffers, res.layout).numpy()[None]
    objective = objective_for(data)
    spec = MetricsSpec(spectral=False, lmc="none", bezier_steps=20, hessian_batches=2)
    measured = measure_population(Population(
        model=build(), objective=objective, data=data, weights=weights, steps=[300], layout=res.layout,
        model_ids=["m0", "m1", "m2"], cell_ids=["c"] * 3, status=["ok"] * 3, lr=[0.05] * 3, optimizer="sgd",
        momentum=0.9), spec)
    pairs = measured.pairs.set_index(["model_a", "model_b"])["cka.logits"]
    assert pairs[("m0", "m1")] == 0.0 and pairs[("m0", "m2")] == 0.0
    assert 0.1 < pairs[("m1", "m2")] <= 1.0
    cka = measured.per_model["similarity.cka"]
    np.testing.assert_allclose(cka, [0.0, pairs[("m1", "m2")] / 2, pairs[("m1", "m2")] / 2])
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    losses = evaluate(make_forward(build()), build(), objective, params, buffers, x, y)["loss"].numpy()
    models = pd.DataFrame({"cell_id": ["c"] * 3, "train_loss": losses, **measured.per_model})
    phases = assign_phases(models)
    assert set(phases["cell_phase"]) <= {"I", "II", "III", "IV-A", "IV-B"}
    assert phases["phase"].tolist().count("unknown") == 0
