"""Spectral metrics of weight matrices (heavy-tailed self-regularization, FARMS), batched over models.

Why: WeightWatcher (WW) analyses one model at a time, layer by layer, with an O(n^2) Python scan per
layer; a zoo has thousands of models of one architecture. Here every layer of all M models of a
population goes through one ``torch.linalg.svdvals`` on stacked matrices and one vectorized power-law
scan (``zoo.kernels.powerlaw_scan``), with the conventions of WW 0.7 ``analyze()`` defaults (its test
oracle, tests/test_spectral.py):

- layers: Linear, Conv1d, Conv2d, Embedding (as WW), plus ``nn.MultiheadAttention.in_proj_weight``
  as one [3E, E] matrix (WW skips it; this is how WW sees a fused qkv Linear such as GPT-2's);
- ESD: eigenvalues of W^T W = squared singular values, *not* divided by N (WW's ``normalize=False``).
  A Conv2d kernel (out, in, kh, kw) is kh*kw matrices W[:, :, i, j] whose eigenvalues are pooled,
  each slice scaled by 1/sqrt(2) first (WW's default ``conv2d_norm``: sqrt(conv2d_count / 2) with
  conv2d_count = 1 when pooling). Conv1d (out, in, k) is pooled over its k slices the same way,
  unscaled (WW treats the 3-D tensor as one dense matrix, which is not meaningful);
- N, M = larger, smaller side of a (slice) matrix, Q = N / M; a layer is fitted when it has
  M * slices >= ``min_evals`` = 8 and <= ``max_evals`` = 15000 eigenvalues and N <= ``max_n`` = 50000
  (WW's ``min_evals``, ``max_evals``, ``max_N``; WW drops such layers, here they keep their norms and
  get NaN fits with a ``reason``);
- power law (WW ``fit='PL'``, ``pl_package='ww'``, ``xmin=None``): eigenvalues <= 1e-5 are dropped,
  then alpha = 1 + n / sum ln(l / xmin) with xmin = argmin of the KS distance over every candidate;
  when fewer than 20 eigenvalues remain WW switches to its small-sample fit (bias-corrected
  alpha = 1 + (n - 1) / sum ln(l / xmin), xmin minimising D over tails of >= 8 points), and so does
  this module; alpha_sigma = (alpha - 1) / sqrt(n_tail);
- norms (all of the ESD above, so conv2d ones carry the 1/2 of ``conv2d_norm``): frobenius_norm =
  sqrt(sum l), spectral_norm = sqrt(l_max) (= sigma_max; WW's columns ``norm``, ``spectral_norm`` are
  their squares), log_norm = log10 sum l, log_spectral_norm = log10 l_max, alpha_weighted =
  alpha * log10 l_max, log_alpha_norm = log10 sum l^alpha, stable_rank = sum l / l_max, matrix_rank
  (singular values > sigma_max * N * eps), entropy = WW's matrix entropy -sum p ln p / ln rank with
  p = l / sum l, nuclear_norm = sum sigma, nuclear_norm_ratio = nuclear_norm / (slices * N);
- mp_softrank = bulk_max / l_max after rescaling the ESD to mean 1, with the Marchenko-Pastur sigma
  fitted as WW's ``mp_fit=True`` does (linear-kernel KDE, bandwidth 0.1, brute-force grid
  0.05..2 x sigma_0 then a local polish; WW polishes with Nelder-Mead, here golden-section search
  inside the neighbouring grid cells: typically 1e-4 apart, up to ~1e-2 on the few layers where
  Nelder-Mead leaves the cell for another local minimum).

FARMS (Hu et al., ICML 2025, arXiv 2506.06280): the same fit on the pooled ESD of square
sub-matrices, which removes the dependence of alpha on the aspect ratio Q. Window side
s = min(``farms_window`` = 100, N, M) (the authors' 100 rows, at aspect ratio 1); offsets on a
``farms_grid`` x ``farms_grid`` = 9 x 9 grid, per axis round(linspace(0, side - s, 9)) with duplicates
dropped, so windows overlap whenever side < 9 s and the last one touches the edge; every slice of a
conv layer is windowed the same way. farms_alpha_weighted = farms_alpha * log10 of the largest pooled
window eigenvalue.

Per model, ``spectral.<metric>_mean`` is the mean of a layer metric over the layers where it is
finite (``SUMMARY_METRICS``); ``spectral.n_fitted`` counts layers with an alpha.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..kernels import powerlaw_scan
from .base import Measured, Metric, Population

Tensor = torch.Tensor
SMALL_N = 20  # WW_powerlaw.SMALL_N_CUTOFF
SMALL_K_MIN = 8  # WWFit.fit_powerlaw_smallN k_min
FIT_COLUMNS = ("alpha", "xmin", "ks_distance", "n_tail", "alpha_sigma")
LAYER_KEYS = ("model_id", "step", "layer", "kind", "shape", "n", "m", "slices", "q", "n_evals", "reason")
SUMMARY_METRICS = ("alpha", "alpha_weighted", "ks_distance", "log_norm", "log_spectral_norm", "log_alpha_norm",
                   "stable_rank", "entropy", "mp_softrank", "nuclear_norm", "nuclear_norm_ratio",
                   "farms_alpha", "farms_alpha_weighted")


@dataclass(frozen=True)
class FitOptions:
    """Settings of ``spectral_tables``; defaults are WW 0.7 ``analyze()`` defaults where WW has one."""

    min_evals: int = 8
    max_evals: int = 15000
    max_n: int = 50000
    evals_thresh: float = 1e-5
    conv2d_norm: bool = True
    mp_fit: bool = True
    farms_window: int = 100
    farms_grid: int = 9
    scan_budget: int = 2 ** 23  # float64 elements per powerlaw_scan call (rows x 256 x n)


def layer_weights(model: nn.Module) -> list[tuple[str, str]]:
    """(state_dict weight name, kind) of the analysed layers, in module order."""
    out = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.Linear):
            out.append((f"{prefix}weight", "linear"))
        elif isinstance(m, nn.Conv2d):
            out.append((f"{prefix}weight", "conv2d"))
        elif isinstance(m, nn.Conv1d):
            out.append((f"{prefix}weight", "conv1d"))
        elif isinstance(m, nn.Embedding):
            out.append((f"{prefix}weight", "embedding"))
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out.append((f"{prefix}in_proj_weight", "attention"))
    return out


def matrices(w: Tensor, kind: str, conv2d_norm: bool = True) -> Tensor:
    """Stacked weights [M, out, in, *k] -> matrices [M, S, out, in] (S kernel slices, 1 if not conv)."""
    if kind not in ("conv1d", "conv2d"):
        return w.unsqueeze(1)
    k = int(np.prod(w.shape[3:]))
    mats = w.reshape(*w.shape[:3], k).permute(0, 3, 1, 2)
    return mats * np.sqrt(0.5) if kind == "conv2d" and conv2d_norm else mats


def _offsets(side: int, size: int, grid: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(0, side - size, grid)})


def farms_matrices(mats: Tensor, window: int = 100, grid: int = 9) -> Tensor:
    """Square sub-matrices [M, S * windows, s, s] of matrices [M, S, n, m], s = min(window, n, m)."""
    n, m = mats.shape[-2:]
    s = min(window, n, m)
    ar = torch.arange(s)
    rows = torch.tensor(_offsets(n, s, grid))[:, None] + ar  # [Wr, s]
    cols = torch.tensor(_offsets(m, s, grid))[:, None] + ar  # [Wc, s]
    sub = mats[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # [M, S, Wr, Wc, s, s]
    return sub.reshape(mats.shape[0], -1, s, s)


# ---------------------------------------------------------------------------------------- tail fits

def _fit_small(x: Tensor, length: Tensor) -> dict[str, Tensor]:
    """WW's small-sample fit of sorted rows x [R, n] (ascending, +inf beyond ``length``), all candidates
    at once. As WW 0.7 runs it (``fit_powerlaw_smallN``, then ``WWFit.__init__`` picks argmin D, which
    overrides the D - 0.868/sqrt(n) objective the method computes): candidates are tails of >= 8
    points with alpha = 1 + (n - 1) / sum ln(l / xmin) > 1; the others count as D = 1."""
    r, n = x.shape
    idx = torch.arange(n)
    ok_j = idx[None, :] < length[:, None]
    logx = torch.where(ok_j, torch.log(torch.where(ok_j, x, 1.0)), 0.0)
    n_i = (length[:, None] - idx[None, :]).double()
    s = torch.flip(torch.cumsum(torch.flip(logx, [1]), 1), [1]) - n_i * logx
    alpha = 1 + (n_i - 1) / torch.where(s > 1e-12, s, 1.0)
    ratio = logx[:, None, :] - logx[:, :, None]  # ln(l_j / l_i) [R, i, j]
    fit = 1 - torch.exp(((1 - alpha)[:, :, None] * ratio).clamp(max=0))
    emp = (idx[None, None, :] - idx[None, :, None]).double() / n_i.clamp(min=1)[:, :, None]
    inside = (idx[None, None, :] >= idx[None, :, None]) & ok_j[:, None, :]
    d = torch.where(inside, (fit - emp).abs(), 0.0).amax(2)
    cand = idx[None, :] < length[:, None] - 1
    ok = cand & (n_i >= SMALL_K_MIN) & (s > 1e-12) & (alpha > 1)
    d = torch.where(ok, d, 1.0)
    best = torch.argmin(torch.where(cand, d, torch.inf), 1)[:, None]
    alpha_b = torch.where(s.gather(1, best) > 1e-12, alpha.gather(1, best), torch.nan)[:, 0]
    return {"alpha": alpha_b, "xmin": x.gather(1, best)[:, 0], "ks_distance": d.gather(1, best)[:, 0],
            "n_tail": (length - best[:, 0]).double()}


def fit_tails(evals: Tensor, thresh: float = 1e-5, budget: int = 2 ** 23) -> dict[str, np.ndarray]:
    """Power-law tail fits of rows [R, n] of eigenvalues (NaN entries are ignored), WW's default fit:
    the standard MLE + KS scan of ``powerlaw_scan`` for rows with >= 20 eigenvalues above ``thresh``,
    WW's small-sample fit below. Returns float64 arrays alpha, xmin, ks_distance, n_tail,
    alpha_sigma [R] (NaN where fewer than 2 eigenvalues remain)."""
    evals = evals.double()
    valid = torch.isfinite(evals) & (evals > thresh)
    count = valid.sum(1)
    r = evals.shape[0]
    out = {k: torch.full((r,), torch.nan, dtype=torch.float64) for k in ("alpha", "xmin", "ks_distance", "n_tail")}
    big = (count >= SMALL_N).nonzero()[:, 0]
    if len(big):
        n = evals.shape[1]
        step = max(1, budget // (min(n, 256) * n))
        for i0 in range(0, len(big), step):
            rows = big[i0:i0 + step]
            fit = powerlaw_scan(evals[rows], mask=valid[rows])
            tail = (count[rows] - fit["best"]).double()
            for k, v in (("alpha", fit["alpha_best"]), ("xmin", fit["xmin"]), ("ks_distance", fit["D_best"]),
                         ("n_tail", tail)):
                out[k][rows] = v.double()
    small = ((count >= 2) & (count < SMALL_N)).nonzero()[:, 0]
    if len(small):
        x = torch.where(valid[small], evals[small], torch.inf)
        x = torch.sort(x, 1).values[:, :SMALL_N]
        for k, v in _fit_small(x, count[small]).items():
            out[k][small] = v
    out["alpha_sigma"] = (out["alpha"] - 1) / out["n_tail"].sqrt()
    return {k: v.numpy() for k, v in out.items()}


# ------------------------------------------------------------------------------- Marchenko-Pastur

def _mp_resid(sigma: Tensor, xde: Tensor, yde: Tensor, good: Tensor, q: float) -> Tensor:
    """WW ``resid_mp`` summed squares for sigma [R, K]; xde, yde, good [R, X] (yde zeroed off ``good``)."""
    s2 = sigma[..., None] ** 2
    x, y, g = xde[:, None, :], yde[:, None, :], good[:, None, :]
    if q == 1:
        ymp = torch.sqrt((4 - x * x).clamp(min=0)) / (np.pi * s2)
        return ((ymp * g - y) ** 2).sum(-1)
    a = s2 * (1 - np.sqrt(1 / q)) ** 2
    b = s2 * (1 + np.sqrt(1 / q)) ** 2
    inv_x = torch.where(x > 0, 1 / x.clamp(min=1e-300), 0.0)
    ymp = torch.sqrt(((b - x) * (x - a)).clamp(min=0)) * inv_x * (q / (2 * np.pi * s2))
    loss = ((ymp * g - y) ** 2).sum(-1)
    peak = xde.gather(1, torch.argmax(yde, 1, keepdim=True))  # first maximum [R, 1]
    top = torch.where(good, xde, -torch.inf).amax(1, keepdim=True)
    bad = (b[..., 0] < peak) | (b[..., 0] > top) | (a[..., 0] > peak)
    return torch.where(bad, 1e6 * good.sum(1, keepdim=True).double(), loss)


def mp_softrank(evals: Tensor, q: float, bw: float = 0.1, chunk: int = 32) -> np.ndarray:
    """WW's ``mp_softrank`` (``analyze(mp_fit=True)``) of rows [R, L] of one layer's eigenvalues with
    aspect ratio q = N / M: rescale to mean 1, fit the MP sigma to a linear-kernel KDE, return
    bulk_max / lambda_max with bulk_max = (sigma (1 + 1/sqrt q))^2."""
    out = []
    for e in evals.double().split(chunk):
        e = e * e.shape[1] / e.sum(1, keepdim=True)
        lam_max = e.amax(1)
        data = e.sqrt() if q == 1 else e
        xde = torch.linspace(0, 1, 1000, dtype=torch.float64)[None, :] * (data.amax(1, keepdim=True) + 0.5)
        yde = torch.zeros_like(xde)
        for d in data.split(max(1, 2 ** 22 // (1000 * e.shape[0])), dim=1):  # triangle kernel KDE
            yde += (1 - (xde[:, :, None] - d[:, None, :]).abs() / bw).clamp(min=0).sum(-1)
        yde /= e.shape[1] * bw
        good = yde > 0.01
        yde = yde * good
        s0 = torch.sqrt(lam_max / (1 + 1 / np.sqrt(q)) ** 2)
        k = np.arange(0.05, 2.0, 0.01)  # np.mgrid[slice(0.05 s0, 2 s0, 0.01 s0)] has these 195 points
        grid = s0[:, None] * torch.as_tensor(k)[None, :]
        loss = _mp_resid(grid, xde, yde, good, q)
        i = torch.argmin(loss, 1)
        step = 0.01 * s0
        lo, hi = grid.gather(1, i[:, None])[:, 0] - step, grid.gather(1, i[:, None])[:, 0] + step
        g = (np.sqrt(5) - 1) / 2
        for _ in range(30):  # golden-section polish inside the two neighbouring cells
            c, d = hi - g * (hi - lo), lo + g * (hi - lo)
            f = _mp_resid(torch.stack([c, d], 1), xde, yde, good, q)
            left = f[:, 0] <= f[:, 1]
            hi, lo = torch.where(left, d, hi), torch.where(left, lo, c)
        best = grid.gather(1, i[:, None])[:, 0]
        mid = (lo + hi) / 2
        polished = _mp_resid(torch.stack([mid, best], 1), xde, yde, good, q)
        sigma = torch.where(polished[:, 0] <= polished[:, 1], mid, best)
        out.append(((sigma * (1 + 1 / np.sqrt(q))) ** 2 / lam_max).numpy())
    return np.concatenate(out) if out else np.zeros(0)


# ------------------------------------------------------------------------------------ per layer

def _norms(sv: Tensor, n_big: int, slices: int) -> dict[str, Tensor]:
    """Norm and rank metrics from singular values [M, S, k] of M models."""
    m_models = sv.shape[0]
    svf = sv.reshape(m_models, -1)
    ev = svf ** 2
    total, lam_max = ev.sum(1), ev.amax(1)
    rank = (svf > svf.amax(1, keepdim=True) * n_big * torch.finfo(torch.float64).eps).sum(1).double()
    p = ev / total[:, None] + 1e-10
    return {"lambda_max": lam_max, "frobenius_norm": total.sqrt(), "spectral_norm": lam_max.sqrt(),
            "log_norm": torch.log10(total), "log_spectral_norm": torch.log10(lam_max), "stable_rank": total / lam_max,
            "matrix_rank": rank, "entropy": -(p * p.log()).sum(1) / torch.log(rank + 1e-10),
            "nuclear_norm": svf.sum(1), "nuclear_norm_ratio": svf.sum(1) / (slices * n_big)}


def _layer(w: Tensor, kind: str, opt: FitOptions, farms: bool) -> tuple[dict, list[str], dict]:
    """Metrics of one layer of M models (fits deferred). Returns (columns, reasons, fit requests)."""
    finite = torch.isfinite(w.reshape(w.shape[0], -1)).all(1)
    mats = matrices(torch.where(finite.reshape(-1, *[1] * (w.dim() - 1)), w, 0.0), kind, opt.conv2d_norm)
    m_models, s, rows, cols = mats.shape
    n_big, n_small = max(rows, cols), min(rows, cols)
    n_evals = n_small * s
    cols_ = {"n": n_big, "m": n_small, "slices": s, "q": n_big / n_small, "n_evals": n_evals}
    reason = ""
    if n_evals < opt.min_evals:
        reason = f"fewer than min_evals={opt.min_evals} eigenvalues"
    elif n_evals > opt.max_evals:
        reason = f"more than max_evals={opt.max_evals} eigenvalues"
    elif n_big > opt.max_n:
        reason = f"N > max_n={opt.max_n}"
    if n_evals > opt.max_evals or n_big > opt.max_n:  # too big to decompose: nothing but the reason
        return cols_, [reason] * m_models, {}
    sv = torch.linalg.svdvals(mats)  # [M, S, min]
    cols_.update(_norms(sv, n_big, s))
    evals = (sv ** 2).reshape(m_models, -1)
    requests = {}
    if not reason:
        requests["esd"] = evals
        if opt.mp_fit:
            cols_["mp_softrank"] = torch.as_tensor(mp_softrank(evals, n_big / n_small))
        if farms:
            sub = farms_matrices(mats, opt.farms_window, opt.farms_grid)
            fe = (torch.linalg.svdvals(sub) ** 2).reshape(m_models, -1)
            requests["farms"] = fe
            cols_["farms_window"] = min(opt.farms_window, n_big, n_small)
            cols_["farms_n_evals"] = fe.shape[1]
            cols_["farms_lambda_max"] = fe.amax(1)
    reasons = [reason if ok else "non-finite weights" for ok in finite.tolist()]
    return cols_, reasons, requests


def _fit_all(requests: list[tuple[int, str, Tensor]], opt: FitOptions) -> dict[tuple[int, str], dict]:
    """One fit call per distinct eigenvalue count, rows of all layers and models stacked."""
    by_len: dict[int, list] = {}
    for key in requests:
        by_len.setdefault(key[2].shape[1], []).append(key)
    out = {}
    for group in by_len.values():
        fit = fit_tails(torch.cat([e for _, _, e in group]), opt.evals_thresh, opt.scan_budget)
        start = 0
        for li, what, e in group:
            out[(li, what)] = {k: v[start:start + e.shape[0]] for k, v in fit.items()}
            start += e.shape[0]
    return out


@torch.no_grad()
def spectral_tables(model: nn.Module, params: dict[str, Tensor], model_ids: list[str], step: int,
                    farms: bool = True, **fit_options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spectral metrics of M stacked models of one architecture.

    params: ``state_dict`` name -> Tensor [M, *shape]; fit_options: fields of ``FitOptions``.
    Returns (layers, summary): layers has one row per (model_id, step, layer) with model_id, step,
    layer (state_dict weight name), kind (linear / conv1d / conv2d / embedding / attention), shape,
    n, m (larger / smaller side of a slice), slices, q, n_evals, the metrics of the module docstring
    and ``reason`` (why the fits are NaN, empty if they are not); summary has one row per model_id
    with ``spectral.<metric>_mean`` over the layers where the metric is finite and ``spectral.n_fitted``.
    """
    valid = [f.name for f in fields(FitOptions)]
    unknown = sorted(set(fit_options) - set(valid))
    if unknown:
        raise TypeError(f"unknown spectral fit options {unknown}; valid: {valid}")
    opt = FitOptions(**fit_options)
    m_models = len(model_ids)
    specs = [(name, kind) for name, kind in layer_weights(model) if name in params]
    layers, requests = [], []
    for li, (name, kind) in enumerate(specs):
        w = params[name].detach().to("cpu", torch.float64)
        cols, reasons, req = _layer(w, kind, opt, farms)
        layers.append((cols, reasons, tuple(w.shape[1:])))
        requests += [(li, what, e) for what, e in req.items()]
    fits = _fit_all(requests, opt)
    evals = {(li, what): e for li, what, e in requests}
    nan = np.full(m_models, np.nan)
    frames = []
    for li, ((name, kind), (cols, reasons, shape)) in enumerate(zip(specs, layers)):
        frame = pd.DataFrame({"model_id": model_ids, "step": step, "layer": name, "kind": kind,
                              "shape": "x".join(map(str, shape))})
        for k, v in cols.items():
            frame[k] = v.numpy() if isinstance(v, Tensor) else v
        esd = fits.get((li, "esd"), {})
        for k in FIT_COLUMNS:
            frame[k] = esd.get(k, nan)
        frame["alpha_weighted"] = frame["alpha"] * frame.get("log_spectral_norm", nan)
        frame["log_alpha_norm"] = nan
        if (li, "esd") in evals:  # log10 sum l^alpha = alpha log10 l_max + log10 sum (l / l_max)^alpha
            ev, a = evals[(li, "esd")], torch.tensor(frame["alpha"].to_numpy())[:, None]
            lam = ev.amax(1, keepdim=True)
            frame["log_alpha_norm"] = (a[:, 0] * torch.log10(lam[:, 0]) + torch.log10(((ev / lam) ** a).sum(1))).numpy()
        if farms:
            fe = fits.get((li, "farms"), {})
            for k in FIT_COLUMNS:
                frame[f"farms_{k}"] = fe.get(k, nan)
            frame["farms_alpha_weighted"] = frame["farms_alpha"] * np.log10(frame.get("farms_lambda_max", nan))
        frame["reason"] = reasons
        bad = frame["reason"] == "non-finite weights"
        frame.loc[bad, [c for c in frame.columns if c not in LAYER_KEYS]] = np.nan
        frames.append(frame)
    if not frames:
        return (pd.DataFrame({"model_id": [], "step": [], "layer": []}),
                pd.DataFrame({"model_id": model_ids, "spectral.n_fitted": 0}))
    table = pd.concat(frames, ignore_index=True)
    num = table.select_dtypes("number").columns
    table[num] = table[num].replace([np.inf, -np.inf], np.nan)
    cols = [c for c in SUMMARY_METRICS if c in table]
    grouped = table.groupby("model_id", sort=False)
    summary = grouped[cols].mean().reindex(model_ids)
    summary.columns = [f"spectral.{c}_mean" for c in cols]
    summary["spectral.n_fitted"] = grouped["alpha"].count().reindex(model_ids).to_numpy()
    return table, summary.rename_axis("model_id").reset_index()


def measure(pop: Population, spec) -> Measured:
    """Spectral tables of the chosen checkpoints (``spectral_checkpoints``: final | all); the final
    one's per-model summary goes to the model rows, and a model with no fitted layer gets a note
    saying why (the layers' ``reason``)."""
    chosen = range(len(pop.steps)) if spec.spectral_checkpoints == "all" else [len(pop.steps) - 1]
    ids = [pop.model_ids[i] for i in pop.healthy]
    result, tables = Measured(notes=[""] * pop.m), []
    for k in chosen:
        layers, summary = spectral_tables(pop.model, pop.state(k)[0], ids, pop.steps[k], farms=spec.farms)
        tables.append(layers)
        if k != len(pop.steps) - 1:
            continue
        summary = summary.set_index("model_id").reindex(pop.model_ids)
        result.per_model = {c: summary[c].to_numpy(dtype=np.float64) for c in summary.columns}
        alpha = result.per_model.get("spectral.alpha_mean", np.full(pop.m, np.nan))
        for mid, rows in layers.groupby("model_id", sort=False):
            i = pop.model_ids.index(mid)
            if not np.isfinite(alpha[i]):
                reasons = sorted({r for r in rows["reason"] if r})
                result.notes[i] = "spectral: no layer's power law could be fitted (" + "; ".join(reasons) + ")"
    result.tables["layers"] = pd.concat(tables, ignore_index=True)
    return result


METRIC = Metric(
    name="spectral",
    applies_to="layer", compute=measure,
    protocol="WeightWatcher 0.7 `analyze()` conventions; FARMS 100×100 windows on a 9×9 offset grid; "
             "per layer → `layers.parquet`",
    about="heavy-tailed self-regularization of every weight matrix (WeightWatcher's ESD fits, FARMS)",
    columns={
        "spectral.<metric>_mean": "mean over layers of a per-layer spectral metric of layers.parquet (alpha, "
                                  "alpha_weighted, log_norm, stable_rank, farms_alpha, ...), over the layers "
                                  "where it is finite",
        "spectral.n_fitted": "layers whose power-law fit succeeded (the others have a `reason` in layers.parquet)",
    })

__all__ = ["FitOptions", "METRIC", "SUMMARY_METRICS", "farms_matrices", "fit_tails", "layer_weights", "matrices",
           "measure", "mp_softrank", "spectral_tables"]
