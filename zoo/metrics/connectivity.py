"""Mode connectivity of model pairs: linear-path curves and barriers, and Bezier-curve mc.

All K pairs of a population are one batch: the T points of every path are K x T stacked states
scored by ``paths.evaluate_states`` (one vmapped/batched forward per data chunk), and the K Bezier
bends train together as one [K, ...] parameter set.

Bezier mode connectivity (Garipov et al. 2018; as in Yang et al. 2021 and the reference zoo):
phi(t) = (1-t)^2 w0 + 2t(1-t) theta + t^2 w1, theta initialised at the midpoint and trained with
t ~ U(0, 1) drawn per step and per pair, using the task's optimizer. Evaluated at ``n_points``
evenly spaced t with BatchNorm statistics re-estimated at each point, then

    mc = (v(0) + v(1)) / 2 - v(t*),   t* = argmax over interior points of |v(t) - (v(0) + v(1)) / 2|

Sign convention (the reference zoo's): mc < 0 means a barrier along the best curve found, mc > 0
a curve that dips below its endpoints, mc ~ 0 a flat, well connected path. Endpoints are left out
of the argmax: there |v(t) - mean| is only half the endpoint difference, not a property of the path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..functional import make_forward
from .paths import barrier_variants, curves, evaluate_states, interpolate, interpolation_points

Tensor = torch.Tensor


def _side(state: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    return {k: v.index_select(0, idx) for k, v in state.items()}


def linear_connectivity(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor],
                        pairs: Tensor, splits: dict, n_points: int = 11,
                        bn_reset_x: Tensor | None = None) -> dict[str, np.ndarray]:
    """Curves [K, T] and barrier variants [K] of the straight paths between the K pairs.

    Keys: ``curve.<split>.<metric>`` and ``barrier_<max|lin|mid>.<split>.<metric>``.
    """
    ts = interpolation_points(n_points)
    a, b = pairs[:, 0], pairs[:, 1]
    states = interpolate(_side(params, a), _side(params, b), ts)
    bufs = interpolate(_side(buffers, a), _side(buffers, b), ts)
    values = curves(evaluate_states(model, objective, states, bufs, splits, bn_reset_x), len(pairs), n_points)
    out = {f"curve.{k}": v for k, v in values.items()}
    for k, v in values.items():
        out.update({f"barrier_{variant}.{k}": b for variant, b in barrier_variants(v, ts.numpy()).items()})
    return out


def bezier_states(w0: dict[str, Tensor], bend: dict[str, Tensor], w1: dict[str, Tensor], t: Tensor
                  ) -> dict[str, Tensor]:
    """phi(t) for per-pair t [K] (one point per pair) -> stacked [K, ...]."""
    out = {}
    for name, v0 in w0.items():
        tt = t.to(v0.dtype).view(-1, *[1] * (v0.dim() - 1))
        out[name] = (1 - tt) ** 2 * v0 + 2 * tt * (1 - tt) * bend[name] + tt ** 2 * w1[name]
    return out


def mode_connectivity(curve: np.ndarray) -> np.ndarray:
    """mc [K] of curves [K, T] (module docstring convention: mc < 0 is a barrier)."""
    v = np.asarray(curve, dtype=np.float64)
    ends = (v[:, 0] + v[:, -1]) / 2
    inner = v[:, 1:-1]
    star = np.abs(inner - ends[:, None]).argmax(1)
    return ends - inner[np.arange(len(v)), star]


def train_bends(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor], pairs: Tensor,
                train_x: Tensor, train_y: Tensor, steps: int, lr: float | Tensor, optimizer: str = "sgd",
                momentum: float = 0.9, batch_size: int = 64, seed: int = 0,
                betas: tuple[float, float] = (0.9, 0.999)) -> dict[str, Tensor]:
    """Train the K bends (one per pair) together; ``lr`` is a float or per-pair [K]."""
    a, b = pairs[:, 0], pairs[:, 1]
    w0, w1 = _side(params, a), _side(params, b)
    bufs = {k: v.clone() for k, v in _side(buffers, a).items()}
    bend = {k: ((w0[k] + w1[k]) / 2).detach().clone().requires_grad_(True) for k in w0}
    k_pairs = len(pairs)
    lr = torch.as_tensor(lr, dtype=torch.float64).expand(k_pairs)
    state = {k: torch.zeros_like(v) for k, v in bend.items()}
    second = {k: torch.zeros_like(v) for k, v in bend.items()}
    g = torch.Generator().manual_seed(seed)
    forward = make_forward(model)
    was = model.training
    model.train()  # BatchNorm uses batch statistics while the bends train
    try:
        for step in range(1, steps + 1):
            t = torch.rand(k_pairs, generator=g, dtype=torch.float64)
            idx = torch.randint(0, len(train_x), (k_pairs, batch_size), generator=g)
            loss = objective.batch_loss(forward, bezier_states(w0, bend, w1, t), bufs, train_x[idx], train_y[idx])
            grads = torch.autograd.grad(loss.sum(), list(bend.values()))
            with torch.no_grad():
                for (name, p), grad in zip(bend.items(), grads, strict=True):
                    rate = lr.to(p.dtype).view(-1, *[1] * (p.dim() - 1))
                    if optimizer == "adam":
                        state[name].mul_(betas[0]).add_(grad, alpha=1 - betas[0])
                        second[name].mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
                        m_hat = state[name] / (1 - betas[0] ** step)
                        v_hat = second[name] / (1 - betas[1] ** step)
                        p.sub_(rate * m_hat / (v_hat.sqrt() + 1e-8))
                    else:
                        state[name].mul_(momentum).add_(grad)
                        p.sub_(rate * state[name])
    finally:
        model.train(was)
    return {k: v.detach() for k, v in bend.items()}


def bezier_connectivity(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor],
                        pairs: Tensor, splits: dict, train_x: Tensor, train_y: Tensor, steps: int = 200,
                        lr: float | Tensor = 0.01, optimizer: str = "sgd", momentum: float = 0.9,
                        batch_size: int = 64, n_points: int = 11, seed: int = 0,
                        bn_reset_x: Tensor | None = None) -> dict[str, np.ndarray]:
    """Train a Bezier bend per pair, evaluate its curve: ``mc.<split>.<metric>`` [K] and
    ``bezier_curve.<split>.<metric>`` [K, T]."""
    bend = train_bends(model, objective, params, buffers, pairs, train_x, train_y, steps, lr, optimizer,
                       momentum, batch_size, seed)
    a, b = pairs[:, 0], pairs[:, 1]
    w0, w1 = _side(params, a), _side(params, b)
    ts = interpolation_points(n_points)
    k = len(pairs)
    grid_t = ts.repeat(k)  # pair-major, like paths.interpolate
    rep = lambda s: {n: v.repeat_interleave(n_points, 0) for n, v in s.items()}  # noqa: E731
    states = bezier_states(rep(w0), rep(bend), rep(w1), grid_t)
    bufs = rep(_side(buffers, a))
    values = curves(evaluate_states(model, objective, states, bufs, splits, bn_reset_x), k, n_points)
    out = {f"bezier_curve.{name}": v for name, v in values.items()}
    out.update({f"mc.{name}": mode_connectivity(v) for name, v in values.items()})
    return out


__all__ = ["bezier_connectivity", "bezier_states", "linear_connectivity", "mode_connectivity", "train_bends"]
