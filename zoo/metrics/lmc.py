"""Linear mode connectivity after undoing permutation symmetry, for every pair of a population.

For each alignment, model B of every pair is permuted onto A (``matching``), the straight paths
of all K pairs are scored as one batch of K x T states (``paths``), and the pair gets the barrier
variants on loss and error, train and test, L2 distance and cosine similarity before/after, and
the permutations themselves (so the aligned B can be rebuilt with ``apply_permutation``).

Alignments: ``weight`` (weight matching), ``activation`` (activation matching on the probe batch),
``weight+repair`` (weight matching, then REPAIR, Jordan et al. 2023: at every interpolated point
each hidden unit's pre-activation is rescaled so its mean and std on the probe batch equal the
interpolation of the endpoints' statistics; folded into the Linear layer's weights and bias, so the
corrected network is another stacked state). REPAIR is implemented for Linear/activation stacks;
for networks with BatchNorm every path point is evaluated with re-estimated BatchNorm statistics
(the "reset" variant) for all alignments, so ``weight+repair`` is not emitted for them.

Optional extras: layer-wise barriers (Adilova et al.: one layer moves along the aligned path while
the rest stays at A; ``layer_barrier.<layer>.train.loss``, max variant) and Ito et al.'s singular-vector
alignment per layer (``svd_align.<tensor>.<left|right>_<before|after>``, weight matching rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..functional import ELEMENTWISE
from .matching import (
    activation_matching,
    aligned_pairs,
    alignment_distances,
    permutation_spec,
    singular_vector_alignment,
    weight_matching,
)
from .paths import barrier_variants, curves, evaluate_states, has_batchnorm, interpolate, interpolation_points

Tensor = torch.Tensor


def _plain_mlp(model: nn.Module) -> bool:
    return isinstance(model, nn.Sequential) and all(isinstance(m, (nn.Linear, nn.Flatten, *ELEMENTWISE))
                                                    for m in model)


def _pre(state: dict[str, Tensor], inp: Tensor, w: str, bias: str) -> Tensor:
    z = torch.bmm(inp, state[w].transpose(1, 2))
    return z + state[bias].unsqueeze(1) if bias in state else z


@torch.no_grad()
def repair(model: nn.Sequential, a: dict[str, Tensor], b: dict[str, Tensor], states: dict[str, Tensor],
           ts: Tensor, x: Tensor, eps: float = 1e-5) -> dict[str, Tensor]:
    """REPAIR the K x T interpolated states (pair-major) of a Linear/activation stack.

    Layer by layer (each correction changes what the next layer sees), every hidden unit's
    pre-activation mean/std on x is set to (1-t) stat_A + t stat_B; the output layer is left alone.
    """
    k, t = next(iter(a.values())).shape[0], len(ts)
    out = {n: v.clone() for n, v in states.items()}
    h_a = x.expand(k, *x.shape).to(next(iter(a.values())).dtype)
    h_b, h = h_a, x.expand(k * t, *x.shape).to(h_a.dtype)
    linears = [name for name, m in model.named_children() if isinstance(m, nn.Linear)]
    tt = ts.to(h.dtype).repeat(k).view(-1, 1)
    for name, m in model.named_children():
        if isinstance(m, nn.Flatten):
            h_a, h_b, h = h_a.flatten(2), h_b.flatten(2), h.flatten(2)
            continue
        if not isinstance(m, nn.Linear):
            h_a, h_b, h = m(h_a), m(h_b), m(h)
            continue
        w, bias = f"{name}.weight", f"{name}.bias"

        z_a, z_b, z = _pre(a, h_a, w, bias), _pre(b, h_b, w, bias), _pre(out, h, w, bias)
        if name != linears[-1]:
            rep = lambda s: s.repeat_interleave(t, 0)  # noqa: E731
            mu = (1 - tt) * rep(z_a.mean(1)) + tt * rep(z_b.mean(1))
            sd = (1 - tt) * rep(z_a.std(1)) + tt * rep(z_b.std(1))
            scale = sd / (z.std(1) + eps)
            shift = mu - z.mean(1) * scale
            out[w] = out[w] * scale.unsqueeze(-1)
            out[bias] = out.get(bias, 0) * scale + shift
            z = z * scale.unsqueeze(1) + shift.unsqueeze(1)
        h_a, h_b, h = z_a, z_b, z
    return out


def _layer_groups(model: nn.Module, params: dict[str, Tensor]) -> dict[str, set[str]]:
    """Layer name -> the parameter names that move together in layer-wise interpolation."""
    groups = {}
    for name, m in model.named_modules():
        own = {f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False)}
        if own and any(params[n].dim() > 2 for n in own if n in params):
            groups[name] = {n for n in own if n in params}
    return groups


def lmc_pairs(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor], pairs: Tensor,
              splits: dict, probe_x: Tensor, alignments=("weight", "activation", "weight+repair"),
              n_points: int = 11, layerwise: bool = True, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Aligned-path metrics for K same-cell pairs [K, 2]: (rows, permutations).

    rows: one per (pair, alignment) with ``pair_index``, ``alignment``, ``barrier_<v>.<split>.<metric>``,
    ``curve.<split>.<metric>`` and distances; permutations: {"<alignment>/<perm>": int array [K, n]}.
    """
    spec = permutation_spec(model)
    ts = interpolation_points(n_points)
    k = len(pairs)
    bn = has_batchnorm(model)
    reset_x = probe_x if bn else None
    matched: dict[str, dict] = {}
    tables, perms_out = [], {}
    for alignment in alignments:
        base = alignment.split("+")[0]
        if alignment == "weight+repair" and not _plain_mlp(model):
            continue  # BatchNorm nets are reset at every point already; other archs: not implemented
        if base not in matched:
            matched[base] = (weight_matching(spec, params, pairs, seed=seed)["perms"] if base == "weight"
                             else activation_matching(model, spec, params, buffers, pairs, probe_x))
        perms = matched[base]
        a, b = aligned_pairs(spec, {**params, **buffers}, pairs, perms)
        pa, pb = {n: a[n] for n in params}, {n: b[n] for n in params}
        ba, bb = {n: a[n] for n in buffers}, {n: b[n] for n in buffers}
        states = interpolate(pa, pb, ts)
        if alignment.endswith("+repair"):
            states = repair(model, pa, pb, states, ts, probe_x)
        values = curves(evaluate_states(model, objective, states, interpolate(ba, bb, ts), splits, reset_x), k,
                        n_points)
        cols: dict[str, object] = {"pair_index": np.arange(k), "alignment": alignment}
        for name, v in values.items():
            cols[f"curve.{name}"] = list(v)
            cols.update({f"barrier_{var}.{name}": x for var, x in barrier_variants(v, ts.numpy()).items()})
        dist = alignment_distances(spec, params, pairs, perms)
        cols.update({key: v.numpy() for key, v in dist.items()})
        if base == "weight" and alignment == "weight":
            for key, v in singular_vector_alignment(spec, params, pairs, perms).items():
                cols["svd_align." + key.replace("/", ".")] = v.numpy()
            if layerwise:
                train = {"train": splits["train"]}
                for layer, names in _layer_groups(model, params).items():
                    moved = interpolate(pa, pb, ts, only=names)
                    v = curves(evaluate_states(model, objective, moved, interpolate(ba, ba, ts), train, reset_x),
                               k, n_points)["train.loss"]
                    cols[f"layer_barrier.{layer}.train.loss"] = barrier_variants(v, ts.numpy())["max"]
        tables.append(pd.DataFrame(cols))
        for p, v in perms.items():
            perms_out[f"{alignment}/{p}"] = v.numpy()
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()), perms_out


__all__ = ["lmc_pairs", "repair"]
