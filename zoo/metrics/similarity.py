"""Representation similarity of model pairs: linear and RBF CKA (Kornblith et al. 2019).

    CKA(X, Y) = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)),   HSIC(K, L) = tr(K H L H) (biased)

on a fixed probe batch (n samples; rows of X, Y). Linear CKA uses the feature form
||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with column-centred features (the n x n Gram
form when the features are wider than n); for a population, ``pair_cka`` goes through
``zoo.kernels.gram_hsic`` (Triton on CUDA). RBF CKA uses K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2 m))
with m the median squared distance over all n x n entries (diagonal included) and sigma = 0.8, as
in Kornblith et al.'s reference code. Both are invariant to orthogonal transforms and isotropic
scaling of the features, and CKA(X, X) = 1.

Constant representations (a model collapsed to chance has the same logits for every input, or a
layer of dead ReLUs) make the formula 0/0. The rule: a representation that does not vary over the
probe shares no structure with anything, so CKA with it is 0; two constant representations are the
same up to the translation CKA ignores (both centre to zero), so their CKA is 1, as CKA(X, X) is.
"Constant" means a centred norm at most ``CONSTANT_RTOL`` times the raw norm: below that the
variation is float32 rounding of the forward pass, not signal, and the raw quotient is noise.

Representations: the logits, and the penultimate features = the input of the last parametrized
layer the forward pass runs (the classifier head), captured by a pre-hook inside the vmapped
function, so nothing leaks out of vmap.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from ..functional import mode
from ..kernels import gram_hsic
from .base import Measured, Metric, Population, pair_rows

Tensor = torch.Tensor

GRAM_ELEMENTS = 1 << 25  # n x n Gram entries held at once by the RBF route (256 MB in float64)
CONSTANT_RTOL = 1e-5  # ~100 float32 ulps: a representation varying less than this is constant


def _centre(x: Tensor) -> Tensor:
    x = x.double().flatten(2)
    return x - x.mean(1, keepdim=True)


def _centre_gram(gram: Tensor) -> Tensor:
    """H K H for symmetric stacked Grams [K, n, n]."""
    return gram - gram.mean(1, keepdim=True) - gram.mean(2, keepdim=True) + gram.mean((1, 2), keepdim=True)


def constant(x: Tensor) -> Tensor:
    """[K] bool: whether each representation x [K, N, ...] is constant over its N samples."""
    x = x.double().flatten(2)
    spread = (x - x.mean(1, keepdim=True)).flatten(1).norm(dim=1)
    return spread <= CONSTANT_RTOL * x.flatten(1).norm(dim=1)


def constant_rule(cka: Tensor, const_x: Tensor, const_y: Tensor) -> Tensor:
    """CKA [K] with the rule for constant representations (module docstring): 1 if both are, 0 if one is."""
    const_x, const_y = const_x.to(cka.device), const_y.to(cka.device)
    return torch.where(const_x | const_y, (const_x & const_y).to(cka.dtype), cka)


def _cka_from_grams(kx: Tensor, ky: Tensor) -> Tensor:
    hsic = lambda a, b: (a * b).sum((1, 2))  # noqa: E731
    return hsic(kx, ky) / torch.sqrt(hsic(kx, kx) * hsic(ky, ky))


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA of feature pairs x [K, N, D1], y [K, N, D2] -> [K] (float64; constant features:
    module docstring)."""
    const_x, const_y = constant(x), constant(y)
    x, y = _centre(x), _centre(y)
    if max(x.shape[2], y.shape[2]) > x.shape[1]:  # wide features: the n x n Grams are smaller
        cka = _cka_from_grams(x @ x.transpose(1, 2), y @ y.transpose(1, 2))
    else:
        norm = torch.linalg.matrix_norm
        cka = norm(y.transpose(1, 2) @ x) ** 2 / (norm(x.transpose(1, 2) @ x) * norm(y.transpose(1, 2) @ y))
    return constant_rule(cka, const_x, const_y)


def _median(v: Tensor) -> Tensor:
    """Row medians of [K, L] as numpy defines them (the mean of the two middle values for even L)."""
    n = v.shape[1]
    lo = v.kthvalue((n + 1) // 2, dim=1).values
    hi = v.kthvalue(n // 2 + 1, dim=1).values
    return (lo + hi) / 2


def _rbf_gram(x: Tensor, sigma: float) -> Tensor:
    """Centred RBF Grams [K, n, n] of centred features [K, n, D]."""
    sq = x.square().sum(2)
    d2 = (sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * x @ x.transpose(1, 2)).clamp_min(0.0)
    median = _median(d2.flatten(1)).clamp_min(torch.finfo(d2.dtype).tiny)
    return _centre_gram(torch.exp(-d2 / (2 * sigma ** 2 * median.view(-1, 1, 1))))


def rbf_cka(x: Tensor, y: Tensor, sigma: float = 0.8) -> Tensor:
    """RBF-kernel CKA of feature pairs x [K, N, D1], y [K, N, D2] -> [K] (float64).

    Bandwidth: sigma x the median distance (module docstring). Pairs are processed in chunks so
    that at most ``GRAM_ELEMENTS`` Gram entries are alive. Constant features: module docstring.
    """
    k, n = x.shape[:2]
    step = max(1, GRAM_ELEMENTS // max(2 * n * n, 1))
    out = [_cka_from_grams(_rbf_gram(_centre(x[s:s + step]), sigma), _rbf_gram(_centre(y[s:s + step]), sigma))
           for s in range(0, k, step)]
    return constant_rule(torch.cat(out), constant(x), constant(y)) if out else x.new_zeros(0, dtype=torch.float64)


def _last_layer(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> nn.Module:
    """The last module with a matrix/kernel parameter that model 0's forward pass runs (its head)."""
    layers = [m for m in model.modules() if any(p.dim() >= 2 for p in m.parameters(recurse=False))]
    if not layers:
        raise ValueError("model has no layer with a weight matrix whose input could be the penultimate features")
    order: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: order.append(mod)) for m in layers]
    try:
        first = ({k: v[0] for k, v in params.items()}, {k: v[0].clone() for k, v in buffers.items()})
        with torch.no_grad():
            functional_call(model, first, (x[:2],))
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else layers[-1]


@torch.no_grad()
def representations(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
                    x: Tensor) -> dict[str, Tensor]:
    """Logits [M, N, C] and penultimate features [M, N, D] (input of the head) of M stacked models
    on shared x [N, ...], in eval mode (BatchNorm uses each model's running statistics)."""
    def one(p, b):
        seen = []
        handle = last.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        try:
            out = functional_call(model, (p, b), (x,))
        finally:
            handle.remove()
        return out, seen[-1]

    with mode(model):
        last = _last_layer(model, params, buffers, x)
        logits, penultimate = vmap(one)(params, {k: v.clone() for k, v in buffers.items()})
    return {"logits": logits.flatten(2), "penultimate": penultimate.flatten(2)}


def pair_cka(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], pairs: Tensor,
             x: Tensor, kind: str = "linear", sigma: float = 0.8) -> dict[str, np.ndarray]:
    """CKA of every pair [K, 2] on logits and penultimate features: {"cka.logits": [K],
    "cka.penultimate": [K]} (numpy float64); ``kind`` linear or rbf (bandwidth ``sigma``); a
    constant representation follows the rule of the module docstring."""
    if kind not in ("linear", "rbf"):
        raise ValueError(f"kind must be linear or rbf, got {kind!r}")
    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    reps = representations(model, params, buffers, x)
    out = {}
    for name, r in reps.items():
        a, b = pairs[:, 0].to(r.device), pairs[:, 1].to(r.device)
        if kind == "rbf":
            out[f"cka.{name}"] = rbf_cka(r[a], r[b], sigma).cpu().numpy()
            continue
        flat = constant(r)  # the kernels dispatcher: Triton on CUDA, the same formula in torch elsewhere
        cka = gram_hsic(r.double(), pairs.to(r.device))["cka"].double()
        out[f"cka.{name}"] = constant_rule(cka, flat[a], flat[b]).cpu().numpy()
    return out


def measure(pop: Population, spec) -> Measured:
    """Linear CKA of every pair's logits and penultimate features on the test probe batch."""
    pairs = pop.pairs(spec.pairs == "population")
    cols = pair_cka(pop.model, *pop.final, pairs, pop.probe(spec.probe_size))
    return Measured(tables={"pairs": pair_rows(cols, len(pairs))})


METRIC = Metric(
    name="cka",
    protocol="512-sample test probe; a constant representation has CKA 0 (two constant ones: 1)",
    group="landscape", applies_to="pair", compute=measure, kinds=("classification",), needs_pairs=True,
    about="representation similarity of same-cell pairs: linear CKA of logits and penultimate features",
    pair_summaries={"similarity.cka": "cka.logits"},
    columns={"similarity.cka": "mean linear CKA of logits on the probe batch over its same-cell pairs "
                               "(a constant representation: the rule of zoo/metrics/similarity.py)"})

__all__ = ["METRIC", "constant", "constant_rule", "linear_cka", "measure", "pair_cka", "rbf_cka", "representations"]
