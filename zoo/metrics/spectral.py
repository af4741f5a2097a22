"""Spectral metrics of weight matrices (heavy-tailed self-regularization, FARMS), batched over models.

Conventions follow WeightWatcher 0.7 ``analyze()`` defaults (the test oracle):
- the ESD of a layer is the eigenvalues of W^T W, i.e. squared singular values, not divided by N;
- Conv weights (out, in, k...) are k = prod(kernel) matrices W[:, :, i, j] whose eigenvalues are
  pooled; Conv2d slices are scaled by 1/sqrt(2) first (what WW's default ``conv2d_norm`` amounts to:
  its conv eigenvalues are half the raw ones, checked against it for 3x3 and 5x5 kernels);
- layers with fewer than ``min_evals`` = 8 eigenvalues are skipped; eigenvalues <= 1e-5 are left out
  of the fit;
- power law: continuous MLE alpha with xmin = argmin of the KS distance over all candidates
  (``zoo.kernels.powerlaw_scan``, every candidate at once, all layers of all models as rows);
- log_norm = log10(sum eigenvalues) (log10 ||W||_F^2), log_spectral_norm = log10(lambda_max),
  alpha_weighted = alpha * log10(lambda_max), stable_rank = sum / max, entropy = WW's matrix entropy
  of the singular values (normalised by log rank).
Deliberate differences: WW switches to a small-sample estimator below 20 tail eigenvalues (we
always use the standard MLE), and its ``mp_softrank`` comes from a fitted Marchenko-Pastur bulk;
ours uses the bulk edge of an i.i.d. matrix with the layer's own variance, sigma^2 (sqrt N + sqrt M)^2
with sigma^2 = ||W||_F^2 / (N M), clipped to lambda_max.

FARMS (arXiv 2506.06280): the ESD of fixed-size square sub-matrices instead of the whole layer, which
removes the dependence of alpha on the aspect ratio N/M. As in the authors' code, windows of
``farms_window`` = 100 (or the smaller dimension, if less) on a 9 x 9 grid of evenly spaced offsets
(duplicates removed; overlapping when the matrix is smaller than 9 windows), eigenvalues pooled over
the windows (and over conv slices), then the same fit.

Per model, ``spectral.<metric>_mean`` averages a layer metric over the layers that have it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..kernels import powerlaw_scan

Tensor = torch.Tensor
EVALS_THRESH = 1e-5
MEAN_METRICS = ("alpha", "alpha_weighted", "ks_distance", "log_norm", "log_spectral_norm", "stable_rank",
                "entropy", "mp_softrank", "nuclear_norm", "nuclear_norm_ratio", "farms_alpha",
                "farms_alpha_weighted")


def layer_weights(model: nn.Module) -> list[tuple[str, str]]:
    """(state_dict weight name, kind) of the layers WeightWatcher analyses: Linear, Conv1d/2d and
    attention input projections."""
    out = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.Linear):
            out.append((f"{prefix}weight", "linear"))
        elif isinstance(m, nn.Conv2d):
            out.append((f"{prefix}weight", "conv2d"))
        elif isinstance(m, nn.Conv1d):
            out.append((f"{prefix}weight", "conv1d"))
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out.append((f"{prefix}in_proj_weight", "linear"))
    return out


def matrices(w: Tensor, kind: str) -> Tensor:
    """Stacked weights [M, out, in, *k] -> matrices [M, S, out, in] (S slices; 1 for linear)."""
    if kind == "linear":
        return w.unsqueeze(1)
    k = int(np.prod(w.shape[3:]))
    mats = w.reshape(*w.shape[:3], k).permute(0, 3, 1, 2)
    return mats * np.sqrt(0.5) if kind == "conv2d" else mats


def _windows(n: int, size: int, grid: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(0, n - size, grid)})


def farms_matrices(mats: Tensor, window: int = 100, grid: int = 9) -> Tensor:
    """Square sub-matrices [M, W, s, s] of matrices [M, S, n, m] on a grid x grid offset grid."""
    n, m = mats.shape[-2:]
    s = min(window, n, m)
    subs = [mats[..., i:i + s, j:j + s] for i in _windows(n, s, grid) for j in _windows(m, s, grid)]
    return torch.cat(subs, dim=1)


def _fit(evals: Tensor, valid: Tensor) -> dict[str, np.ndarray]:
    """Power-law fits of rows [R, n] (``valid`` marks the eigenvalues that enter the fit)."""
    fit = powerlaw_scan(evals, mask=valid & (evals > EVALS_THRESH))
    alpha = fit["alpha_best"].double().numpy()
    n_tail = (fit["sorted"].isfinite() & (fit["sorted"] >= fit["xmin"].unsqueeze(1))).sum(1).numpy()
    return {"alpha": alpha, "xmin": fit["xmin"].double().numpy(), "ks_distance": fit["D_best"].double().numpy(),
            "n_tail": n_tail}


def _layer_metrics(mats: Tensor, min_evals: int, farms: bool, farms_window: int) -> dict[str, np.ndarray]:
    """Every metric of one layer for M models; mats [M, S, n, m] float64."""
    m_models, s, n, m = mats.shape
    sv = torch.linalg.svdvals(mats)  # [M, S, min(n, m)]
    evals = (sv ** 2).reshape(m_models, -1)
    big = max(n, m)
    lam_max = evals.max(1).values
    total = evals.sum(1)
    out = {"n_evals": np.full(m_models, evals.shape[1]),
           "frobenius_norm": total.sqrt().numpy(), "spectral_norm": lam_max.sqrt().numpy(),
           "log_norm": torch.log10(total).numpy(), "log_spectral_norm": torch.log10(lam_max).numpy(),
           "stable_rank": (total / lam_max).numpy()}
    svf = sv.reshape(m_models, -1)
    tol = svf.max(1, keepdim=True).values * big * torch.finfo(torch.float64).eps
    rank = (svf > tol).sum(1).double() + 1e-10
    p = evals / evals.sum(1, keepdim=True) + 1e-10
    out["entropy"] = (-(p * p.log()).sum(1) / rank.log()).numpy()
    sigma2 = (mats ** 2).sum((2, 3)) / (n * m)  # per slice
    edge = (sigma2 * (np.sqrt(n) + np.sqrt(m)) ** 2).max(1).values
    out["mp_softrank"] = (torch.minimum(edge, lam_max) / lam_max).numpy()
    nuclear = sv.sum((1, 2))
    out["nuclear_norm"] = nuclear.numpy()
    out["nuclear_norm_ratio"] = (nuclear / (s * big)).numpy()
    nan = np.full(m_models, np.nan)
    if evals.shape[1] >= min_evals:
        fit = _fit(evals, torch.ones_like(evals, dtype=torch.bool))
        out.update(fit)
        out["alpha_weighted"] = fit["alpha"] * out["log_spectral_norm"]
    else:
        out.update(alpha=nan, xmin=nan, ks_distance=nan, n_tail=nan, alpha_weighted=nan)
    if farms:
        sub = farms_matrices(mats, farms_window)
        fevals = (torch.linalg.svdvals(sub) ** 2).reshape(m_models, -1)
        if fevals.shape[1] >= min_evals:
            ffit = _fit(fevals, torch.ones_like(fevals, dtype=torch.bool))
            out["farms_alpha"] = ffit["alpha"]
            out["farms_ks_distance"] = ffit["ks_distance"]
            out["farms_alpha_weighted"] = ffit["alpha"] * torch.log10(fevals.max(1).values).numpy()
        else:
            out.update(farms_alpha=nan, farms_ks_distance=nan, farms_alpha_weighted=nan)
    return out


@torch.no_grad()
def spectral_tables(model: nn.Module, params: dict[str, Tensor], model_ids: list[str], step: int,
                    farms: bool = True, min_evals: int = 8, farms_window: int = 100
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(layers, summary) for M stacked models: one row per (model_id, step, layer), and one row per
    model with ``spectral.<metric>_mean`` columns (mean over layers where the metric exists)."""
    frames = []
    for name, kind in layer_weights(model):
        w = params[name].double()
        mats = matrices(w, kind)
        metrics = _layer_metrics(mats, min_evals, farms, farms_window)
        frame = pd.DataFrame({"model_id": model_ids, "step": step, "layer": name, "kind": kind,
                              "n": mats.shape[2], "m": mats.shape[3], "slices": mats.shape[1], **metrics})
        frame["skip_reason"] = np.where(np.isfinite(frame["alpha"]), "", f"fewer than {min_evals} eigenvalues")
        frames.append(frame)
    layers = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"model_id": [], "step": []})
    cols = [c for c in MEAN_METRICS if c in layers]
    summary = layers.groupby("model_id", sort=False)[cols].mean().reindex(model_ids)
    summary.columns = [f"spectral.{c}_mean" for c in cols]
    return layers, summary.reset_index().rename(columns={"index": "model_id"})


__all__ = ["MEAN_METRICS", "farms_matrices", "layer_weights", "matrices", "spectral_tables"]
