"""Batched Hessian metrics vs the dense Hessian, the unbatched computation and PyHessian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from zoo.functional import stack_states
from zoo.generators.architectures import build_model
from zoo.metrics.hessian import PopulationHessian, density, hessian_metrics, hvp, top_eigenvalues, trace

M = 3


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def mlp_population(m: int = M, dtype=torch.float64, seed0: int = 0):
    models = []
    for i in range(m):
        torch.manual_seed(seed0 + i)
        models.append(build_model("mlp", in_dim=5, out_dim=3, width=4, depth=1).to(dtype))
    params, buffers = stack_states(models)
    return models, params, buffers


def cnn_population(m: int = M, dtype=torch.float64):
    models = []
    for i in range(m):
        torch.manual_seed(100 + i)
        model = build_model("cnn", in_channels=1, out_dim=3, spatial_dims=1, width=3, depth=1).to(dtype)
        bn = model[1]
        bn.running_mean.normal_(0, 0.3)  # eval mode must use these, not batch statistics
        bn.running_var.uniform_(0.5, 2.0)
        models.append(model)
    params, buffers = stack_states(models)
    return models, params, buffers


def make_batches(in_shape=(5,), n_batches: int = 3, size: int = 8, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *in_shape, generator=g, dtype=dtype),
             torch.randint(0, 3, (size,), generator=g)) for _ in range(n_batches)]


def dense_hessian(model, batches) -> torch.Tensor:
    """Dense Hessian [P, P] of the mean cross-entropy over all samples, params in named order."""
    model = model.eval()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    sizes = [p.numel() for p in model.parameters()]
    buffers = dict(model.named_buffers())
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        ps = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, (ps, buffers), (x,)), y)

    return torch.autograd.functional.hessian(loss, flat0)


def probes(model, seed: int, kind: str, count: int, dtype=torch.float64) -> torch.Tensor:
    """The probe stream of zoo.metrics.hessian (PyHessian's calls, per parameter) as [count, P]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        if kind == "rademacher":
            parts = [torch.randint(0, 2, p.shape, generator=g, dtype=dtype) * 2 - 1
                     for p in model.parameters()]
        else:
            parts = [torch.randn(p.shape, generator=g, dtype=dtype) for p in model.parameters()]
        out.append(torch.cat([t.reshape(-1) for t in parts]))
    return torch.stack(out)


def test_hvp_matches_dense_hessian_times_vector():
    models, params, buffers = mlp_population()
    batches = make_batches()
    g = torch.Generator().manual_seed(1)
    v = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
    hv = hvp(models[0], params, buffers, batches, v)
    for i, model in enumerate(models):
        expected = dense_hessian(model, batches) @ torch.cat([v[n][i].reshape(-1) for n in params])
        got = torch.cat([hv[n][i].reshape(-1) for n in params])
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk,cache", [(None, True), (5, True), (7, False)])
def test_operator_chunking_and_cache_give_the_same_product(chunk, cache):
    models, params, buffers = cnn_population()
    batches = make_batches((1, 8))
    op = PopulationHessian(models[0].eval(), params, buffers, batches, chunk=chunk, cache=cache)
    v = torch.randn(M, op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for i, model in enumerate(models):
        torch.testing.assert_close(op(v)[i], dense_hessian(model, batches) @ v[i], rtol=1e-10, atol=1e-12)
    op.focus(torch.tensor([False, True, False]))  # the operator then covers model 1 only
    expected = dense_hessian(models[1], batches) @ v[1]
    torch.testing.assert_close(op(v[1:2])[0], expected, rtol=1e-10, atol=1e-12)


def test_top_eigenvalues_match_dense_eigvalsh():
    models, params, buffers = mlp_population()
    batches = make_batches()
    res = top_eigenvalues(models[0], params, buffers, batches, k=2, max_iter=5000, tol=1e-11)
    assert res.converged.all()
    for i, model in enumerate(models):
        ev = torch.linalg.eigvalsh(dense_hessian(model, batches))
        dominant = ev[ev.abs().argsort(descending=True)][:3]
        assert dominant[2].abs() < 0.99 * dominant[1].abs()  # power iteration needs a gap
        torch.testing.assert_close(res.values[i], dominant[:2], rtol=1e-6, atol=0)
        # The deflated vectors are orthonormal eigenvectors.
        h = dense_hessian(model, batches)
        vec = res.vectors[i]
        # (eigenvector error ~ sqrt of the eigenvalue's relative error)
        torch.testing.assert_close(vec @ vec.T, torch.eye(2, dtype=vec.dtype), rtol=0, atol=1e-4)
        torch.testing.assert_close(vec @ h @ vec.T, torch.diag(dominant[:2]), rtol=0, atol=1e-4)


def test_trace_is_mean_of_probe_quadratic_forms_and_matches_dense_trace():
    models, params, buffers = mlp_population()
    batches = make_batches()
    res = trace(models[0], params, buffers, batches, max_iter=100, tol=1e-3, seed=5)
    long = trace(models[0], params, buffers, batches, max_iter=1000, tol=0.0, seed=5)
    assert (long.iterations == 1000).all() and not long.converged.any()
    for i, model in enumerate(models):
        h = dense_hessian(model, batches)
        # Exactly Hutchinson on our seeded probes, stopped by PyHessian's rule.
        n = int(res.iterations[i])
        z = probes(model, 5, "rademacher", max(n, 1000))
        vhv = torch.einsum("tp,pq,tq->t", z, h, z)
        torch.testing.assert_close(res.value[i], vhv[:n].mean(), rtol=1e-10, atol=0)
        means = vhv.cumsum(0) / torch.arange(1, len(vhv) + 1)
        prev = torch.cat([torch.zeros(1), means[:-1]])
        stops = ((means - prev).abs() / (prev.abs() + 1e-6) < 1e-3).nonzero().flatten()
        expected_n = int(stops[0]) + 1 if len(stops) and stops[0] < 100 else 100
        assert n == expected_n and bool(res.converged[i]) == bool(len(stops) and stops[0] < 100)
        # Statistically: Var(z^T H z) = 2 (||H||_F^2 - sum_i H_ii^2) for Rademacher z.
        sd = torch.sqrt(2 * ((h ** 2).sum() - (h.diagonal() ** 2).sum()) / 1000)
        assert abs(long.value[i] - h.trace()) < 4 * sd


def test_batched_equals_unbatched():
    models, params, buffers = cnn_population(3)
    batches = make_batches((1, 8))
    kw = dict(top_k=2, max_iter=40, tol=1e-4, density=True, density_iter=5)
    for seed in (3, [11, 12, 13]):
        pop = hessian_metrics(models[0], params, buffers, batches, seed=seed, **kw)
        for i in range(3):
            alone = hessian_metrics(models[0], {n: p[i:i + 1] for n, p in params.items()},
                                    {n: b[i:i + 1] for n, b in buffers.items()}, batches,
                                    seed=seed if isinstance(seed, int) else [seed[i]], **kw)
            for key, value in alone.items():
                np.testing.assert_allclose(pop[key][i], value[0], rtol=1e-9, atol=1e-12, err_msg=key)


def test_non_finite_model_gives_nan_for_itself_only():
    models, params, buffers = mlp_population(4)
    batches = make_batches()
    clean = hessian_metrics(models[0], params, buffers, batches, top_k=2, density=True, density_iter=4)
    bad = {n: p.clone() for n, p in params.items()}
    bad["0.weight"][2, 0, 0] = float("nan")
    out = hessian_metrics(models[0], bad, buffers, batches, top_k=2, density=True, density_iter=4)
    for key in ("hessian.top_eig", "hessian.top_eigs", "hessian.trace", "hessian.negative_mass",
                "hessian.ritz_values", "hessian.ritz_max"):
        assert np.isnan(out[key][2]).all(), key
        keep = [0, 1, 3]
        np.testing.assert_allclose(out[key][keep], clean[key][keep], rtol=1e-12, err_msg=key)
    assert not out["hessian.eig_converged"][2].any() and not out["hessian.trace_converged"][2]
    for key in ("hessian.eig_iters", "hessian.eig_converged", "hessian.trace_iters",
                "hessian.trace_converged"):
        np.testing.assert_array_equal(out[key][[0, 1, 3]], clean[key][[0, 1, 3]], err_msg=key)


def test_density_quadrature_matches_dense_moments_and_extremes():
    models, params, buffers = mlp_population()
    batches = make_batches()
    p_dim = sum(p[0].numel() for p in params.values())
    short = density(models[0], params, buffers, batches, n_iter=3, n_v=2, seed=7)
    full = density(models[0], params, buffers, batches, n_iter=p_dim, n_v=1, seed=7)
    for i, model in enumerate(models):
        h = dense_hessian(model, batches)
        ev = torch.linalg.eigvalsh(h)
        # Gauss quadrature with 3 nodes is exact for polynomials of degree <= 5: the moments
        # v^T H^j v of the normalised Rademacher start vector.
        z = probes(model, 7, "rademacher", 1)[0] / p_dim ** 0.5
        theta, w = short["hessian.ritz_values"][i, 0], short["hessian.ritz_weights"][i, 0]
        for j in range(6):
            moment = z @ torch.linalg.matrix_power(h, j) @ z
            torch.testing.assert_close((w * theta ** j).sum(), moment, rtol=1e-8, atol=1e-12)
        # A full Krylov run recovers the extreme eigenvalues.
        torch.testing.assert_close(full["hessian.ritz_min"][i], ev[0], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(full["hessian.ritz_max"][i], ev[-1], rtol=1e-6, atol=1e-9)
        theta, w = full["hessian.ritz_values"][i, 0], full["hessian.ritz_weights"][i, 0]
        u = torch.linalg.eigh(h).eigenvectors
        dense_neg = ((u.T @ z) ** 2)[ev < -1e-8].sum()
        torch.testing.assert_close(full["hessian.negative_mass"][i], dense_neg, rtol=1e-5, atol=1e-8)
        assert abs(w.sum() - 1) < 1e-10


def counting(fn, calls: list):
    def wrapped(v):
        calls.append(1)
        return fn(v)
    return wrapped


def test_matches_pyhessian_on_cnn_with_batchnorm(float64):
    pyhessian = pytest.importorskip("pyhessian")
    models, params, buffers = cnn_population()
    template = build_model("cnn", in_channels=1, out_dim=3, spatial_dims=1, width=3, depth=1)
    template.train()  # ours must switch to eval mode and back, like PyHessian's model.eval()
    batches = make_batches((1, 8), n_batches=3, size=6)
    ours = hessian_metrics(template, params, buffers, batches, top_k=2, seed=4)
    tight = top_eigenvalues(template, params, buffers, batches, k=1, max_iter=500, tol=1e-7, seed=4)
    assert template.training
    for i, model in enumerate(models):
        h = pyhessian.hessian(model, torch.nn.CrossEntropyLoss(), dataloader=batches, cuda=False)
        calls = []
        h.dataloader_hv_product = counting(h.dataloader_hv_product, calls)
        torch.manual_seed(4)
        eigs, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=2)
        # Same probes and stopping rule: same iteration counts; PyHessian returns the iterate before
        # the last one, which differs from ours by less than tol relatively.
        assert len(calls) == ours["hessian.eig_iters"][i].sum()
        np.testing.assert_allclose(ours["hessian.top_eigs"][i], eigs, rtol=1e-3)
        torch.manual_seed(4)
        vhv = h.trace(maxIter=100, tol=1e-3)
        assert len(vhv) == ours["hessian.trace_iters"][i]
        np.testing.assert_allclose(ours["hessian.trace"][i], np.mean(vhv), rtol=1e-10)
        torch.manual_seed(4)
        eig_tight, _ = h.eigenvalues(maxIter=500, tol=1e-7, top_n=1)
        # PyHessian normalises by (|v| + 1e-6), which biases its Rayleigh quotient by ~2e-6 / |Hv|.
        assert tight.converged[i, 0]
        np.testing.assert_allclose(tight.values[i, 0].item(), eig_tight[0], rtol=1e-5)


def test_metrics_are_reproducible_with_documented_keys_and_shapes():
    models, params, buffers = mlp_population(2, torch.float32)
    batches = make_batches(dtype=torch.float32)
    kw = dict(top_k=2, max_iter=20, density=True, density_iter=4)
    a = hessian_metrics(models[0], params, buffers, batches, **kw)
    b = hessian_metrics(models[0], params, buffers, batches, **kw)
    shapes = {"hessian.top_eig": (2,), "hessian.top_eigs": (2, 2), "hessian.eig_iters": (2, 2),
              "hessian.eig_converged": (2, 2), "hessian.trace": (2,), "hessian.trace_iters": (2,),
              "hessian.trace_converged": (2,), "hessian.ritz_values": (2, 1, 4),
              "hessian.ritz_weights": (2, 1, 4),
              "hessian.negative_mass": (2,), "hessian.ritz_min": (2,), "hessian.ritz_max": (2,)}
    assert {k: v.shape for k, v in a.items()} == shapes
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert (a["hessian.eig_iters"] >= 1).all() and (a["hessian.eig_iters"] <= 20).all()
    np.testing.assert_array_equal(a["hessian.top_eig"], a["hessian.top_eigs"][:, 0])
