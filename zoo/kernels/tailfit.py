"""``powerlaw_scan``: the power-law tail fit of eigenvalue spectra, every candidate xmin at once.

Convention (WeightWatcher 0.7's ``WWFit.fit_power_law_standard``, its default ``pl_package='ww'``;
identical to ``powerlaw.Fit(data).find_xmin`` for distinct data with ``xmax=None``). For one row,
let l_0 <= l_1 <= ... <= l_{L-1} be the L valid eigenvalues (finite, > 0) sorted ascending.
Every index i = 0 .. L-2 is a candidate xmin = l_i (the largest value is never one):

    n_i     = L - i                                          (tail size, ties included)
    alpha_i = 1 + n_i / sum_{j>=i} ln(l_j / l_i)             (continuous MLE, Clauset et al. 2009)
    F_i(x)  = 1 - (x / l_i)^(1 - alpha_i)                    (fitted CDF on [l_i, inf))
    S_i(j)  = (j - i) / n_i,  j = i .. L-1                   (empirical CDF of the tail)
    D_i     = max_{j=i..L-1} | F_i(l_j) - S_i(j) |           (KS distance)
    best    = argmin_i D_i (first minimum),  xmin = l_best

The empirical CDF is the *left-continuous* one: the fraction of tail points strictly below the
j-th tail point in sorted order, 0, 1/n, ..., (n-1)/n (``np.arange(n) / n`` in WWFit;
``powerlaw.statistics.cdf`` uses ``np.arange(0, n) / n`` too since its issue #111, and its parent-fit
CDF restricted to x >= xmin and renormalised, (k/N - i/N) / (1 - i/N), is the same (j-i)/n_i).
The right-continuous value (j-i+1)/n_i is *not* checked, so D is the one-sided-at-jumps statistic
these tools report, not the textbook two-sided KS sup.

Deviations, on purpose: (1) ties are kept as separate points (WWFit does the same; powerlaw.Fit
collapses them with ``np.unique``, so results differ only for repeated eigenvalues); (2) a degenerate
tail with sum ln(l_j/l_i) = 0 (all tail values equal) gets alpha = inf and D = 1 (WWFit computes a
meaningless D there); (3) WWFit switches to a bias-corrected small-sample objective when L < 20
(``fit_powerlaw_smallN``); this scan always uses the standard estimator above; (4) powerlaw.Fit
(2.0) only accepts candidates whose alpha lies in its default range [0, 3] (``Power_Law``
``DEFAULT_PARAMETER_RANGES``) and otherwise clamps near the edge; no candidate is dropped here, as
in WWFit (checked: a Pareto(2.5) sample where the KS-best alpha is 3.41 gives powerlaw.Fit
alpha = 3.0 at another xmin, WWFit and this scan alpha = 3.41).

The reference (``powerlaw_scan_torch``) forms the upper triangle of |F_i(l_j) - S_i(j)| in float64,
in blocks of candidates sized to stay in cache and updated in place (O(tile) memory). alpha_i comes
from float64 suffix sums of ln l_j (O(R·n)) in both paths; the Triton kernel does only the O(n^2)
KS part, in fp32.

When it pays: the scan is sum_i (L - i) ~ L^2/2 evaluations of exp per row, each needing one
load that stays in cache, so it is compute (exp) bound: 8,100 pooled FARMS eigenvalues is 33 M exps
per layer. The float64 reference runs ~290-330 M (i, j) evaluations per second on one core of the
dev machine (64 rows x 512 and 1 row x 8,100; an earlier full-square, allocate-per-op version ran
~11 M/s and took 40% of a default build), i.e. ~0.1 s per pooled FARMS layer. The kernel streams
the j axis in tiles, keeps one running max per candidate in registers and uses fp32 exp, so on a
GPU it is bound by the SFU exp throughput.
"""

from __future__ import annotations

import math

import torch

from ._triton import HAS_TRITON, cdiv, interpreting, jit, tl


def _prepare(evals: torch.Tensor, lengths: torch.Tensor | None, mask: torch.Tensor | None):
    """Sort each row ascending with invalid entries (masked, beyond length, <= 0, not finite) moved to
    the end as +inf; return (sorted [R, n], L [R] int64)."""
    if evals.dim() == 1:
        evals = evals.unsqueeze(0)
    if evals.dim() != 2:
        raise ValueError(f"evals must be [R, n], got {tuple(evals.shape)}")
    r, n = evals.shape
    valid = torch.isfinite(evals) & (evals > 0)
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=evals.device).reshape(r)
        valid &= torch.arange(n, device=evals.device)[None, :] < lengths[:, None]
    if mask is not None:
        valid &= mask.to(torch.bool)
    x = torch.where(valid, evals, torch.full_like(evals, math.inf))
    x, _ = torch.sort(x, dim=1)
    return x, valid.sum(1)


def _alpha(x: torch.Tensor, length: torch.Tensor):
    """alpha_i = 1 + n_i / (sum_{j>=i} ln l_j - n_i ln l_i), from float64 suffix sums.
    Returns (alpha [R, n] float64 with nan for non-candidates and inf for degenerate tails,
    log l [R, n] float64 with 0 at invalid entries, candidate mask [R, n])."""
    n = x.shape[1]
    idx = torch.arange(n, device=x.device)
    in_row = idx[None, :] < length[:, None]
    logx = torch.where(in_row, torch.log(torch.where(in_row, x, 1).double()), 0.0)
    suffix = torch.flip(torch.cumsum(torch.flip(logx, [1]), 1), [1])
    n_i = (length[:, None] - idx[None, :]).clamp(min=0).double()
    s = suffix - n_i * logx
    cand = idx[None, :] < (length[:, None] - 1)
    alpha = torch.where(s > 0, 1 + n_i / torch.where(s > 0, s, 1.0), math.inf)
    alpha = torch.where(cand, alpha, math.nan)
    return alpha, logx, cand


def _finish(x, length, alpha, d, cand, dtype) -> dict[str, torch.Tensor]:
    d = torch.where(cand & torch.isinf(alpha), 1.0, d)
    d = torch.where(cand, d, math.inf)
    best = torch.argmin(d, dim=1)
    has = length >= 2
    best = torch.where(has, best, -1)
    safe = best.clamp(min=0)[:, None]
    out_dtype = dtype if dtype == torch.float64 else torch.float32
    nan = torch.full_like(safe, math.nan, dtype=out_dtype)[:, 0]
    return {
        "sorted": x.to(out_dtype),
        "alpha": alpha.to(out_dtype),
        "D": d.to(out_dtype),
        "best": best,
        "xmin": torch.where(has, x.gather(1, safe)[:, 0].to(out_dtype), nan),
        "alpha_best": torch.where(has, alpha.gather(1, safe)[:, 0].to(out_dtype), nan),
        "D_best": torch.where(has, d.gather(1, safe)[:, 0].to(out_dtype), math.inf),
    }


def powerlaw_scan_torch(evals: torch.Tensor, lengths: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None, tile: int = 1 << 18) -> dict[str, torch.Tensor]:
    """Reference scan in float64 (see the module docstring for the formulas and the convention).

    evals [R, n] (any order; or [n]); lengths [R] (entries at positions >= lengths[r] are ignored)
    and/or mask [R, n] (False = ignored); non-positive and non-finite entries are ignored as well.
    Returns a dict of tensors: ``sorted`` [R, n] (the valid eigenvalues ascending, then +inf),
    ``alpha`` [R, n] and ``D`` [R, n] per candidate index into ``sorted`` (nan / inf where i is not a
    candidate), ``best`` [R] (argmin of D, -1 for rows with < 2 valid values), ``xmin``,
    ``alpha_best``, ``D_best`` [R]. Float64 in, float64 out; otherwise float32 out.

    Candidates are taken in blocks [i0, i0 + c) against the columns j >= i0 only (the upper
    triangle), with c chosen so a [R, c, n - i0] work tile has about ``tile`` entries and stays in
    cache while it is updated in place. Masking is by clamping: exp(min(e (ln l_j - ln l_i), 0)) and
    S clamped to [0, 1] give |F - S| = 0 for j < i, and ln l_j = +inf beyond a row's length gives
    F = S = 1 there.
    """
    dtype = evals.dtype
    x, length = _prepare(evals, lengths, mask)
    alpha, logx, cand = _alpha(x, length)
    r, n = x.shape
    idx = torch.arange(n, device=x.device)
    lx = logx.masked_fill(idx[None, :] >= length[:, None], math.inf)
    expo = 1 - torch.where(torch.isfinite(alpha), alpha, 2.0)  # 1 - alpha <= 0; finite stand-in
    inv_n = 1 / (length[:, None] - idx[None, :]).clamp(min=1).double()
    d = torch.empty(r, n, dtype=torch.float64, device=x.device)
    i0 = 0
    while i0 < n:
        c = max(1, min(n - i0, tile // max(1, r * (n - i0))))
        block = slice(i0, i0 + c)
        t = lx[:, None, i0:] - lx[:, block, None]  # ln(l_j / l_i), [R, c, n - i0]
        t.mul_(expo[:, block, None]).clamp_(max=0.0).exp_()  # 1 - F_i(l_j)
        steps = (idx[None, None, i0:] - idx[None, block, None]).double()
        emp = steps.mul(inv_n[:, block, None]).clamp_(0.0, 1.0)  # S_i(j)
        d[:, block] = t.add_(emp).sub_(1.0).abs_().amax(2)
        i0 += c
    return _finish(x, length, alpha, d, cand, dtype)


if HAS_TRITON:

    def _ks_kernel(
        logx_ptr, expo_ptr, len_ptr, d_ptr,
        slr, ser, sdr,
        BI: tl.constexpr, BJ: tl.constexpr,
    ):
        r = tl.program_id(0)
        ib = tl.program_id(1)
        length = tl.load(len_ptr + r).to(tl.int32)
        ri = ib * BI + tl.arange(0, BI)
        cand = ri < length - 1
        lxi = tl.load(logx_ptr + r * slr + ri, mask=cand, other=0.0)
        e = tl.load(expo_ptr + r * ser + ri, mask=cand, other=0.0)
        inv_n = 1.0 / tl.maximum(length - ri, 1).to(tl.float32)
        dmax = tl.zeros((BI,), dtype=tl.float32)
        for j0 in range(ib * BI, length, BJ):
            rj = j0 + tl.arange(0, BJ)
            lxj = tl.load(logx_ptr + r * slr + rj, mask=rj < length, other=0.0)
            # (l_j/l_i)^(1-alpha) <= 1 on the tail; clamp so masked j < i cannot overflow
            fit = 1.0 - tl.exp(tl.minimum(e[:, None] * (lxj[None, :] - lxi[:, None]), 0.0))
            emp = (rj[None, :] - ri[:, None]).to(tl.float32) * inv_n[:, None]
            ok = (rj[None, :] >= ri[:, None]) & (rj[None, :] < length)
            diff = tl.where(ok, tl.abs(fit - emp), 0.0)
            dmax = tl.maximum(dmax, tl.max(diff, 1))
        tl.store(d_ptr + r * sdr + ri, dmax, mask=cand)


def powerlaw_scan_triton(evals: torch.Tensor, lengths: torch.Tensor | None = None,
                         mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Triton scan: same contract as ``powerlaw_scan_torch``; the KS part runs in fp32."""
    dtype = evals.dtype
    x, length = _prepare(evals, lengths, mask)
    alpha, logx, cand = _alpha(x, length)
    r, n = x.shape
    expo = (1 - torch.where(torch.isfinite(alpha), alpha, 2.0)).float().contiguous()
    logx32 = logx.float().contiguous()
    d = torch.zeros(r, n, dtype=torch.float32, device=x.device)
    if r and n > 1:
        bi, bj = (16, 64) if interpreting() else (64, 128)
        len32 = length.to(torch.int32).contiguous()
        jit(_ks_kernel)[(r, cdiv(n, bi))](logx32, expo, len32, d, logx32.stride(0), expo.stride(0),
                                          d.stride(0), BI=bi, BJ=bj)
    return _finish(x, length, alpha, d.double(), cand, dtype)
