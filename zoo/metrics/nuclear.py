"""Matrix Nuclear-Norm of a model's predictions (Li et al. 2024, "Large Language Model Evaluation via
Matrix Nuclear-Norm", arXiv 2410.10672; seed: *The ramifications of making deep networks compact*).

A = softmax(f(theta, X)) [B, C] is the output-probability matrix on a probe batch X of B test
samples (rows sum to 1). Its nuclear norm ||A||_* = sum_i sigma_i rewards both confident
predictions (discriminability, ||A||_F) and predictions spread over many classes (diversity, rank).
Instead of an SVD, the paper approximates it by the D largest column L2 norms (Theorem 3, eq. 10),

    ||A||_* ~ sum_{j=1..D} sort_desc(||A_{:,j}||_2)_j,   D = min(B, C),

O(B C), exact when the columns are orthogonal (every class predicted one-hot on its own samples),
and normalised, as the paper's eq. 11, by the number of rows B:

    nuclear.norm  = that sum / B        in (0, sqrt(D / B)]  (the top: one-hot rows spread evenly)
    nuclear.exact = ||A||_* / B         (torch.linalg.svdvals; cheap at a classifier's C)
    nuclear.fro   = ||A||_F / sqrt(B)   in [1/sqrt(C), 1]    (the paper's discriminability, eq. 3)

With C <= B all columns are summed, and ||A||_* <= sum_j ||A_{:,j}||_2 <= sqrt(C) ||A||_F <= sqrt(C)
||A||_*, so 1 <= norm / exact <= sqrt(C): the approximation ratio, near 1 for confident models
that predict distinct classes, 1 / ||p||_2 for a model that predicts the same p on every row
(sqrt(C) when p is uniform).
Outputs with more than one row per sample (a sequence model's positions) contribute every row.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..functional import make_forward, mode
from .base import Measured, Metric, Option, Population

Tensor = torch.Tensor

ROWS = 1 << 15  # (model, sample) rows per forward pass


def nuclear_approx(a: Tensor) -> Tensor:
    """sum of the min(B, C) largest column L2 norms of a [..., B, C] -> [...] (not normalised)."""
    b, c = a.shape[-2:]
    return a.norm(dim=-2).topk(min(b, c), dim=-1).values.sum(-1)


def nuclear_exact(a: Tensor) -> Tensor:
    """||a||_* = sum of singular values of a [..., B, C] -> [...] (an SVD per matrix)."""
    return torch.linalg.svdvals(a).sum(-1)


@torch.no_grad()
def probabilities(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
    """Softmax outputs [M, R, C] (float64) of M stacked models on shared x [B, ...], in eval mode;
    R = B, or B x positions for outputs [B, ..., C]."""
    forward = make_forward(model)
    m = next(iter(params.values())).shape[0]
    step = max(1, ROWS // m)
    with mode(model, train=False):
        logits = torch.cat([forward(params, buffers, x[s:s + step].expand(m, *x[s:s + step].shape))
                            for s in range(0, x.shape[0], step)], 1)
    return torch.softmax(logits.double().reshape(m, -1, logits.shape[-1]), dim=-1)


def compute(pop: Population, spec) -> Measured:
    if len(pop.healthy) == 0:
        return Measured(per_model={c: np.full(pop.m, np.nan) for c in METRIC.columns})
    params, buffers = pop.final
    x = torch.as_tensor(pop.data.x_test[:spec.nuclear_norm_probe])
    if x.is_floating_point():
        x = x.to(next(iter(params.values())).dtype)
    a = probabilities(pop.model, params, buffers, x)
    rows = a.shape[1]
    values = {"nuclear.norm": nuclear_approx(a) / rows, "nuclear.exact": nuclear_exact(a) / rows,
              "nuclear.fro": torch.linalg.matrix_norm(a) / math.sqrt(rows)}
    return Measured(per_model={c: pop.spread(v.numpy()) for c, v in values.items()})


METRIC = Metric(
    name="nuclear_norm",
    protocol="512-sample test probe; the paper's SVD-free estimate (top min(B, C) column norms) / B, the exact "
             "SVD value beside it",
    about="Matrix Nuclear-Norm of the softmax outputs on a test probe (Li et al. 2024), SVD-free",
    applies_to="model",
    columns={
        "nuclear.norm": "sum of the min(B, C) largest column L2 norms of the probe's softmax matrix [B, C], / B",
        "nuclear.exact": "exact nuclear norm (sum of singular values) of the same matrix, / B",
        "nuclear.fro": "Frobenius norm of the same matrix / sqrt(B), in [1/sqrt(C), 1] (confidence)",
    },
    compute=compute,
    switch="nuclear_norm",
    options={
        "nuclear_norm": Option(False, "Matrix Nuclear-Norm of the softmax outputs on a test probe (nuclear.*)"),
        "nuclear_norm_probe": Option(512, "test samples in the nuclear-norm probe batch", range="[1, 1e6]"),
    },
    kinds=("classification",),
)
