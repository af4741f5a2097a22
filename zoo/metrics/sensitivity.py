"""Input sensitivity of the loss (seed: *Sensitivity analysis on loss landscape*, arXiv 2403.01128).

For a model theta and a probe of N training samples (x_n, y_n), each input flattened to F features,
the per-sample loss l_n(x) = loss(f(theta, x), y_n) (cross-entropy for classification, the mean
squared error over outputs for regression, as the task's objective) is differentiated along each
feature's axis:

    d_k[n, j] = d^k l_n / d x_j^k  at x_n,    k = 1, 2, 3   (the diagonal of the k-th derivative).

Exact, by forward mode: three nested jvps along the one-hot tangent e_j, given to every sample of
the probe at once (in eval mode the samples do not interact, so the tangent of sample n's loss is
its own derivative); vmap runs every feature and every model. Summaries per feature j are
mean_n |d_k[n, j]| (the table's d1, d2, d3); per model, their means over the features.
Cost: about 8 forward rows per (model, feature, sample); 64 MNIST-1D MLPs (width 64, 40 features,
256 samples) take ~20 s on one busy CPU core; image inputs cost F / 40 times that.

The derivative-free sensitivity beside them is the Spearman rank correlation over the probe
between feature j and the loss, rho_j = corr(rank x_{:,j}, rank l) (average ranks for ties, as
scipy.stats.spearmanr; NaN for a feature constant on the probe). ``sensitivity.spearman_agreement``
is the Spearman correlation across features between d1_j and |rho_j| (features that vary on the
probe): near 1 when the features the loss is locally most sensitive to are the ones whose values
rank with the loss the most. Inputs must be real-valued (token inputs have no derivative).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vmap

from ..functional import mode, population_forward
from .base import Measured, Metric, Option, Population

Tensor = torch.Tensor

ROWS = 1 << 15  # (model, feature, sample) forward rows per chunk of features


def per_sample_loss(kind: str):
    """loss(outputs [N, ...], y [N, ...]) -> [N] for the task kind."""
    if kind == "classification":
        return lambda out, y: F.cross_entropy(out, y, reduction="none")
    if kind == "regression":
        return lambda out, y: (out - y.reshape(out.shape)).pow(2).flatten(1).mean(1)
    raise ValueError(f"input sensitivity needs a classification or regression loss, not a {kind!r} task")


def diagonal_derivatives(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor,
                         y: Tensor, loss, features: Tensor) -> Tensor:
    """d^k l_n / d x_j^k for k = 1, 2, 3, M stacked models, samples x [N, ...], features j in
    ``features`` (indices into the flattened input) -> [M, 3, N, len(features)]. ``model`` must be
    in eval mode."""
    n = x.shape[0]
    flat = x.reshape(n, -1)

    def derivatives(p, b, j):
        def losses(z):
            return loss(functional_call(model, (p, b), (z.view(x.shape),)), y)

        t = F.one_hot(j, flat.shape[1]).to(flat.dtype).expand(n, -1)
        first = lambda z: jvp(losses, (z,), (t,))[1]
        both = lambda z: jvp(first, (z,), (t,))
        (d1, d2), (_, d3) = jvp(both, (flat,), (t,))
        return torch.stack([d1, d2, d3])

    over_features = vmap(derivatives, in_dims=(None, None, 0), out_dims=2)
    with warnings.catch_warnings():  # torch scripts some nested forward-mode rules on first use, and says so
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        return vmap(over_features, in_dims=(0, 0, None))(params, buffers, features)


def ranks(v: Tensor) -> Tensor:
    """1-based ranks along the last axis, ties sharing their mean rank (scipy.stats.rankdata)."""
    s = v.sort(-1).values.contiguous()
    v = v.contiguous()
    lo, hi = torch.searchsorted(s, v, side="left"), torch.searchsorted(s, v, side="right")
    return (lo + hi + 1).double() / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation of a [..., N] and b [..., N] (broadcast) -> [...]; NaN if either is constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1))


def compute(pop: Population, spec) -> Measured:
    data = pop.data
    if not np.issubdtype(data.x_train.dtype, np.floating):
        raise ValueError(f"input sensitivity needs real-valued inputs; task {data.name!r} has "
                         f"{data.x_train.dtype} inputs (tokens)")
    loss = per_sample_loss(data.kind)
    if len(pop.healthy) == 0:
        return Measured(per_model={c: np.full(pop.m, np.nan) for c in METRIC.columns})
    params, buffers = pop.final
    dtype = next(iter(params.values())).dtype
    x = torch.as_tensor(data.x_train[:spec.sensitivity_probe]).to(dtype)
    y = torch.as_tensor(data.y_train[:spec.sensitivity_probe])
    y = y.to(dtype) if y.is_floating_point() else y
    m, n, f = len(pop.healthy), x.shape[0], x[0].numel()
    step = max(1, ROWS // (m * n))
    with mode(pop.model, train=False), torch.no_grad():
        losses = vmap(loss, in_dims=(0, None))(population_forward(pop.model, params, buffers, x), y)  # [m, N]
        d = torch.cat([diagonal_derivatives(pop.model, params, buffers, x, y, loss, j).abs().mean(2)
                       for j in torch.arange(f).split(step)], 2).double()  # [m, 3, F]: mean_n |d_k[n, j]|
    flat = x.reshape(n, f).T  # [F, N]
    rho = spearman(flat, losses[:, None])  # [m, F]
    varies = flat.amax(1) > flat.amin(1)
    agreement = spearman(d[:, 0, varies], rho[:, varies].abs())
    table = pd.DataFrame({"model_id": np.repeat([pop.model_ids[i] for i in pop.healthy], f),
                          "feature": np.tile(np.arange(f), m),
                          **{f"d{k + 1}": d[:, k].reshape(-1).numpy() for k in range(3)},
                          "spearman": rho.reshape(-1).numpy()})
    means = d.mean(2)
    return Measured(per_model={"sensitivity.d1_mean": pop.spread(means[:, 0].numpy()),
                               "sensitivity.d2_mean": pop.spread(means[:, 1].numpy()),
                               "sensitivity.d3_mean": pop.spread(means[:, 2].numpy()),
                               "sensitivity.spearman_agreement": pop.spread(agreement.numpy())},
                    tables={"sensitivity": table})


METRIC = Metric(
    name="sensitivity",
    protocol="256 training samples; exact diagonal derivatives by nested forward mode (torch.func); "
             "per-feature table `sensitivity.parquet`",
    about="Input sensitivity: 1st-3rd derivatives of the loss along each input feature vs Spearman(input, loss)",
    applies_to="model",
    columns={
        "sensitivity.d1_mean": "mean over input features of mean_n |dl_n/dx_j| on a training probe",
        "sensitivity.d2_mean": "mean over input features of mean_n |d2l_n/dx_j2| (diagonal second derivative)",
        "sensitivity.d3_mean": "mean over input features of mean_n |d3l_n/dx_j3| (diagonal third derivative)",
        "sensitivity.spearman_agreement": "Spearman correlation across features of d1_j and |Spearman(x_j, loss)|",
    },
    compute=compute,
    switch="sensitivity",
    options={
        "sensitivity": Option(False, "input sensitivity: derivatives of the loss per input feature (sensitivity.*)"),
        "sensitivity_probe": Option(256, "training samples in the input-sensitivity probe", range="[2, 1e6]"),
    },
    kinds=("classification", "regression"),
    tables={"sensitivity": ["model_id", "feature"]},
)
