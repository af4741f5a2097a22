"""Mode connectivity of model pairs: linear-path curves and barriers, and Bezier-curve mc.

All K pairs of a population are one batch: the T points of every path are K x T states scored in
one batched forward per data chunk (``paths.evaluate_line``/``evaluate_path``: for Linear stacks
the points are mixed inside the GEMMs by ``kernels.interp_linear``, otherwise stacked states), and
the K Bezier bends train together as one [K, ...] parameter set (one forward + autograd per step).

Linear paths: ``curve.<split>.<metric>`` [K, T] at T evenly spaced t, and the barrier variants of
``paths`` (``barrier_max``, ``barrier_lin``, ``barrier_mid``; positive = a barrier).

Bezier mode connectivity (Garipov et al. 2018; as in Yang et al. 2021 and the phase-transition zoo):
phi(t) = (1-t)^2 w0 + 2t(1-t) theta + t^2 w1, the bend theta initialised at the midpoint (w0+w1)/2
and trained with the task's optimizer (SGD with momentum or Adam, the pair's lr), t ~ U(0, 1)
drawn per step and per pair. Evaluated at ``n_points`` evenly spaced t with BatchNorm statistics
re-estimated at each point, then

    mc = (v(0) + v(1)) / 2 - v(t*),   t* = argmax over interior points of |v(t) - (v(0) + v(1)) / 2|

Sign convention (Yang et al. 2021 and the reference zoo, as in REFERENCES.md): mc < 0 means a
barrier along the best curve found (poorly connected), mc > 0 a curve that dips below its endpoints
(a "hidden" valley), mc ~ 0 a flat, well connected path. Note the opposite sign to the linear
``barrier_*`` columns. Endpoints are left out of the argmax: there |v(t) - mean| is only half the
endpoint difference, not a property of the path.

Randomness: each pair (i, j) draws its t's and minibatches from its own stream, seeded by
(seed, i, j), so a pair's bend is the same whether it trains alone or with any other pairs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..functional import make_forward
from ..kernels import bezier_coeffs
from .paths import (
    barrier_variants,
    batch_statistics,
    curves,
    evaluate_line,
    evaluate_path,
    evaluate_states,
    fused_paths,
    has_batchnorm,
    interpolation_points,
    path_forward,
)

Tensor = torch.Tensor

BN_RESET_SIZE = 1024  # training samples that re-estimate BatchNorm statistics when none are given


def _side(state: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    return {k: v.index_select(0, idx.to(v.device)) for k, v in state.items()}


def _pairs(pairs) -> Tensor:
    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be [K, 2] model indices, got {tuple(pairs.shape)}")
    return pairs


def linear_connectivity(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor],
                        pairs: Tensor, splits: dict, n_points: int = 11,
                        bn_reset_x: Tensor | None = None) -> dict[str, np.ndarray]:
    """Curves [K, T] and barrier variants [K] of the straight paths between the K pairs.

    Keys: ``curve.<split>.<metric>`` and ``barrier_<max|lin|mid>.<split>.<metric>``. Buffers are
    interpolated too; ``bn_reset_x`` re-estimates BatchNorm statistics at every point instead.
    """
    pairs = _pairs(pairs)
    ts = interpolation_points(n_points)
    a, b = pairs[:, 0], pairs[:, 1]
    values = curves(evaluate_line(model, objective, _side(params, a), _side(params, b), _side(buffers, a),
                                  _side(buffers, b), ts, splits, bn_reset_x), len(pairs), n_points)
    out = {f"curve.{k}": v for k, v in values.items()}
    for k, v in values.items():
        out.update({f"barrier_{variant}.{k}": b for variant, b in barrier_variants(v, ts.numpy()).items()})
    return out


def bezier_states(w0: dict[str, Tensor], bend: dict[str, Tensor], w1: dict[str, Tensor], t: Tensor
                  ) -> dict[str, Tensor]:
    """phi(t) for per-state t [K] (one point per stacked state) -> stacked [K, ...]."""
    out = {}
    for name, v0 in w0.items():
        tt = t.to(v0).view(-1, *[1] * (v0.dim() - 1))
        out[name] = (1 - tt) ** 2 * v0 + 2 * tt * (1 - tt) * bend[name] + tt ** 2 * w1[name]
    return out


def mode_connectivity(curve: np.ndarray) -> np.ndarray:
    """mc [K] of curves [K, T >= 3] (module docstring convention: mc < 0 is a barrier)."""
    v = np.asarray(curve, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] < 3:
        raise ValueError(f"mc needs curves [K, T >= 3] (an interior point), got {v.shape}")
    ends = (v[:, 0] + v[:, -1]) / 2
    inner = v[:, 1:-1]
    star = np.abs(inner - ends[:, None]).argmax(1)
    return ends - inner[np.arange(len(v)), star]


def _pair_draws(pairs: Tensor, n: int, steps: int, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Per-pair t [K, steps] and minibatch indices [K, steps, B], each pair from its own stream."""
    ts, idx = [], []
    for i, j in pairs.tolist():
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i, j]).generate_state(1)[0]))
        ts.append(torch.rand(steps, generator=g, dtype=torch.float64))
        idx.append(torch.randint(0, n, (steps, batch_size), generator=g))
    return torch.stack(ts), torch.stack(idx)


def train_bends(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor], pairs: Tensor,
                train_x: Tensor, train_y: Tensor, steps: int, lr: float | Tensor, optimizer: str = "sgd",
                momentum: float = 0.9, batch_size: int = 64, seed: int = 0,
                betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0) -> dict[str, Tensor]:
    """Train the K bends (one per pair) together -> stacked bends [K, ...].

    ``lr`` is a float or per-pair [K]; the updates are the population trainer's (SGD: buf = mom *
    buf + g, theta -= lr * buf; Adam with bias correction). A pair whose loss or gradient stops
    being finite keeps its last finite bend (as a diverged model is frozen in training).
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be sgd or adam, got {optimizer!r}")
    pairs = _pairs(pairs)
    a, b = pairs[:, 0], pairs[:, 1]
    w0, w1 = _side(params, a), _side(params, b)
    bufs = {k: v.clone() for k, v in _side(buffers, a).items()}
    bend = {k: torch.lerp(w0[k], w1[k], 0.5).detach().clone().requires_grad_(True) for k in w0}
    k_pairs = len(pairs)
    ref = next(iter(bend.values()))
    lr = torch.as_tensor(lr, dtype=ref.dtype, device=ref.device).expand(k_pairs)
    buf = {k: torch.zeros_like(v) for k, v in bend.items()}
    buf2 = {k: torch.zeros_like(v) for k, v in bend.items()} if optimizer == "adam" else None
    t_all, idx_all = _pair_draws(pairs, len(train_x), steps, batch_size, seed)
    t_all, idx_all = t_all.to(ref.device), idx_all.to(train_x.device)
    fused = fused_paths(model, bufs)
    forward = make_forward(model)
    with batch_statistics(model):  # BatchNorm normalises with batch statistics while the bends train
        for step in range(steps):
            idx = idx_all[:, step]
            if fused:  # each pair's point phi(t) mixed inside the GEMMs, one point per pair
                coeffs = bezier_coeffs(t_all[:, step]).unsqueeze(1)  # [K, 1, 3]
                phi, step_forward = {"state": t_all[:, step]}, path_forward(model, [w0, bend, w1], coeffs)
            else:
                phi, step_forward = bezier_states(w0, bend, w1, t_all[:, step]), forward
            loss = objective.batch_loss(step_forward, phi, bufs, train_x[idx], train_y[idx])  # [K]
            grads = torch.autograd.grad(loss.sum(), list(bend.values()))
            with torch.no_grad():
                ok = loss.detach().isfinite()
                for grad in grads:
                    ok &= grad.flatten(1).sum(1).isfinite()
                scale = torch.where(ok, lr, 0.0)
                for (name, p), g in zip(bend.items(), grads, strict=True):
                    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                    if weight_decay:
                        g = g.add(p, alpha=weight_decay)
                    keep = ok.view(-1, *[1] * (p.dim() - 1))
                    if optimizer == "sgd":
                        new = torch.add(g, buf[name], alpha=momentum)
                        update = new
                    else:
                        b1, b2 = betas
                        new = torch.lerp(buf[name], g, 1 - b1)
                        new2 = torch.lerp(buf2[name], g * g, 1 - b2)
                        update = (new / (1 - b1 ** (step + 1))) / (new2 / (1 - b2 ** (step + 1))).sqrt().add(1e-8)
                        buf2[name] = torch.where(keep, new2, buf2[name])
                    buf[name] = torch.where(keep, new, buf[name])
                    p.sub_(scale.view_as(keep) * update)
    return {k: v.detach() for k, v in bend.items()}


def bezier_connectivity(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor],
                        pairs: Tensor, splits: dict, train_x: Tensor, train_y: Tensor, steps: int = 200,
                        lr: float | Tensor = 0.01, optimizer: str = "sgd", momentum: float = 0.9,
                        batch_size: int = 64, n_points: int = 11, seed: int = 0,
                        bn_reset_x: Tensor | None = None, weight_decay: float = 0.0) -> dict[str, np.ndarray]:
    """Train a Bezier bend per pair, evaluate its curve: ``mc.<split>.<metric>`` [K] and
    ``bezier_curve.<split>.<metric>`` [K, T].

    BatchNorm statistics are re-estimated at every evaluated point on ``bn_reset_x``, by default
    the first ``BN_RESET_SIZE`` training samples (the endpoints' statistics do not fit the bend).
    """
    pairs = _pairs(pairs)
    bend = train_bends(model, objective, params, buffers, pairs, train_x, train_y, steps, lr, optimizer,
                       momentum, batch_size, seed, weight_decay=weight_decay)
    if bn_reset_x is None and has_batchnorm(model):
        bn_reset_x = train_x[:BN_RESET_SIZE]
    a, b = pairs[:, 0], pairs[:, 1]
    w0, w1 = _side(params, a), _side(params, b)
    ts = interpolation_points(n_points)
    k = len(pairs)
    if fused_paths(model, buffers):
        values = curves(evaluate_path(model, objective, [w0, bend, w1], bezier_coeffs(ts), splits), k, n_points)
    else:
        grid_t = ts.repeat(k)  # pair-major, like paths.interpolate
        rep = lambda s: {n: v.repeat_interleave(n_points, 0) for n, v in s.items()}  # noqa: E731
        states = bezier_states(rep(w0), rep(bend), rep(w1), grid_t)
        bufs = rep(_side(buffers, a))
        values = curves(evaluate_states(model, objective, states, bufs, splits, bn_reset_x), k, n_points)
    out = {f"bezier_curve.{name}": v for name, v in values.items()}
    out.update({f"mc.{name}": mode_connectivity(v) for name, v in values.items()})
    return out


__all__ = ["bezier_connectivity", "bezier_states", "linear_connectivity", "mode_connectivity", "train_bends"]
