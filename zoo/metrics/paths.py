"""Paths between models in weight space: points on a line, their metrics, and barrier variants.

Shared by mode connectivity (same-cell pairs), permutation-aligned LMC and layer-wise LMC: every
consumer builds stacked states for all points of all pairs, and ``evaluate_states`` scores them as
one population (one vmapped forward per data chunk), which is what makes pair loops unnecessary.

Barrier variants for a curve v(t) on points t_0 = 0 < ... < t_T = 1 (v = loss or error):

- ``max``: max_t v(t) - (v(0) + v(1)) / 2            (Frankle et al. 2020; Entezari et al. 2022)
- ``lin``: max_t [v(t) - ((1 - t) v(0) + t v(1))]     (Juneja et al.; the height above the chord)
- ``mid``: v(1/2) - (v(0) + v(1)) / 2                 (the midpoint barrier)

Positive values mean a barrier; a convex path gives ``lin`` <= 0.

For Linear stacks without buffers (MLPs, PINNs) the points of a path are never materialised:
``path_forward`` evaluates W(t) = sum_k c_k(t) W_k inside each layer's GEMM through
``zoo.kernels.interp_linear`` (the fused Triton kernel on CUDA), for lines (K=2) and Bezier
curves (K=3) alike. Other models get stacked states (``interpolate``) and the vmapped forward.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .. import kernels as zk
from ..functional import evaluate, is_linear_stack, make_forward, mode
from ..generators.architectures.dropout import no_dropout

Tensor = torch.Tensor


def interpolation_points(n: int = 11) -> Tensor:
    """n evenly spaced t in [0, 1], float64 (endpoints included)."""
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64)


def interpolate(a: dict[str, Tensor], b: dict[str, Tensor], ts: Tensor,
                only: set[str] | None = None) -> dict[str, Tensor]:
    """(1 - t) a + t b for stacked states a, b ([K, ...] each) -> [K * T, ...], pair-major.

    ``only`` restricts interpolation to those tensor names; the others keep a's values (layer-wise
    LMC: move one layer along the path while the rest of the network stays at model A).
    """
    out = {}
    for name, va in a.items():
        k = va.shape[0]
        if only is not None and name not in only or not va.is_floating_point():
            out[name] = va.repeat_interleave(len(ts), 0)
            continue
        t = ts.to(va).view(1, -1, *[1] * (va.dim() - 1))
        out[name] = torch.lerp(va.unsqueeze(1), b[name].unsqueeze(1), t).reshape(k * len(ts), *va.shape[1:])
    return out


@contextmanager
def _bn_momentum(model: nn.Module, value: float | None):
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = value
    try:
        yield bns
    finally:
        for m, v in zip(bns, saved, strict=True):
            m.momentum = v


@contextmanager
def batch_statistics(model: nn.Module):
    """Train mode with dropout off: BatchNorm normalises with batch statistics (and updates its
    running stats) while the net stays deterministic. The model's mode is restored on exit."""
    with mode(model, train=True), no_dropout(model):
        yield


@torch.no_grad()
def reset_batchnorm(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
                    x: Tensor) -> dict[str, Tensor]:
    """Stacked buffers whose BatchNorm running stats are re-estimated on x for every model.

    An interpolated network's activations no longer match either endpoint's statistics (Jordan et
    al. 2023, "REPAIR"); re-estimating them is the standard reset. With momentum 1 one train-mode
    pass over x sets each running mean/var to x's batch statistics, layer after layer.
    """
    fresh = {k: v.clone() for k, v in buffers.items()}
    with _bn_momentum(model, 1.0) as bns:
        if not bns:
            return fresh
        with batch_statistics(model):
            make_forward(model)(params, fresh, x.unsqueeze(0).expand(next(iter(params.values())).shape[0], *x.shape))
    return fresh


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _score(forward, model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor],
           splits: dict[str, tuple[Tensor, Tensor]], chunk: int | None) -> dict[str, Tensor]:
    out = {}
    for split, (x, y) in splits.items():
        for k, v in evaluate(forward, model, objective, params, buffers, x, y, chunk=chunk, split=split).items():
            if k == "acc":
                out[f"{split}.err"] = 1.0 - v
            else:
                out[f"{split}.{k}"] = v
    return out


@torch.no_grad()
def evaluate_states(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor],
                    splits: dict[str, tuple[Tensor, Tensor]], bn_reset_x: Tensor | None = None,
                    chunk: int | None = None) -> dict[str, Tensor]:
    """Metrics of N stacked states on each split: {"train.loss": [N], "train.err": [N], ...}.

    ``splits`` maps a split name to shared (x, y). Classification adds err = 1 - acc; other
    objectives report their own metrics (e.g. rel_l2). ``bn_reset_x`` re-estimates BatchNorm
    statistics per state before scoring (a no-op for models without BatchNorm).
    """
    if bn_reset_x is not None and has_batchnorm(model):
        buffers = reset_batchnorm(model, params, buffers, bn_reset_x)
    return _score(make_forward(model), model, objective, params, buffers, splits, chunk)


def fused_paths(model: nn.Module, buffers: dict[str, Tensor]) -> bool:
    """Whether ``path_forward`` applies: a Linear stack without buffers."""
    return is_linear_stack(model) and not buffers


def path_forward(model: nn.Module, anchors: list[dict[str, Tensor]], coeffs: Tensor):
    """forward(_, _, x [P*T, N, ...]) -> outputs [P*T, N, ...] of the states
    sum_k coeffs[p, t, k] anchors[k][p] (pair-major, like ``interpolate``) of a Linear stack.

    ``anchors``: K stacked parameter dicts [P, ...] (endpoints, and the bend of a Bezier curve);
    ``coeffs`` [T, K] or [P, T, K]. Differentiable in the anchors.
    """
    if not is_linear_stack(model):
        raise ValueError(f"path_forward needs a Linear stack, got {type(model).__name__}")
    p = next(iter(anchors[0].values())).shape[0]
    t = coeffs.shape[-2]
    layers = []
    for name, m in model.named_children():
        if isinstance(m, nn.Linear):
            w = torch.stack([a[f"{name}.weight"] for a in anchors])
            b = None if m.bias is None else torch.stack([a[f"{name}.bias"] for a in anchors])
            layers.append((w, b))
        else:
            layers.append(m)

    def forward(_params, _buffers, x):
        h = x
        for layer in layers:
            if isinstance(layer, nn.Flatten):
                h = h.flatten(2)
            elif isinstance(layer, nn.Module):
                h = layer(h)
            else:
                w, b = layer
                out = zk.interp_linear(h.reshape(p, t, *h.shape[1:]), w, b, coeffs.to(w.dtype))
                h = out.reshape(p * t, *out.shape[2:])
        return h

    return forward


@torch.no_grad()
def evaluate_path(model: nn.Module, objective, anchors: list[dict[str, Tensor]], coeffs: Tensor,
                  splits: dict[str, tuple[Tensor, Tensor]], chunk: int | None = None) -> dict[str, Tensor]:
    """``evaluate_states`` of the P*T path states of ``path_forward``, never materialising them."""
    p = next(iter(anchors[0].values())).shape[0]
    count = {"state": torch.empty(p * coeffs.shape[-2], 0)}  # evaluate reads the state count from it
    return _score(path_forward(model, anchors, coeffs), model, objective, count, {}, splits, chunk)


def evaluate_line(model: nn.Module, objective, a: dict[str, Tensor], b: dict[str, Tensor],
                  buffers_a: dict[str, Tensor], buffers_b: dict[str, Tensor], ts: Tensor,
                  splits: dict[str, tuple[Tensor, Tensor]], bn_reset_x: Tensor | None = None
                  ) -> dict[str, Tensor]:
    """Metrics of the K x T points (pair-major) of the straight paths from stacked a to b [K, ...]:
    fused for Linear stacks (``path_forward``), stacked states otherwise."""
    if fused_paths(model, buffers_a):
        return evaluate_path(model, objective, [a, b], zk.linear_coeffs(ts), splits)
    return evaluate_states(model, objective, interpolate(a, b, ts), interpolate(buffers_a, buffers_b, ts),
                           splits, bn_reset_x)


def barrier_variants(curve: Tensor | np.ndarray, ts: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Barrier variants (module docstring) of curves [K, T] at points ts [T] -> {"max","lin","mid"}: [K]."""
    v = np.asarray(curve, dtype=np.float64)
    t = np.asarray(ts, dtype=np.float64)
    ends = (v[:, :1] + v[:, -1:]) / 2
    chord = (1 - t)[None] * v[:, :1] + t[None] * v[:, -1:]
    out = {"max": v.max(1) - ends[:, 0], "lin": (v - chord).max(1)}
    mid = np.flatnonzero(np.isclose(t, 0.5))
    out["mid"] = v[:, mid[0]] - ends[:, 0] if mid.size else np.array(
        [np.interp(0.5, t, row) for row in v]) - ends[:, 0]
    return out


def curves(values: dict[str, Tensor], k: int, t: int) -> dict[str, np.ndarray]:
    """Reshape flat per-state metrics [K * T] (pair-major) into curves [K, T]."""
    return {name: v.double().reshape(k, t).cpu().numpy() for name, v in values.items()}


__all__ = ["barrier_variants", "curves", "evaluate_line", "evaluate_path", "evaluate_states", "fused_paths",
           "has_batchnorm", "interpolate", "interpolation_points", "path_forward", "reset_batchnorm"]
