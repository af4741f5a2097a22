"""Triton kernels vs their torch references, run on CPU in Triton's interpreter.

Kernels are decorated lazily on launch (zoo.kernels._triton.jit), so setting TRITON_INTERPRET per
test with monkeypatch is enough; nothing leaks into other test modules. Shapes are tiny and odd
(not multiples of the 16-wide interpreter tiles) so masking on every edge is exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo.kernels as zk
from zoo.kernels import grouped, hsic, interp, tailfit

needs_triton = pytest.mark.skipif(not zk.HAS_TRITON, reason="triton is not importable")


KERNELS = ("interp_linear", "population_linear", "population_cross_entropy", "powerlaw_scan", "gram_hsic")
DEVICE = os.environ.get("ZOO_KERNEL_TEST_DEVICE", "cpu")  # benchmarks/gpu.sh sets cuda


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)  # differentiable: gradients flow back to the CPU leaves
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def _on_device(kernel, device):
    def call(*args, **kwargs):
        return _to(kernel(*_to(args, device), **_to(kwargs, device)), "cpu")
    return call


@pytest.fixture
def triton_cpu(monkeypatch):
    """Force the Triton backend: on CPU tensors through the interpreter (the default), or compiled on
    the GPU with ZOO_KERNEL_TEST_DEVICE=cuda, where every kernel's inputs move to the GPU and its
    outputs come back, so each test still compares against its CPU reference."""
    monkeypatch.setenv("ZOO_KERNELS", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        return
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for name in KERNELS:
        monkeypatch.setattr(zk, name, _on_device(getattr(zk, name), DEVICE))


def _close(a, b, rtol, atol):
    torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- dispatcher


def test_dispatcher_uses_torch_on_cpu_by_default(monkeypatch):
    monkeypatch.delenv("ZOO_KERNELS", raising=False)
    x = torch.randn(2, 3, 4)
    assert zk.backend(x) == "torch"
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return grouped.population_linear_torch(*args, **kwargs)

    monkeypatch.setattr(zk, "population_linear_torch", spy)
    monkeypatch.setattr(zk.PopulationLinear, "apply", lambda *a: pytest.fail("Triton path taken on CPU"))
    zk.population_linear(x, torch.randn(2, 5, 4), torch.randn(2, 5), "relu")
    assert len(calls) == 1


def test_zoo_kernels_env_overrides_the_choice(monkeypatch):
    x = torch.randn(2, 3)
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    assert zk.backend(x) == "torch"
    monkeypatch.setenv("ZOO_KERNELS", "bogus")
    with pytest.raises(ValueError, match="ZOO_KERNELS"):
        zk.backend(x)
    monkeypatch.setenv("ZOO_KERNELS", "triton")
    if not zk.HAS_TRITON:
        with pytest.raises(RuntimeError, match="not importable"):
            zk.backend(x)
        return
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        zk.backend(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert zk.backend(x) == "triton"


def test_import_and_torch_path_work_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, zoo.kernels as zk\n"
        "assert not zk.HAS_TRITON\n"
        "y = zk.population_linear(torch.ones(2, 3, 4), torch.ones(2, 5, 4))\n"
        "assert y.shape == (2, 3, 5) and float(y[0, 0, 0]) == 4.0\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ZOO_KERNELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------- interp_linear


def _interp_inputs(k, dtype=torch.float32, p=2, t=3, n=37, fan_in=23, out=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p, t, n, fan_in, generator=g).to(dtype)
    w = (torch.randn(k, p, out, fan_in, generator=g) / fan_in**0.5).to(dtype)
    b = torch.randn(k, p, out, generator=g).to(dtype)
    ts = torch.rand(t, generator=g)
    c = zk.linear_coeffs(ts) if k == 2 else zk.bezier_coeffs(ts)
    return x, w, b, c


def test_path_coefficients_reproduce_the_curve_endpoints():
    ts = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(zk.linear_coeffs(ts), torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]))
    torch.testing.assert_close(zk.bezier_coeffs(ts),
                               torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.5, 0.25], [0.0, 0.0, 1.0]]))


def test_interp_reference_equals_per_point_linear_layers():
    x, w, b, c = _interp_inputs(3, p=2, t=2, n=5, fan_in=4, out=3)
    y = interp.interp_linear_torch(x, w, b, c, "relu")
    for p in range(2):
        for t in range(2):
            wt = sum(c[t, k] * w[k, p] for k in range(3))
            bt = sum(c[t, k] * b[k, p] for k in range(3))
            torch.testing.assert_close(y[p, t], torch.relu(F.linear(x[p, t], wt, bt)))


@needs_triton
@pytest.mark.parametrize("k,activation,bias", [(2, "none", True), (3, "relu", True), (2, "relu", False)])
def test_interp_linear_triton_matches_reference_fp32(triton_cpu, k, activation, bias):
    x, w, b, c = _interp_inputs(k)
    b = b if bias else None
    y = zk.interp_linear(x, w, b, c, activation)
    _close(y, interp.interp_linear_torch(x, w, b, c, activation), 1e-5, 1e-5)


@needs_triton
def test_interp_linear_triton_per_pair_coeffs_and_shared_input(triton_cpu):
    x, w, b, _ = _interp_inputs(3)
    c = torch.rand(2, 3, 3)  # different points per pair
    xs = x[:1, :1].expand(2, 3, -1, -1)  # one probe batch for every pair and point: stride-0 view
    y = zk.interp_linear(xs, w, b, c, "relu")
    _close(y, interp.interp_linear_torch(xs.contiguous(), w, b, c, "relu"), 1e-5, 1e-5)


@needs_triton
def test_interp_linear_triton_bf16(triton_cpu):
    x, w, b, c = _interp_inputs(3, dtype=torch.bfloat16)
    y = zk.interp_linear(x, w, b, c, "relu")
    assert y.dtype == torch.bfloat16
    ref = interp.interp_linear_torch(x.float(), w.float(), b.float(), c, "relu")
    _close(y, ref, 2e-2, 2e-2)  # output rounding to bf16 (8 bits of mantissa)


@needs_triton
@pytest.mark.parametrize("k", [2, 3])
def test_interp_linear_gradients_match_reference(triton_cpu, k):
    x, w, b, c = _interp_inputs(k, n=21, fan_in=17, out=18)
    c = c.unsqueeze(0).expand(2, -1, -1).clone()  # per-pair coefficients, [P, T, K]
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b, c)]
    y = zk.interp_linear(*leaves, "relu")
    assert y.grad_fn is not None and "InterpLinear" in type(y.grad_fn).__name__
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, g)
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, w, b, c)]
    want = torch.autograd.grad(interp.interp_linear_torch(*ref_leaves, "relu"), ref_leaves, g)
    for name, a, e in zip(["x", "weights", "biases", "coeffs"], got, want):
        assert a.shape == e.shape, name
        _close(a, e, 1e-4, 1e-4)


@needs_triton
def test_interp_linear_gradient_for_shared_coeffs_sums_over_pairs(triton_cpu):
    x, w, b, c = _interp_inputs(2, n=17, fan_in=16, out=16)
    c1 = c.clone().requires_grad_(True)
    c2 = c.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(zk.interp_linear(x, w, b, c1).sum(), c1)
    (gb,) = torch.autograd.grad(interp.interp_linear_torch(x, w, b, c2).sum(), c2)
    assert ga.shape == c.shape
    _close(ga, gb, 1e-4, 1e-4)


# ---------------------------------------------------------------- population_linear


def _linear_inputs(dtype=torch.float32, m=3, b=37, fan_in=23, out=19, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, b, fan_in, generator=g).to(dtype),
            (torch.randn(m, out, fan_in, generator=g) / fan_in**0.5).to(dtype),
            torch.randn(m, out, generator=g).to(dtype))


def test_population_linear_reference_equals_per_model_linear():
    x, w, b = _linear_inputs(m=3, b=4, fan_in=5, out=2)
    y = grouped.population_linear_torch(x, w, b, "relu")
    for i in range(3):
        torch.testing.assert_close(y[i], torch.relu(F.linear(x[i], w[i], b[i])))


@needs_triton
@pytest.mark.parametrize("activation,bias", [("relu", True), ("none", False)])
def test_population_linear_triton_forward_and_grads_fp32(triton_cpu, activation, bias):
    x, w, b = _linear_inputs()
    b = b if bias else None
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b) if t is not None]
    y = zk.population_linear(*leaves, activation) if bias else zk.population_linear(*leaves, None, activation)
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, w, b) if t is not None]
    r = grouped.population_linear_torch(*ref_leaves, activation) if bias else \
        grouped.population_linear_torch(*ref_leaves, None, activation)
    _close(y, r, 1e-5, 1e-5)
    g = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(r, ref_leaves, g)):
        _close(a, e, 1e-5, 1e-5)


@needs_triton
def test_population_linear_triton_bf16_and_shared_input(triton_cpu):
    x, w, b = _linear_inputs(torch.bfloat16)
    y = zk.population_linear(x, w, b, "relu")
    assert y.dtype == torch.bfloat16
    _close(y, grouped.population_linear_torch(x.float(), w.float(), b.float(), "relu"), 2e-2, 2e-2)
    xs = torch.randn(37, 23, requires_grad=True)  # one batch shared by all models
    ys = zk.population_linear(xs, w.float(), b.float(), "relu")
    (gx,) = torch.autograd.grad(ys.sum(), xs)
    xr = xs.detach().clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(grouped.population_linear_torch(xr, w.float(), b.float(), "relu").sum(), xr)
    assert gx.shape == xs.shape
    _close(gx, gr, 1e-5, 1e-5)


@needs_triton
@pytest.mark.parametrize("c,scale", [(21, 1.0), (1100, 30.0)])  # 1100 > 1024: two class blocks
def test_population_cross_entropy_triton_matches_reference(triton_cpu, c, scale):
    g = torch.Generator().manual_seed(2)
    m, b = 3, 19
    z = (torch.randn(m, b, c, generator=g) * scale).requires_grad_(True)
    y = torch.randint(0, c, (m, b), generator=g)
    loss = zk.population_cross_entropy(z, y)
    zr = z.detach().clone().requires_grad_(True)
    ref = torch.stack([F.cross_entropy(zr[i], y[i]) for i in range(m)])  # per-model, unbatched
    _close(loss, ref, 1e-5, 1e-5)
    w = torch.randn(m, generator=g)
    (gz,) = torch.autograd.grad((loss * w).sum(), z)
    (gr,) = torch.autograd.grad((ref * w).sum(), zr)
    _close(gz, gr, 1e-5, 1e-6)


def test_population_cross_entropy_keeps_float64_and_lifts_bf16_to_float32():
    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(2, 5, 7, generator=g, dtype=torch.float64), torch.randint(0, 7, (2, 5), generator=g)
    exact = torch.stack([F.cross_entropy(z[i], y[i]) for i in range(2)])
    assert zk.population_cross_entropy(z, y).dtype == torch.float64
    torch.testing.assert_close(zk.population_cross_entropy(z, y), exact, rtol=1e-14, atol=0)
    low = zk.population_cross_entropy(z.bfloat16(), y)
    assert low.dtype == torch.float32
    _close(low, exact, 2e-2, 2e-2)


@needs_triton
def test_population_cross_entropy_triton_bf16_returns_float32(triton_cpu):
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(2, 9, 13, generator=g).bfloat16(), torch.randint(0, 13, (2, 9), generator=g)
    got = zk.population_cross_entropy(z, y)
    assert got.dtype == torch.float32
    _close(got, grouped.population_cross_entropy_torch(z, y), 1e-5, 1e-5)


# ---------------------------------------------------------------- powerlaw_scan


def _spectra(seed=0):
    rng = np.random.default_rng(seed)
    rows = [np.sort(rng.pareto(2.5, 50) + 1) * 0.3, np.sort(rng.lognormal(0, 1, 37)),
            np.sort(rng.pareto(1.5, 23) + 1)]
    n = 53
    ev = torch.zeros(len(rows), n, dtype=torch.float64)
    for i, r in enumerate(rows):  # shuffled, padded with junk beyond the length
        ev[i, : len(r)] = torch.from_numpy(rng.permutation(r))
        ev[i, len(r):] = 7.0
    return rows, ev, torch.tensor([len(r) for r in rows])


def test_powerlaw_scan_reference_matches_weightwatcher_wwfit():
    from weightwatcher.WW_powerlaw import WWFit

    rows, ev, lengths = _spectra()
    out = tailfit.powerlaw_scan_torch(ev, lengths)
    for i, r in enumerate(rows):  # every row has >= 20 values: WWFit's standard estimator
        fit = WWFit(r)
        k = len(r) - 1
        np.testing.assert_allclose(out["alpha"][i, :k].numpy(), fit.alphas, rtol=1e-10)
        np.testing.assert_allclose(out["D"][i, :k].numpy(), fit.Ds, rtol=1e-10, atol=1e-12)
        assert out["best"][i].item() == int(np.argmin(fit.Ds))
        assert out["xmin"][i].item() == pytest.approx(fit.xmin, rel=1e-12)
        assert out["alpha_best"][i].item() == pytest.approx(fit.alpha, rel=1e-10)
        assert torch.isinf(out["D"][i, k:]).all() and torch.isnan(out["alpha"][i, k:]).all()


def test_powerlaw_scan_reference_matches_powerlaw_fit_when_alpha_in_its_range():
    import powerlaw

    rows, ev, lengths = _spectra()
    out = tailfit.powerlaw_scan_torch(ev, lengths)
    for i in (1, 2):  # best alpha < 3, inside powerlaw's default alpha range [0, 3]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = powerlaw.Fit(rows[i], verbose=False)
        assert out["xmin"][i].item() == pytest.approx(fit.xmin, rel=1e-12)
        assert out["alpha_best"][i].item() == pytest.approx(fit.alpha, rel=1e-9)
        assert out["D_best"][i].item() == pytest.approx(fit.D, rel=1e-9)


def test_powerlaw_scan_mask_and_lengths_select_the_same_entries():
    rows, ev, lengths = _spectra()
    mask = torch.arange(ev.shape[1])[None, :] < lengths[:, None]
    a = tailfit.powerlaw_scan_torch(ev, lengths)
    b = tailfit.powerlaw_scan_torch(ev, mask=mask)
    c = tailfit.powerlaw_scan_torch(ev, lengths, tile=100)  # tiny blocks change nothing
    for key in ("alpha", "D", "best"):
        torch.testing.assert_close(a[key], b[key], equal_nan=True)
        torch.testing.assert_close(a[key], c[key], equal_nan=True)


@needs_triton
def test_powerlaw_scan_triton_matches_reference(triton_cpu):
    rows, ev, lengths = _spectra()
    extra = torch.zeros(3, ev.shape[1], dtype=torch.float64)
    extra[0, :30] = torch.linspace(1, 4, 30) ** 2
    extra[0, 10:14] = extra[0, 10]  # ties
    extra[1, :5] = 2.0  # degenerate: all equal -> alpha = inf, D = 1
    extra[2, :1] = 3.0  # one value: no candidate
    ev = torch.cat([ev, extra]).float()
    lengths = torch.cat([lengths, torch.tensor([30, 5, 1])])
    got = zk.powerlaw_scan(ev, lengths)
    want = tailfit.powerlaw_scan_torch(ev, lengths)
    torch.testing.assert_close(got["alpha"], want["alpha"], equal_nan=True)
    torch.testing.assert_close(got["D"], want["D"], rtol=1e-5, atol=2e-6)
    assert torch.equal(got["best"], want["best"])
    assert got["best"][-1].item() == -1 and torch.isnan(got["alpha_best"][-1])
    assert torch.isinf(got["alpha"][-2, :4]).all() and (got["D"][-2, :4] == 1).all()


# ---------------------------------------------------------------- gram_hsic


def _features(m=4, n=37, d=19, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, d, generator=g)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    x[1] = 3.0 * x[0] @ q + 1.0  # rotated, scaled, shifted copy of model 0: CKA = 1
    x[2] = x[0] + 0.5 * x[2]
    return x, torch.tensor([[0, 1], [0, 2], [2, 3], [3, 1], [3, 3]])


def _hsic_textbook(x, y):
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, lm = x.double() @ x.double().T, y.double() @ y.double().T
    return torch.trace(k @ h @ lm @ h) / (n - 1) ** 2


@pytest.mark.parametrize("d", [19, 45])  # d < n: feature route; d > n: Gram route
def test_gram_hsic_reference_matches_centred_gram_definition(d):
    x, pairs = _features(d=d)
    out = hsic.gram_hsic_torch(x, pairs)
    for q, (i, j) in enumerate(pairs.tolist()):
        want = _hsic_textbook(x[i], x[j])
        cka = want / torch.sqrt(_hsic_textbook(x[i], x[i]) * _hsic_textbook(x[j], x[j]))
        assert out["hsic"][q].item() == pytest.approx(want.item(), rel=1e-4)
        assert out["cka"][q].item() == pytest.approx(cka.item(), rel=1e-4)
    assert out["cka"][0].item() == pytest.approx(1.0, abs=1e-5)


@needs_triton
@pytest.mark.parametrize("d", [19, 45])
def test_gram_hsic_triton_matches_reference(triton_cpu, d):
    x, pairs = _features(d=d)
    got = zk.gram_hsic(x, pairs)
    want = hsic.gram_hsic_torch(x, pairs)
    for key in ("cka", "hsic", "hsic_self"):
        _close(got[key], want[key], 1e-5, 1e-5)
