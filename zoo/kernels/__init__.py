"""Optional fused kernels behind one dispatcher: Triton on CUDA tensors, plain torch elsewhere.

Each kernel lives in its own module beside its plain-torch reference (``*_torch``) and its Triton
version (``*_triton``); the rest of zoo calls only the functions below, which pick a backend per call:

- ``ZOO_KERNELS`` unset or ``auto``: Triton when triton imports and every tensor argument is on CUDA,
  torch otherwise (always torch on a CPU-only machine).
- ``ZOO_KERNELS=torch``: always the torch reference.
- ``ZOO_KERNELS=triton``: always Triton; on CPU tensors this is valid only with ``TRITON_INTERPRET=1``
  (Triton's CPU interpreter; how the tests exercise the kernels), an error otherwise.

Importing this package needs neither a GPU nor triton. Both backends give the same numbers within
the tolerances stated in tests/test_kernels.py (fp32: ~1e-5 relative; bf16: bf16 rounding).
"""

from __future__ import annotations

import os

import torch

from ._triton import HAS_TRITON, interpreting
from .grouped import (
    PopulationCrossEntropy,
    PopulationLinear,
    population_cross_entropy_torch,
    population_linear_torch,
)
from .hsic import gram_hsic_torch, gram_hsic_triton
from .interp import InterpLinear, bezier_coeffs, interp_linear_torch, linear_coeffs
from .tailfit import powerlaw_scan_torch, powerlaw_scan_triton

__all__ = [
    "HAS_TRITON", "backend", "bezier_coeffs", "gram_hsic", "interp_linear", "linear_coeffs",
    "population_cross_entropy", "population_linear", "powerlaw_scan",
]


def backend(*tensors: torch.Tensor | None) -> str:
    """'triton' or 'torch' for a call on these tensors (None entries are ignored); see the module
    docstring for the rules and the ``ZOO_KERNELS`` override."""
    choice = os.environ.get("ZOO_KERNELS", "auto").strip().lower() or "auto"
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    on_cuda = bool(ts) and all(t.is_cuda for t in ts)
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return "triton" if HAS_TRITON and on_cuda else "torch"
    if choice != "triton":
        raise ValueError(f"ZOO_KERNELS must be auto, torch or triton, got {choice!r}")
    if not HAS_TRITON:
        raise RuntimeError("ZOO_KERNELS=triton but triton is not importable; install triton or unset it")
    if not on_cuda and not interpreting():
        raise RuntimeError("ZOO_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's CPU "
                           "interpreter); unset ZOO_KERNELS to use torch on CPU")
    return "triton"


def interp_linear(x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor | None,
                  coeffs: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """act(x[p,t] @ W_p(t)^T + b_p(t)) with W_p(t) = sum_k coeffs[.., k] weights[k, p].

    x [P, T, N, in] (an ``expand``-ed view is fine: strides are honoured); weights [K, P, out, in];
    biases [K, P, out] or None; coeffs [T, K] or [P, T, K] (``linear_coeffs`` / ``bezier_coeffs``);
    activation 'none' | 'relu'. Returns [P, T, N, out]; differentiable in every tensor input.
    """
    if weights.shape[0] in (2, 3) and backend(x, weights, biases, coeffs) == "triton":
        return InterpLinear.apply(x, weights, biases, coeffs, activation)
    return interp_linear_torch(x, weights, biases, coeffs, activation)


def population_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str = "none") -> torch.Tensor:
    """act(x[m] @ W[m]^T + b[m]) for M stacked layers in one launch.

    x [M, B, in] or [B, in] (shared by all models); weight [M, out, in]; bias [M, out] or None;
    activation 'none' | 'relu'. Returns [M, B, out]; differentiable.
    """
    if backend(x, weight, bias) == "triton":
        if torch.is_autocast_enabled(x.device.type):  # autograd.Functions are not autocast
            dt = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dt), weight.to(dt)
            bias = None if bias is None else bias.to(dt)
        return PopulationLinear.apply(x, weight, bias, activation)
    return population_linear_torch(x, weight, bias, activation)


def population_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-model mean softmax cross-entropy: logits [M, B, C], labels [M, B] (int) -> [M];
    differentiable in logits."""
    if backend(logits, labels) == "triton":
        return PopulationCrossEntropy.apply(logits, labels)
    return population_cross_entropy_torch(logits, labels)


def powerlaw_scan(evals: torch.Tensor, lengths: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Power-law tail fit (alpha, KS distance D) at every candidate xmin of every row, WeightWatcher
    convention; see ``zoo.kernels.tailfit`` for the formulas. evals [R, n]; lengths [R] and/or
    mask [R, n] select the valid entries. Returns dict: sorted, alpha, D [R, n]; best, xmin,
    alpha_best, D_best [R]."""
    if backend(evals) == "triton":
        return powerlaw_scan_triton(evals, lengths, mask)
    return powerlaw_scan_torch(evals, lengths, mask)


def gram_hsic(features: torch.Tensor, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Linear CKA for model pairs: features [M, n, d], pairs [Q, 2] -> dict cka [Q], hsic [Q],
    hsic_self [M] (HSIC with 1/(n-1)^2); see ``zoo.kernels.hsic``."""
    if backend(features) == "triton":
        return gram_hsic_triton(features, pairs)
    return gram_hsic_torch(features, pairs)
