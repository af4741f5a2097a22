"""The kernels where zoo uses them: training (population GEMM + fused cross-entropy) and path
evaluation (interpolated-weight GEMMs). Fused paths must equal materialised states, and the Triton
route (CPU interpreter, forced with ZOO_KERNELS=triton) must give the torch route's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo.kernels as zk
from zoo.functional import make_forward, stack_states
from zoo.generators.architectures import build_for_task, build_model
from zoo.generators.population import Member, TrainConfig, init_models, train_population
from zoo.generators.tasks import load_task
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.connectivity import bezier_connectivity, bezier_states, linear_connectivity
from zoo.metrics.lmc import lmc_pairs
from zoo.metrics.paths import evaluate_path, evaluate_states, interpolate, interpolation_points

needs_triton = pytest.mark.skipif(not zk.HAS_TRITON, reason="triton is not importable")


def _force_triton(monkeypatch) -> list[str]:
    """Route every kernel call through Triton's interpreter; returns the list of backends chosen."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ZOO_KERNELS", "triton")
    chosen, pick = [], zk.backend

    def spy(*tensors):
        chosen.append(pick(*tensors))
        return chosen[-1]

    monkeypatch.setattr(zk, "backend", spy)
    return chosen


def _mlp_population(m=4, width=8, dtype=torch.float64):
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=width, depth=2)  # noqa: E731
    models = [mm.to(dtype) for mm in init_models(build, list(range(m)))]
    params, buffers = stack_states(models)
    return models[0], params, buffers


def _splits(data, n=64, dtype=torch.float64):
    x = torch.as_tensor(data.x_test[:n]).to(dtype)
    return {"test": (x, torch.as_tensor(data.y_test[:n]))}


def test_fused_forward_fuses_relu_and_equals_module(mnist1d_small):
    model, params, buffers = _mlp_population()
    x = torch.as_tensor(mnist1d_small.x_test[:10]).double()
    out = make_forward(model)(params, buffers, x.expand(4, -1, -1))
    for i in range(4):
        single = {k: v[i] for k, v in params.items()}
        ref = torch.func.functional_call(model, single, (x,))
        torch.testing.assert_close(out[i], ref, rtol=1e-12, atol=1e-12)


def test_fused_paths_equal_materialised_states(mnist1d_small):
    model, params, _ = _mlp_population()
    splits = _splits(mnist1d_small)
    obj = Classification()
    a = {k: v[[0, 2]] for k, v in params.items()}
    b = {k: v[[1, 3]] for k, v in params.items()}
    ts = interpolation_points(5)
    line = evaluate_path(model, obj, [a, b], zk.linear_coeffs(ts), splits)
    ref = evaluate_states(model, obj, interpolate(a, b, ts), {}, splits)
    assert set(line) == {"test.loss", "test.err"}
    for k in ref:
        torch.testing.assert_close(line[k], ref[k], rtol=1e-10, atol=1e-12)

    bend = {k: (a[k] + b[k]) / 2 + 0.1 * torch.randn_like(a[k]) for k in a}
    rep = lambda s: {n: v.repeat_interleave(len(ts), 0) for n, v in s.items()}  # noqa: E731
    curve = evaluate_path(model, obj, [a, bend, b], zk.bezier_coeffs(ts), splits)
    ref = evaluate_states(model, obj, bezier_states(rep(a), rep(bend), rep(b), ts.repeat(2)), {}, splits)
    for k in ref:
        torch.testing.assert_close(curve[k], ref[k], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(curve["test.loss"], line["test.loss"])  # the bend moved the path


@needs_triton
def test_training_through_triton_kernels_matches_torch(monkeypatch, mnist1d_small):
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=8, depth=2)  # noqa: E731
    members = [Member("a", seed=1, lr=0.05, momentum=0.9), Member("b", seed=2, lr=0.1, label_noise=0.2)]
    cfg = TrainConfig(steps=6, batch_size=16, checkpoint_steps=[6])
    ref = train_population(build, members, mnist1d_small, cfg)
    chosen = _force_triton(monkeypatch)
    got = train_population(build, members, mnist1d_small, cfg)
    assert len(chosen) >= 6 * 4 and set(chosen) == {"triton"}  # 3 GEMMs + 1 cross-entropy per step
    assert not np.array_equal(ref.weights[-1], ref.weights[-1][::-1])  # two different models
    np.testing.assert_allclose(got.weights, ref.weights, rtol=0, atol=1e-5)
    for k in ("train_loss", "test_acc"):
        np.testing.assert_allclose(got.metrics[k], ref.metrics[k], rtol=0, atol=1e-5)


@needs_triton
def test_pinn_training_through_triton_kernels_matches_torch(monkeypatch):
    """The physics loss differentiates the network in its inputs, then the result in the weights:
    a double backward through the population-GEMM autograd Function."""
    d = load_task("convection", 32, 64, 0, beta=2.0)
    build, _ = build_for_task({"arch.family": "pinn", "arch.width": 8, "arch.depth": 1,
                               "arch.activation": "tanh"}, d.input_shape, 1)
    cfg = TrainConfig(steps=3, batch_size=16, checkpoint_steps=[3], optimizer="adam")
    members = [Member("a", 1, lr=1e-2), Member("b", 2, lr=3e-3)]
    ref = train_population(build, members, d, cfg)
    chosen = _force_triton(monkeypatch)
    got = train_population(build, members, d, cfg)
    assert chosen and set(chosen) == {"triton"}
    np.testing.assert_allclose(got.weights, ref.weights, rtol=0, atol=1e-5)


@needs_triton
def test_connectivity_and_lmc_through_triton_kernels_match_torch(monkeypatch, mnist1d_small):
    model, params, buffers = _mlp_population(m=3, width=8, dtype=torch.float32)
    splits = _splits(mnist1d_small, n=32, dtype=torch.float32)
    obj = Classification()
    pairs = torch.tensor([[0, 1], [1, 2]])
    x = torch.as_tensor(mnist1d_small.x_train[:64]).float()
    y = torch.as_tensor(mnist1d_small.y_train[:64])

    def run():
        line = linear_connectivity(model, obj, params, buffers, pairs, splits, n_points=3)
        curve = bezier_connectivity(model, obj, params, buffers, pairs, splits, x, y, steps=2, lr=0.05,
                                    batch_size=16, n_points=3)
        aligned, _ = lmc_pairs(model, obj, params, buffers, pairs, splits, x[:16], alignments=("weight",),
                               n_points=3, layerwise=False)
        barriers = {c: aligned[c].to_numpy() for c in aligned if c.startswith("barrier_max.")}
        assert barriers
        return {**line, **curve, **barriers}

    ref = run()
    chosen = _force_triton(monkeypatch)
    got = run()
    assert chosen and set(chosen) == {"triton"}
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
