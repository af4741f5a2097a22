"""Loss-Hessian spectra of a whole population at once: top eigenvalues, trace, density.

The reference zoo (Schürholt et al. 2025) measures sharpness with PyHessian (Yao et al. 2020,
"PyHessian: Neural Networks Through the Lens of the Hessian"): the top eigenvalue by power
iteration (<= 100 iterations, relative tolerance 1e-3) and the trace by Hutchinson's estimator
(Rademacher probes, <= 100, tolerance 1e-3) on 10 batches of 64 training samples, one model at a
time. Here the same algorithms run for M stacked models in lockstep.

The Hessian is that of each model's training loss w.r.t. its trainable parameters only
(buffers fixed, model in eval mode so BatchNorm uses its running statistics, as PyHessian does):

    L_i(theta_i) = (1/N) sum_n loss(f(theta_i, x_n), y_n)       over all N samples of all batches,
    H_i = d^2 L_i / d theta_i^2.

PyHessian's ``dataloader_hv_product`` averages the per-batch Hessian-vector products of the batch
mean losses weighted by batch size, sum_b (n_b / N) H_b v, which is exactly H v of the mean loss over
all N samples; so the batches are concatenated (and optionally re-chunked to bound memory).

Hessian-vector products use double backward on the summed losses sum_i L_i: the models share no
parameters, so d/d theta_i of sum_j L_j is model i's own gradient and one backward pass of
<grad, v> gives every model's H_i v_i. The gradient graph is built once and kept
(``retain_graph``), so each HVP is one backward pass; when enough models have converged the graph is
rebuilt for the still-active models only. Measured on CPU (1 thread, 32 MLPs 40-32-32-10, 640
samples): cached double backward 19 ms per HVP, double backward rebuilding the graph 33 ms,
``vmap(jvp(grad))`` (forward-over-reverse) 38 ms, several vectors at once (``is_grads_batched``)
25-36 ms per vector; hence the cached double backward.

Probes come from ``torch.Generator``s seeded with ``seed`` and are drawn parameter by parameter in
``params`` order with the same calls as PyHessian (``randn`` for power iteration, ``randint(0, 2)``
mapped to +-1 for Hutchinson and SLQ), so ``torch.manual_seed(seed)`` before a PyHessian call
reproduces our probes exactly. An int seed gives every model the same probes (a model's result
does not depend on the rest of the population); a sequence gives each model its own stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from zoo.functional import make_forward, mode

from .base import Measured, Metric, Population

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]

# PyHessian's guard in the relative-change tests: |a - b| / (|b| + 1e-6) < tol.
_REL_EPS = 1e-6


def cross_entropy_per_sample(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy [m, B] of logits [m, B, C] against shared labels y [B]."""
    logp = torch.log_softmax(outputs, dim=-1)
    return -logp.gather(-1, y.expand(outputs.shape[0], -1).unsqueeze(-1)).squeeze(-1)


class TopEigen(NamedTuple):
    values: torch.Tensor  # [M, k] float64, dominant first; NaN for a model with a non-finite loss
    iterations: torch.Tensor  # [M, k] int64, HVPs used per eigenvalue
    converged: torch.Tensor  # [M, k] bool, relative change < tol within max_iter
    vectors: torch.Tensor  # [M, k, P] unit eigenvector estimates (flat, params order)


class TraceEstimate(NamedTuple):
    value: torch.Tensor  # [M] float64, mean of v^T H v over the probes used
    iterations: torch.Tensor  # [M] int64, probes used
    converged: torch.Tensor  # [M] bool




class PopulationHessian:
    """H_i v_i for M stacked models, on flat vectors [m, P] over the trainable parameters.

    ``focus(mask)`` restricts the operator to a subset of models (``idx``); calls then take and
    return vectors for those models only. With ``cache=True`` the gradient graph of the focused
    models is built once and reused by every product (one backward pass per HVP); with
    ``cache=False`` each product recomputes forward and gradient chunk by chunk (PyHessian's
    memory footprint). The template ``model`` must be in the mode wanted (eval) while in use.
    ``loss(outputs [m, B, ...], y [B, ...]) -> [m, B]`` gives per-sample losses (default:
    cross-entropy on logits); ``chunk`` bounds the samples per forward pass.
    """

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 batches: Batches, loss: Loss | None = None, chunk: int | None = None, cache: bool = True):
        self.model, self.loss, self.cache = model, loss or cross_entropy_per_sample, cache
        self.forward = make_forward(model, kernels=False)  # double backward in the model's dtype
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        self.names = list(self.params)
        first = self.params[self.names[0]]
        self.m, self.dtype = first.shape[0], first.dtype
        self.shapes = [tuple(self.params[n].shape[1:]) for n in self.names]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.dim = sum(self.sizes)
        xs = [torch.as_tensor(x) for x, _ in batches]
        ys = [torch.as_tensor(y) for _, y in batches]
        if not xs:
            raise ValueError("batches is empty: pass at least one (x, y) batch")
        x, y = torch.cat(xs), torch.cat(ys)
        if x.is_floating_point():
            x = x.to(self.dtype)
        self.n = x.shape[0]
        step = chunk or self.n
        self.chunks = [(x[i:i + step], y[i:i + step]) for i in range(0, self.n, step)]
        self.idx = torch.arange(self.m)
        self._graph: list | None = None
        self.ok = self._finite_models()

    # -- flat <-> per-parameter --------------------------------------------------------------
    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(v.shape[0], *s) for t, s in zip(v.split(self.sizes, dim=1), self.shapes)]

    def flat(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)

    # -- graph -----------------------------------------------------------------------------
    def _gradients(self, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """(leaf params, grads with graph, per-model chunk loss) for models ``idx`` on one chunk."""
        p = {n: self.params[n][idx].requires_grad_() for n in self.names}
        b = {n: t[idx] for n, t in self.buffers.items()}
        out = self.forward(p, b, x.expand(len(idx), *x.shape))
        losses = self.loss(out, y).sum(1) / self.n  # [m]: this chunk's share of the mean loss
        leaves = [p[n] for n in self.names]
        grads = torch.autograd.grad(losses.sum(), leaves, create_graph=True, allow_unused=True)
        return leaves, list(grads), losses.detach()

    def _finite_models(self) -> torch.Tensor:
        """[M] bool: loss and gradient finite (a non-finite model gets NaN metrics, alone)."""
        ok = torch.ones(self.m, dtype=torch.bool)
        graph = []
        for x, y in self.chunks:
            leaves, grads, loss = self._gradients(self.idx, x, y)
            ok &= loss.isfinite()
            for g in grads:
                if g is not None:
                    ok &= g.detach().reshape(self.m, -1).isfinite().all(1)
            graph.append((leaves, grads))
        self._graph = graph if self.cache else None
        return ok

    def focus(self, mask: torch.Tensor, shrink: float = 0.75) -> None:
        """Make the operator cover at least the models in ``mask`` [M]; drop the rest when they
        are at most ``shrink`` of the current set (a rebuild costs about one gradient)."""
        want = mask.nonzero().flatten()
        if torch.isin(want, self.idx).all() and (len(want) > shrink * len(self.idx) or len(want) == 0):
            return
        self.idx = want
        if self.cache:
            self._graph = [self._gradients(want, x, y)[:2] for x, y in self.chunks] if len(want) else None

    # -- product ---------------------------------------------------------------------------
    def _product(self, graph, v_parts: list[torch.Tensor]) -> torch.Tensor:
        out = [torch.zeros(len(self.idx), *s, dtype=self.dtype) for s in self.shapes]
        for leaves, grads in graph:
            keep = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            if not keep:
                continue
            hv = torch.autograd.grad([grads[i] for i in keep], leaves,
                                     grad_outputs=[v_parts[i] for i in keep],
                                     retain_graph=self.cache, allow_unused=True)
            for i, h in enumerate(hv):
                if h is not None:
                    out[i] += h
        return self.flat(out)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v for the focused models: v [len(idx), P] -> [len(idx), P]."""
        if len(self.idx) == 0:
            return v.clone()
        v_parts = self.split(v.to(self.dtype))
        if self.cache:
            return self._product(self._graph, v_parts)
        total = torch.zeros(len(self.idx), self.dim, dtype=self.dtype)
        for x, y in self.chunks:
            total += self._product([self._gradients(self.idx, x, y)[:2]], v_parts)
        return total


# -- probes and vector helpers ------------------------------------------------------------------

def _generators(seed: int | Sequence[int], m: int) -> list[torch.Generator]:
    seeds = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    if len(seeds) not in (1, m):
        raise ValueError(f"seed must be an int or one seed per model ({m}), got {len(seeds)}")
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _probe(op: PopulationHessian, gens: list[torch.Generator], kind: str) -> torch.Tensor:
    """[M, P] probes drawn per parameter like PyHessian: 'normal' (randn) or 'rademacher' (+-1)."""
    def one(g):
        if kind == "normal":
            parts = [torch.randn(s, generator=g, dtype=op.dtype) for s in op.shapes]
        else:
            parts = [torch.randint(0, 2, s, generator=g, dtype=op.dtype) * 2 - 1 for s in op.shapes]
        return torch.cat([p.reshape(-1) for p in parts])
    vs = [one(g) for g in gens]
    return vs[0].expand(op.m, -1).clone() if len(vs) == 1 else torch.stack(vs)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (a zero row stays zero)."""
    return v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _orthonormal(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w [m, P] made orthogonal to the rows of basis [m, j, P] (Gram-Schmidt twice), normalised."""
    if basis.shape[1]:
        for _ in range(2):
            w = w - torch.einsum("mj,mjp->mp", torch.einsum("mjp,mp->mj", basis, w), basis)
    return _normalize(w)


def _rel_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return (new - old).abs() / (old.abs() + _REL_EPS)


# -- algorithms ---------------------------------------------------------------------------------

def _top_eigenvalues(op: PopulationHessian, k: int, max_iter: int, tol: float,
                     seed: int | Sequence[int]) -> TopEigen:
    m, gens = op.m, _generators(seed, op.m)
    values = torch.full((m, k), float("nan"), dtype=torch.float64)
    iters = torch.zeros(m, k, dtype=torch.int64)
    conv = torch.zeros(m, k, dtype=torch.bool)
    vecs = torch.zeros(m, k, op.dim, dtype=op.dtype)
    for j in range(k):
        v = _normalize(_probe(op, gens, "normal"))
        eig = torch.full((m,), float("nan"), dtype=torch.float64)
        active = op.ok.clone()
        for i in range(max_iter):
            if not active.any():
                break
            op.focus(active)
            idx = op.idx
            vs = _orthonormal(v[idx], vecs[idx, :j])
            hv = op(vs)
            rayleigh = (hv * vs).sum(1).double()
            a = active[idx]
            fin = a & rayleigh.isfinite() & hv.isfinite().all(1)
            done = fin & (_rel_change(rayleigh, eig[idx]) < tol) if i > 0 else torch.zeros_like(a)
            iters[idx[a], j] += 1
            upd = idx[fin]
            eig[upd] = rayleigh[fin]
            v[upd] = _normalize(hv[fin])
            eig[idx[a & ~fin]] = float("nan")
            conv[idx[done], j] = True
            active[idx[done | (a & ~fin)]] = False
        values[:, j] = eig
        vecs[:, j] = v
    bad = ~op.ok
    values[bad], conv[bad] = float("nan"), False
    return TopEigen(values, iters, conv, vecs)


def _trace(op: PopulationHessian, max_iter: int, tol: float, seed: int | Sequence[int]) -> TraceEstimate:
    m, gens = op.m, _generators(seed, op.m)
    total = torch.zeros(m, dtype=torch.float64)
    count = torch.zeros(m, dtype=torch.int64)
    mean = torch.zeros(m, dtype=torch.float64)  # PyHessian starts its running mean at 0
    conv = torch.zeros(m, dtype=torch.bool)
    failed = ~op.ok
    active = op.ok.clone()
    for _ in range(max_iter):
        if not active.any():
            break
        z = _probe(op, gens, "rademacher")  # drawn every step for all, so streams stay aligned
        op.focus(active)
        idx = op.idx
        vhv = (op(z[idx]) * z[idx]).sum(1).double()
        a = active[idx]
        fin = a & vhv.isfinite()
        total[idx[fin]] += vhv[fin]
        count[idx[a]] += 1
        new = total[idx] / count[idx].clamp_min(1)
        done = fin & (_rel_change(new, mean[idx]) < tol)
        mean[idx[fin]] = new[fin]
        conv[idx[done]] = True
        failed[idx[a & ~fin]] = True
        active[idx[done | (a & ~fin)]] = False
    mean[failed] = float("nan")
    conv[failed] = False
    return TraceEstimate(mean, count, conv)


def _density(op: PopulationHessian, n_iter: int, n_v: int,
             seed: int | Sequence[int]) -> dict[str, torch.Tensor]:
    m, gens = op.m, _generators(seed, op.m)
    n_iter = max(1, min(n_iter, op.dim))
    ritz = torch.full((m, n_v, n_iter), float("nan"), dtype=torch.float64)
    weights = torch.full((m, n_v, n_iter), float("nan"), dtype=torch.float64)
    op.focus(op.ok)
    idx = op.idx
    if len(idx):
        for r in range(n_v):
            basis = torch.zeros(len(idx), n_iter, op.dim, dtype=op.dtype)
            alpha = torch.zeros(len(idx), n_iter, dtype=torch.float64)
            beta = torch.zeros(len(idx), n_iter - 1, dtype=torch.float64)
            v = _normalize(_probe(op, gens, "rademacher")[idx])
            basis[:, 0] = v
            w_prime = op(v)
            alpha[:, 0] = (w_prime * v).sum(1).double()
            w = w_prime - alpha[:, :1].to(op.dtype) * v
            for i in range(1, n_iter):
                restart = _probe(op, gens, "normal")[idx]  # drawn every step: streams stay aligned
                b = w.norm(dim=1)
                beta[:, i - 1] = b.double()
                broke = b <= 1e-7 * alpha[:, :i].abs().amax(1).to(op.dtype).clamp_min(1e-30)
                v = _orthonormal(torch.where(broke[:, None], restart, w), basis[:, :i])
                basis[:, i] = v
                w_prime = op(v)
                alpha[:, i] = (w_prime * v).sum(1).double()
                w = w_prime - alpha[:, i:i + 1].to(op.dtype) * v - b[:, None] * basis[:, i - 1]
            tri = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
            fin = tri.isfinite().all(2).all(1)
            theta, vecs = torch.linalg.eigh(torch.where(fin[:, None, None], tri, torch.zeros_like(tri)))
            ritz[idx[fin], r] = theta[fin]
            weights[idx[fin], r] = vecs[fin, 0, :] ** 2
    # Zero-curvature directions (dead units, the softmax shift) give Ritz values of +-rounding:
    # only theta below -100 eps(dtype) max|theta| counts as negative.
    floor = 100 * torch.finfo(op.dtype).eps * ritz.abs().amax((1, 2), keepdim=True)
    neg = torch.where(ritz < -floor, weights, torch.zeros_like(weights)).sum(2).mean(1)
    neg[~torch.isfinite(ritz).all(2).all(1)] = float("nan")
    return {"hessian.ritz_values": ritz, "hessian.ritz_weights": weights, "hessian.negative_mass": neg,
            "hessian.ritz_min": ritz.amin((1, 2)), "hessian.ritz_max": ritz.amax((1, 2))}


# -- public API ---------------------------------------------------------------------------------

def hvp(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], batches: Batches,
        v: dict[str, torch.Tensor], loss: Loss | None = None) -> dict[str, torch.Tensor]:
    """H_i v_i per model: v and the result are dicts name -> [M, *shape] over the trainable params.

    H_i is the Hessian of model i's mean loss over all samples of ``batches`` (a list of (x [B, ...],
    y [B]) shared by all models), which equals PyHessian's batch-size weighted average of per-batch
    HVPs. A model with a non-finite loss gets NaN only in its own rows.
    """
    with mode(model):
        op = PopulationHessian(model, params, buffers, batches, loss, cache=False)
        out = op(op.flat([v[n] for n in op.names]))
    return dict(zip(op.names, op.split(out)))


def top_eigenvalues(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                    batches: Batches, k: int = 1, max_iter: int = 100, tol: float = 1e-3,
                    seed: int | Sequence[int] = 0, loss: Loss | None = None,
                    chunk: int | None = None) -> TopEigen:
    """The k dominant Hessian eigenvalues per model by power iteration with deflation (PyHessian).

    For eigenvalue j: v <- randn, normalised; repeat v <- orth(v; u_1..u_{j-1}), lambda = v^T H v,
    v <- Hv / |Hv| until |lambda_t - lambda_{t-1}| / (|lambda_{t-1}| + 1e-6) < tol or max_iter HVPs.
    Models iterate in lockstep; a converged one is frozen (masked) and dropped from the graph once
    a quarter of the graph's models have stopped. Returns the latest Rayleigh quotient (PyHessian
    returns the one before; they differ by less than tol relatively). Power iteration finds the
    eigenvalues of largest |lambda|.
    """
    with mode(model):
        op = PopulationHessian(model, params, buffers, batches, loss, chunk)
        return _top_eigenvalues(op, k, max_iter, tol, seed)


def trace(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
          batches: Batches, max_iter: int = 100, tol: float = 1e-3, seed: int | Sequence[int] = 0,
          loss: Loss | None = None, chunk: int | None = None) -> TraceEstimate:
    """Hutchinson's trace estimate tr(H) ~ mean_t z_t^T H z_t with Rademacher z_t (PyHessian).

    Stops a model when the running mean changes by less than tol relatively,
    |mean_t - mean_{t-1}| / (|mean_{t-1}| + 1e-6) < tol (mean_0 = 0), or after max_iter probes.
    PyHessian divides by (mean_{t-1} + 1e-6) without the absolute value, which stops at the second
    probe whenever the running mean is negative; here |.| is used, identical for positive traces.
    """
    with mode(model):
        op = PopulationHessian(model, params, buffers, batches, loss, chunk)
        return _trace(op, max_iter, tol, seed)


def density(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
            batches: Batches, n_iter: int = 20, n_v: int = 1, seed: int | Sequence[int] = 0,
            loss: Loss | None = None, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Stochastic Lanczos quadrature of the Hessian spectral density (PyHessian's ``density``).

    n_v runs of n_iter Lanczos steps with full reorthogonalisation from a normalised Rademacher
    vector v; the tridiagonal T = Q^T H Q gives Ritz values theta_j (eigenvalues of T) and weights
    w_j = (e_1^T u_j)^2, so that v^T f(H) v ~ sum_j w_j f(theta_j). Returns
    "hessian.ritz_values" and "hessian.ritz_weights" [M, n_v, n_iter], "hessian.negative_mass" [M]
    (mean over runs of the weights with theta < -100 eps max|theta|: the fraction of negative
    eigen-mass, rounding-level values around zero excluded),
    "hessian.ritz_min" / "hessian.ritz_max" [M]. (PyHessian's own ``density`` calls ``torch.eig``,
    removed from current PyTorch, so dense Hessians are its test reference.)
    """
    with mode(model):
        op = PopulationHessian(model, params, buffers, batches, loss, chunk)
        return _density(op, n_iter, n_v, seed)


def hessian_metrics(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                    batches: Batches, top_k: int = 1, max_iter: int = 100, tol: float = 1e-3,
                    seed: int | Sequence[int] = 0, density: bool = False, *, density_iter: int = 20,
                    density_n_v: int = 1, loss: Loss | None = None,
                    chunk: int | None = None) -> dict[str, np.ndarray]:
    """Hessian summaries of M stacked models (the reference zoo's protocol by default).

    Keys (numpy): "hessian.top_eig" [M] (dominant eigenvalue), "hessian.top_eigs" [M, top_k],
    "hessian.eig_iters" [M, top_k], "hessian.eig_converged" [M, top_k], "hessian.trace" [M],
    "hessian.trace_iters" [M], "hessian.trace_converged" [M]; with ``density`` also the SLQ keys
    of :func:`density`. A model whose loss or gradient is not finite gets NaN values and
    converged False; the rest of the population is unaffected.
    """
    with mode(model):
        op = PopulationHessian(model, params, buffers, batches, loss, chunk)
        eig = _top_eigenvalues(op, top_k, max_iter, tol, seed)
        tr = _trace(op, max_iter, tol, seed)
        out = {"hessian.top_eig": eig.values[:, 0], "hessian.top_eigs": eig.values,
               "hessian.eig_iters": eig.iterations, "hessian.eig_converged": eig.converged,
               "hessian.trace": tr.value, "hessian.trace_iters": tr.iterations,
               "hessian.trace_converged": tr.converged}
        if density:
            out.update(_density(op, density_iter, density_n_v, seed))
    return {k: v.numpy() for k, v in out.items()}


def _per_sample_loss(kind: str) -> Loss | None:
    """The task's per-sample loss: cross-entropy (None: this module's) or squared error."""
    if kind == "classification":
        return None
    return lambda out, y: (out - y).pow(2).flatten(2).mean(2)


def hessian_columns(model: nn.Module, params, buffers, data, spec) -> dict[str, np.ndarray]:
    """Top eigenvalue(s), trace and (optionally) SLQ summary on the first
    hessian_batches x hessian_batch_size training samples: {column: [M]}."""
    n = min(spec.hessian_batches * spec.hessian_batch_size, len(data.x_train))
    x, y = torch.as_tensor(data.x_train[:n]), torch.as_tensor(data.y_train[:n])
    batches = [(x[i:i + spec.hessian_batch_size], y[i:i + spec.hessian_batch_size])
               for i in range(0, n, spec.hessian_batch_size)]
    out = hessian_metrics(model, params, buffers, batches, top_k=spec.hessian_top_k,
                          max_iter=spec.hessian_max_iter, tol=spec.hessian_tol, seed=0,
                          density=spec.hessian_density, loss=_per_sample_loss(data.kind))
    cols = {}
    for k, v in out.items():
        v = np.asarray(v, dtype=np.float64)
        if v.ndim == 1:
            cols[k] = v
        elif k == "hessian.top_eigs" and v.shape[1] > 1:
            cols.update({f"hessian.eig_{i + 1}": v[:, i] for i in range(v.shape[1])})
        elif k in ("hessian.eig_iters", "hessian.eig_converged"):
            cols[k] = v[:, 0]
    return cols


def measure(pop: Population, spec) -> Measured:
    """The Hessian columns of the final weights; with ``hessian_checkpoints`` also the top
    eigenvalue and trace at every checkpoint (checkpoint rows)."""
    params, buffers = pop.final
    cols = hessian_columns(pop.model, params, buffers, pop.data, spec)
    result = Measured(per_model={k: pop.spread(v) for k, v in cols.items()})
    if spec.hessian_checkpoints:  # sharpness along training
        sharp = {name: np.full((len(pop.steps), pop.m), np.nan) for name in ("hessian.top_eig", "hessian.trace")}
        for k in range(len(pop.steps)):
            ok = pop.healthy[np.isfinite(pop.weights[k][pop.healthy]).all(1)]
            if len(ok):
                cols = hessian_columns(pop.model, *pop.state(k, ok), pop.data, spec)
                for name in sharp:
                    sharp[name][k, ok] = cols[name]
        result.per_checkpoint = sharp
    return result


METRIC = Metric(
    name="hessian",
    group="landscape", applies_to="model", compute=measure, kinds=("classification", "regression"),
    protocol="reference zoo protocol: 10 batches × 64 samples, ≤ 100 iterations, rel. tol. 1e-3, k = 1; "
             "optional SLQ density",
    about="sharpness of the training loss: Hessian top eigenvalue and trace (PyHessian's protocol)",
    columns={
        "hessian.top_eig / hessian.trace": "top eigenvalue (power iteration) and trace (Hutchinson, Rademacher "
                                           "probes) of the training-loss Hessian at the final weights, on the first "
                                           "metrics.hessian_batches x hessian_batch_size training samples",
        "hessian.eig_<k>": "the k-th largest eigenvalue (with metrics.hessian_top_k > 1)",
        "hessian.*_iters / *_converged": "iterations used and whether the relative tolerance was met",
        "hessian.ritz_min / ritz_max / negative_mass": "stochastic Lanczos quadrature summary: extreme Ritz "
                                                       "values and the density's negative mass "
                                                       "(with metrics.hessian_density)",
    })

__all__ = ["METRIC", "PopulationHessian", "TopEigen", "TraceEstimate", "cross_entropy_per_sample", "density",
           "hessian_columns", "hessian_metrics", "hvp", "measure", "top_eigenvalues", "trace"]
