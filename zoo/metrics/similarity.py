"""Representation similarity of model pairs: linear and RBF CKA (Kornblith et al. 2019).

    CKA(X, Y) = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y))

on a fixed probe batch. Linear CKA uses the feature form ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F
||Y_c^T Y_c||_F) with column-centred features; RBF CKA centres Gram matrices with bandwidth
sigma x the median pairwise distance (sigma = 0.8 as in Kornblith et al.). All pairs of a
population are computed at once in float64: features [K, N, D] for K pairs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from ..kernels import gram_hsic

Tensor = torch.Tensor


def _centre(x: Tensor) -> Tensor:
    x = x.double().flatten(2)
    return x - x.mean(1, keepdim=True)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA of feature pairs x [K, N, D1], y [K, N, D2] -> [K]."""
    x, y = _centre(x), _centre(y)
    cross = torch.linalg.matrix_norm(y.transpose(1, 2) @ x) ** 2
    return cross / (torch.linalg.matrix_norm(x.transpose(1, 2) @ x) * torch.linalg.matrix_norm(y.transpose(1, 2) @ y))


def _rbf_gram(x: Tensor, sigma: float) -> Tensor:
    d2 = torch.cdist(x, x).pow(2)
    n = x.shape[1]
    off = d2[:, ~torch.eye(n, dtype=torch.bool)]
    median = off.sqrt().median(1).values.clamp_min(1e-12)
    gram = torch.exp(-d2 / (2 * (sigma * median).view(-1, 1, 1) ** 2))
    return gram - gram.mean(1, keepdim=True) - gram.mean(2, keepdim=True) + gram.mean((1, 2), keepdim=True)


def rbf_cka(x: Tensor, y: Tensor, sigma: float = 0.8) -> Tensor:
    """RBF-kernel CKA of feature pairs x [K, N, D1], y [K, N, D2] -> [K]."""
    kx, ky = _rbf_gram(_centre(x), sigma), _rbf_gram(_centre(y), sigma)
    hsic = lambda a, b: (a * b).sum((1, 2))  # noqa: E731
    return hsic(kx, ky) / torch.sqrt(hsic(kx, kx) * hsic(ky, ky))


def _last_layer(model: nn.Module) -> nn.Module:
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not layers:
        raise ValueError("model has no Linear/Conv layer whose input could be the penultimate representation")
    return layers[-1]


@torch.no_grad()
def representations(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
                    x: Tensor) -> dict[str, Tensor]:
    """Logits [M, N, C] and penultimate features [M, N, D] (input of the last layer) on shared x."""
    last = _last_layer(model)

    def one(p, b):
        seen = []
        handle = last.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        try:
            out = functional_call(model, (p, b), (x,))
        finally:
            handle.remove()
        return out, seen[-1]

    was = model.training
    model.eval()
    try:
        logits, penultimate = vmap(one)(params, buffers)
    finally:
        model.train(was)
    return {"logits": logits.flatten(2), "penultimate": penultimate.flatten(2)}


def pair_cka(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], pairs: Tensor,
             x: Tensor, kind: str = "linear") -> dict[str, np.ndarray]:
    """CKA of every pair [K, 2] on logits and penultimate features: {"cka.logits": [K], ...}."""
    if kind not in ("linear", "rbf"):
        raise ValueError(f"kind must be linear or rbf, got {kind!r}")
    reps = representations(model, params, buffers, x)
    if kind == "linear":  # the kernels dispatcher: Triton on CUDA, the same formula in torch elsewhere
        return {f"cka.{name}": gram_hsic(r.double(), pairs)["cka"].cpu().numpy() for name, r in reps.items()}
    a, b = pairs[:, 0], pairs[:, 1]
    return {f"cka.{name}": rbf_cka(r[a], r[b]).numpy() for name, r in reps.items()}


__all__ = ["linear_cka", "pair_cka", "rbf_cka", "representations"]
