"""Mode connectivity of model pairs: linear-path curves and barriers, and Bezier-curve mc.

All K pairs of a population are one batch: the T points of every path are K x T states scored in
one batched forward per data chunk (``paths.evaluate_line``/``evaluate_path``: for Linear stacks
the points are mixed inside the GEMMs by ``kernels.interp_linear``, otherwise stacked states), and
the K Bezier bends train together as one [K, ...] parameter set (one forward + autograd per step).

Linear paths: ``curve.<split>.<metric>`` [K, T] at T evenly spaced t, and the barrier variants of
``paths`` (``barrier_max``, ``barrier_lin``, ``barrier_mid``; positive = a barrier).

Bezier mode connectivity (Garipov et al. 2018; as in Yang et al. 2021 and the phase-transition zoo):
phi(t) = (1-t)^2 w0 + 2t(1-t) theta + t^2 w1, the bend theta initialised at the midpoint (w0+w1)/2
and trained with the task's optimizer (SGD with momentum or Adam), t ~ U(0, 1) drawn per step and
per pair. The measure step gives the bend the models' own budget (Garipov et al.: as many steps
as the endpoints trained), their lr times ``BEND_LR_SCALE`` (the bend moves the curve slower
than a model moves itself), cosine-annealed; docs/phases.md has the measurement behind it.
Evaluated at ``n_points`` evenly spaced t with BatchNorm statistics re-estimated at each point, then

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

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..functional import make_forward
from ..kernels import bezier_coeffs
from .base import Measured, Metric, Population, pair_rows
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
)

Tensor = torch.Tensor

BN_RESET_SIZE = 1024  # training samples that re-estimate BatchNorm statistics when none are given
SCHEDULES = ("constant", "cosine")  # the bend's learning-rate schedules
# The bend's lr over the models' in the measure step. A bend step moves phi(t) by c = 2t(1-t) times
# the step, and an SGD step is itself c times dL/dphi, so phi moves c^2 lr: at the models' lr the
# curve would move 1/E[c^2] = 7.5 times slower (t ~ U(0, 1)) than the models moved in training.
# Adam (whose step does not scale with the gradient) gets the same factor, measured: docs/phases.md.
BEND_LR_SCALE = 7.5


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


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    """The bend's learning-rate multiplier: constant, or cosine annealing to 0 (the endpoints'
    constant lr leaves the bend bouncing at the noise level; annealing lets it settle in the valley)."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / steps))
    return 1.0


@dataclass
class Bends:
    """Trained bends of K pairs."""

    end: dict[str, Tensor]  # [K, ...] each
    finite: Tensor  # [K] bool: every step's loss and gradient stayed finite


def train_bends(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor], pairs: Tensor,
                train_x: Tensor, train_y: Tensor, steps: int, lr: float | Tensor, optimizer: str = "sgd",
                momentum: float = 0.9, batch_size: int = 64, seed: int = 0,
                betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
                schedule: str = "constant") -> Bends:
    """Train the K bends (one per pair) together, from the midpoints (w0 + w1) / 2.

    ``lr`` is a float or per-pair [K], scaled per step by ``schedule`` (constant | cosine); the
    updates are the population trainer's (SGD: buf = mom * buf + g, theta -= lr * buf; Adam with
    bias correction). A pair whose loss or gradient stops being finite is frozen at its last finite
    bend (as a diverged model is in training) and flagged in ``Bends.finite``.

    Each step evaluates phi(t) as a leaf tensor and takes the bend's gradient by the chain rule,
    dL/dtheta = 2t(1-t) dL/dphi: one population forward/backward, as cheap as a training step.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be sgd or adam, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    pairs = _pairs(pairs)
    a, b = pairs[:, 0], pairs[:, 1]
    w0, w1 = _side(params, a), _side(params, b)
    bufs = {k: v.clone() for k, v in _side(buffers, a).items()}
    bend = {k: torch.lerp(w0[k], w1[k], 0.5) for k in w0}
    k_pairs = len(pairs)
    ref = next(iter(bend.values()))
    lr = torch.as_tensor(lr, dtype=ref.dtype, device=ref.device).expand(k_pairs)
    buf = {k: torch.zeros_like(v) for k, v in bend.items()}
    buf2 = {k: torch.zeros_like(v) for k, v in bend.items()} if optimizer == "adam" else None
    t_all, idx_all = _pair_draws(pairs, len(train_x), steps, batch_size, seed)
    coeffs = bezier_coeffs(t_all.T.contiguous()).to(ref)  # [steps, K, 3]
    idx_all = idx_all.to(train_x.device)
    alive = torch.ones(k_pairs, dtype=torch.bool, device=ref.device)
    forward = make_forward(model)
    shape = lambda v: (-1, *[1] * (v.dim() - 1))  # noqa: E731 - per-pair scalars against [K, ...]
    with batch_statistics(model):  # BatchNorm normalises with batch statistics while the bends train
        for step in range(steps):
            idx, c = idx_all[:, step], coeffs[step]
            with torch.no_grad():
                phi = {k: (c[:, 0].view(shape(v)) * w0[k] + c[:, 1].view(shape(v)) * v
                           + c[:, 2].view(shape(v)) * w1[k]).requires_grad_(True) for k, v in bend.items()}
            loss = objective.batch_loss(forward, phi, bufs, train_x[idx], train_y[idx])  # [K]
            grads = torch.autograd.grad(loss.sum(), list(phi.values()))
            with torch.no_grad():
                ok = alive & loss.detach().isfinite()
                for grad in grads:
                    ok &= grad.flatten(1).sum(1).isfinite()
                alive = ok
                scale = torch.where(ok, lr * _lr_factor(schedule, step, steps), 0.0)
                for (name, p), g in zip(bend.items(), grads, strict=True):
                    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) * c[:, 1].view(shape(p))
                    if weight_decay:
                        g = g.add(p, alpha=weight_decay)
                    keep = ok.view(shape(p))
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
    return Bends(end=bend, finite=alive.cpu())


def _bezier_curves(model: nn.Module, objective, w0, bend, w1, buffers, splits: dict, n_points: int,
                   bn_reset_x: Tensor | None) -> dict[str, np.ndarray]:
    """Curves [K, T] of the Bezier paths (w0, bend, w1) at ``n_points`` evenly spaced t."""
    ts = interpolation_points(n_points)
    k = next(iter(w0.values())).shape[0]
    if fused_paths(model, buffers):
        return curves(evaluate_path(model, objective, [w0, bend, w1], bezier_coeffs(ts), splits), k, n_points)
    rep = lambda s: {n: v.repeat_interleave(n_points, 0) for n, v in s.items()}  # noqa: E731 - pair-major
    states = bezier_states(rep(w0), rep(bend), rep(w1), ts.repeat(k))
    return curves(evaluate_states(model, objective, states, rep(buffers), splits, bn_reset_x), k, n_points)


def bezier_connectivity(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor],
                        pairs: Tensor, splits: dict, train_x: Tensor, train_y: Tensor, steps: int = 200,
                        lr: float | Tensor = 0.01, optimizer: str = "sgd", momentum: float = 0.9,
                        batch_size: int = 64, n_points: int = 11, seed: int = 0,
                        bn_reset_x: Tensor | None = None, weight_decay: float = 0.0,
                        schedule: str = "constant", tol: float | None = None) -> dict[str, np.ndarray]:
    """Train a Bezier bend per pair, evaluate its curve: ``mc.<split>.<metric>`` [K],
    ``bezier_curve.<split>.<metric>`` [K, T], and per pair ``bezier_steps``, ``bezier_final_loss``
    (the objective the bend minimised, E_t L(phi(t)) on the train split: the trapezoid mean of
    its curve) and ``bezier_converged``: every step stayed finite and a bend trained with half the
    steps (the same draws, its own schedule) gives a train-loss mc within ``tol`` of the final one,
    so doubling the budget no longer changed the answer (the measure step passes the phase labels'
    connected tolerance; None: 2% of the endpoints' mean train loss). A test of the last steps
    alone cannot tell a plateau from slow progress: mc improves about log-linearly in the budget.
    The "train" split defaults to (train_x, train_y).

    BatchNorm statistics are re-estimated at every evaluated point on ``bn_reset_x``, by default
    the first ``BN_RESET_SIZE`` training samples (the endpoints' statistics do not fit the bend).
    """
    pairs = _pairs(pairs)
    splits = {"train": (train_x, train_y), **splits}

    def fit(n: int) -> Bends:
        return train_bends(model, objective, params, buffers, pairs, train_x, train_y, n, lr, optimizer, momentum,
                           batch_size, seed, weight_decay=weight_decay, schedule=schedule)

    bends, half = fit(steps), fit(steps // 2)
    if bn_reset_x is None and has_batchnorm(model):
        bn_reset_x = train_x[:BN_RESET_SIZE]
    a, b = pairs[:, 0], pairs[:, 1]
    w0, w1, bufs = _side(params, a), _side(params, b), _side(buffers, a)
    values = _bezier_curves(model, objective, w0, bends.end, w1, bufs, splits, n_points, bn_reset_x)
    half_curve = _bezier_curves(model, objective, w0, half.end, w1, bufs, {"train": splits["train"]}, n_points,
                                bn_reset_x)["train.loss"]
    out = {f"bezier_curve.{name}": v for name, v in values.items()}
    out.update({f"mc.{name}": mode_connectivity(v) for name, v in values.items()})
    drift = np.abs(out["mc.train.loss"] - mode_connectivity(half_curve))
    if tol is None:
        tol = 0.02 * np.abs(values["train.loss"][:, [0, -1]].mean(1))
    out["bezier_steps"] = np.full(len(pairs), steps, dtype=np.int64)
    out["bezier_final_loss"] = np.trapezoid(values["train.loss"], dx=1 / (n_points - 1), axis=1)
    out["bezier_converged"] = bends.finite.numpy() & (drift <= tol)
    return out


def bend_steps(spec, trained_steps: int) -> int:
    """The Bezier bend's steps: ``metrics.bezier_steps``, or for -1 ``bezier_budget`` x the steps
    the models trained (at least 1)."""
    if spec.bezier_steps >= 0:
        return spec.bezier_steps
    return max(1, round(spec.bezier_budget * trained_steps))


def mc_tolerance(spec, data) -> float | None:
    """The phase labels' connected tolerance on mc: mc_tolerance x log(classes) (classification
    only; other tasks get the bend's relative default)."""
    from .phases import PhaseThresholds

    if data.kind != "classification":
        return None
    return PhaseThresholds(**spec.thresholds).mc_tolerance * math.log(data.n_classes)


def measure(pop: Population, spec) -> Measured:
    """Naive linear paths and Bezier curves between the population's pairs. The bend trains at
    ``BEND_LR_SCALE`` x model a's learning rate (or metrics.bezier_lr) with the cell's optimizer,
    batch size and ``bend_steps`` steps, cosine-annealed."""
    pairs = pop.pairs(spec.pairs == "population")
    params, buffers = pop.final
    bn_x = pop.probe(spec.probe_size, "train")
    cols = linear_connectivity(pop.model, pop.objective, params, buffers, pairs, pop.splits,
                               n_points=spec.curve_points, bn_reset_x=bn_x)
    steps = bend_steps(spec, pop.steps[-1])
    if steps:
        lr = torch.tensor([pop.lr[pop.healthy[i]] for i in pairs[:, 0].tolist()], dtype=torch.float64)
        bend_lr = torch.full_like(lr, spec.bezier_lr) if spec.bezier_lr else lr * BEND_LR_SCALE
        x, y = pop.splits["train"]
        cols.update(bezier_connectivity(
            pop.model, pop.objective, params, buffers, pairs, pop.splits, x, y, steps=steps, lr=bend_lr,
            optimizer=pop.optimizer, momentum=pop.momentum, batch_size=pop.batch_size, n_points=spec.curve_points,
            seed=0, bn_reset_x=bn_x, schedule="cosine", tol=mc_tolerance(spec, pop.data)))
    return Measured(tables={"pairs": pair_rows(cols, len(pairs))})


METRIC = Metric(
    name="connectivity",
    protocol="11 points; the bend trains as long as the models did (`bezier_steps = -1`, `bezier_budget = 1.0`), "
             "cell's optimizer and batch size, 7.5× its lr, cosine; BatchNorm reset at every point (docs/phases.md)",
    group="landscape", applies_to="pair", compute=measure, needs_pairs=True,
    about="mode connectivity of same-cell pairs: linear-path barriers and trained Bezier curves",
    pair_summaries={"connectivity.mc": "mc.train.loss", "connectivity.barrier": "barrier_max.train.loss"},
    columns={
        "connectivity.mc": "mean Bezier mode connectivity (train loss) over the model's same-cell pairs; negative "
                           "= barrier (sign convention: `mc.<split>.<metric>` of pairs.parquet, under Files above)",
        "connectivity.barrier": "mean naive linear-path barrier (max variant, train loss) over its same-cell pairs",
    })

__all__ = ["BEND_LR_SCALE", "Bends", "METRIC", "bend_steps", "bezier_connectivity", "bezier_states",
           "linear_connectivity", "mc_tolerance", "measure", "mode_connectivity", "train_bends"]
