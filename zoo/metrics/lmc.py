"""Linear mode connectivity after undoing permutation symmetry, for every pair of a population.

For each alignment, model B of every pair is permuted onto A (``matching``), the straight paths
of all K pairs are scored as one batch of K x T states (``paths``), and the pair gets the barrier
variants on loss and error, train and test, L2 distance and cosine similarity, and the
permutations themselves (so the aligned B can be rebuilt with ``apply_permutation``).

Alignments:

- ``none``: the raw pair (identity permutations).
- ``weight``: weight matching (Ainsworth et al. 2023, Alg. 1).
- ``activation``: activation matching on the probe batch.
- ``ste`` (opt-in, not in ``ALIGNMENTS``): permutations learnt by the straight-through estimator on the
  midpoint's training loss (``ste.ste_matching``, Ainsworth et al. 2023 Alg. 3).
- ``weight+repair``: weight matching, then REPAIR (Jordan et al. 2023): at every interpolated point
  each hidden unit's pre-activation is rescaled so its mean and std on the probe batch equal
  (1 - t) stat_A + t stat_B. The per-unit affine correction is folded into the producing
  Linear/Conv's weight rows and bias, so the corrected network is just another stacked state.
  Implemented for ``nn.Sequential`` stacks of Linear/Conv/activation/pooling/Flatten with biases.

Networks with BatchNorm are evaluated with BatchNorm statistics re-estimated on the probe batch at
every path point, for every alignment (the standard reset, Ainsworth et al. 2023 App.; the same as
``connectivity.linear_connectivity`` with ``bn_reset_x``). For them REPAIR is that reset (the BN
output's mean/std become the interpolated shift/scale), so ``weight+repair`` adds nothing and is
not emitted. Pairs may cross cells as long as the models share an architecture.

Extras per alignment without ``+repair``: layer-wise barriers (Adilova et al. 2024: one layer moves
along the aligned path while the rest stays at A; ``layer_barrier.<layer>.train.loss``, max variant)
and Ito et al. (2024)'s singular-vector alignment per weight matrix
(``svd_align.<tensor>.<left|right>_<before|after>``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, vmap

from ..functional import mode
from .base import Measured, Metric, Population
from .matching import (
    activation_matching,
    aligned_pairs,
    alignment_distances,
    identity_perms,
    permutation_spec,
    singular_vector_alignment,
    weight_matching,
)
from .paths import (
    barrier_variants,
    curves,
    evaluate_line,
    evaluate_states,
    has_batchnorm,
    interpolate,
    interpolation_points,
)
from .ste import ste_matching

Tensor = torch.Tensor

ALIGNMENTS = ("none", "weight", "activation", "weight+repair")
OPT_IN = ("ste", "ste+repair")  # straight-through permutation search (metrics/ste.py): trains, so never a default
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_STATELESS = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity,
              nn.Flatten, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
              nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def repairable(model: nn.Module) -> bool:
    """Whether ``repair`` applies: a Sequential of Linear/Conv (hidden ones with a bias) and stateless layers."""
    if not isinstance(model, nn.Sequential) or not all(isinstance(m, _LAYERS + _STATELESS) for m in model):
        return False
    layers = [m for m in model if isinstance(m, _LAYERS)]
    return len(layers) >= 2 and all(m.bias is not None for m in layers[:-1])


def run_module(name: str, m: nn.Module, state: dict[str, Tensor], h: Tensor) -> Tensor:
    """Module ``m`` on stacked inputs h [N, B, ...]: per-state weights for Linear/Conv, shared otherwise."""
    if isinstance(m, _LAYERS):
        own = {p: state[f"{name}.{p}"] for p, _ in m.named_parameters()}
        return vmap(lambda s, x: functional_call(m, s, (x,)))(own, h)
    return m(h.flatten(0, 1)).unflatten(0, h.shape[:2])


def unit_stats(z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-unit mean and std [N, C] of pre-activations z [N, B, C, *spatial] over samples and positions."""
    z = z.movedim(2, -1).reshape(z.shape[0], -1, z.shape[2])
    return z.mean(1), z.std(1)


@torch.no_grad()
def repair(model: nn.Sequential, a: dict[str, Tensor], b: dict[str, Tensor], states: dict[str, Tensor],
           ts: Tensor, x: Tensor, eps: float = 1e-5) -> dict[str, Tensor]:
    """REPAIR the K x T interpolated ``states`` (pair-major, from ``interpolate(a, b, ts)``).

    Layer by layer (each correction changes what the next layer sees), every hidden unit's
    pre-activation mean/std on the probe batch x [B, ...] (over samples and spatial positions) is
    set to (1-t) stat_A + t stat_B by scaling the unit's weight row and bias:
    ``W_i <- s_i W_i, b_i <- s_i b_i + (mu_i - s_i m_i)`` with ``s_i = sigma_i / (std_i + eps)``
    and (m_i, std_i) the unit's current statistics. The output layer is left alone.
    """
    if not repairable(model):
        raise ValueError("repair: needs an nn.Sequential of Linear/Conv/activation/pooling/Flatten layers "
                         "whose hidden Linear/Conv have biases (BatchNorm nets: reset statistics instead)")
    with mode(model):  # dropout off
        return _repair(model, a, b, states, ts, x, eps)


def _repair(model, a, b, states, ts, x, eps):
    k, t = next(iter(a.values())).shape[0], len(ts)
    out = {n: v.clone() for n, v in states.items()}
    dtype = next(iter(a.values())).dtype
    h_a = x.to(dtype).expand(k, *x.shape)
    h_b, h = h_a, x.to(dtype).expand(k * t, *x.shape)
    last = [name for name, m in model.named_children() if isinstance(m, _LAYERS)][-1]
    tt = ts.to(dtype).repeat(k).view(-1, 1)
    for name, m in model.named_children():
        z_a, z_b, z = run_module(name, m, a, h_a), run_module(name, m, b, h_b), run_module(name, m, out, h)
        if isinstance(m, _LAYERS) and name != last:
            (mu_a, sd_a), (mu_b, sd_b), (mu, sd) = unit_stats(z_a), unit_stats(z_b), unit_stats(z)
            mu_t = (1 - tt) * mu_a.repeat_interleave(t, 0) + tt * mu_b.repeat_interleave(t, 0)
            sd_t = (1 - tt) * sd_a.repeat_interleave(t, 0) + tt * sd_b.repeat_interleave(t, 0)
            scale = sd_t / (sd + eps)
            shift = mu_t - mu * scale
            w, bias = f"{name}.weight", f"{name}.bias"
            out[w] = out[w] * scale.view(*scale.shape, *[1] * (out[w].dim() - 2))
            out[bias] = out[bias] * scale + shift
            z = run_module(name, m, out, h)
        h_a, h_b, h = z_a, z_b, z
    return out


def _repair_chunked(model, a, b, states, ts, x, budget: float = 3e7) -> dict[str, Tensor]:
    """``repair`` over chunks of pairs so K x T x B x (largest activation) stays under ``budget`` numbers."""
    with torch.no_grad():
        h, widest = x[:1], x[:1].numel()
        for m in model:
            h = m(h)
            widest = max(widest, h.numel())
    k, t = next(iter(a.values())).shape[0], len(ts)
    step = max(1, int(budget // (t * len(x) * widest)))
    parts = []
    for i in range(0, k, step):
        sel = slice(i, i + step)
        parts.append(repair(model, {n: v[sel] for n, v in a.items()}, {n: v[sel] for n, v in b.items()},
                            {n: v[i * t:(i + step) * t] for n, v in states.items()}, ts, x))
    return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}


def _layer_groups(model: nn.Module, params: dict[str, Tensor]) -> dict[str, set[str]]:
    """Layer name -> the parameter names that move together in layer-wise interpolation (weight and bias).

    Parameters of the model itself (a transformer's cls and pos embeddings) have no layer: each is
    its own group, named after it."""
    groups = {}
    for name, m in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False)]
        own = [n for n in own if n in params]
        if not name:
            groups.update({n: {n} for n in own if params[n].dim() > 2})
        elif any(params[n].dim() > 2 for n in own):
            groups[name] = set(own)
    return groups


def _barrier_columns(values: dict[str, np.ndarray], ts: Tensor) -> dict[str, object]:
    cols: dict[str, object] = {}
    for name, v in values.items():
        cols[f"curve.{name}"] = list(v)
        cols.update({f"barrier_{var}.{name}": x for var, x in barrier_variants(v, ts.numpy()).items()})
    return cols


def lmc_pairs(model: nn.Module, objective, params: dict[str, Tensor], buffers: dict[str, Tensor], pairs: Tensor,
              splits: dict, probe_x: Tensor, alignments=ALIGNMENTS, n_points: int = 11, layerwise: bool = True,
              seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Aligned-path metrics for K pairs [K, 2] of the stacked population ``params``/``buffers`` [M, ...].

    ``splits``: {split: (x, y)} scored along every path; ``probe_x`` [B, ...]: the batch for
    activation matching, REPAIR statistics and BatchNorm resets. Returns (rows, permutations):

    rows: one per (pair, alignment), in alignment-major order, with ``pair_index``, ``alignment``,
    ``curve.<split>.<metric>`` (T values), ``barrier_<max|lin|mid>.<split>.<metric>``, ``l2`` and
    ``cosine`` (A vs aligned B), ``l2_before``/``cosine_before`` (raw pair) and, for alignments
    without ``+repair``, ``svd_align.*`` and (``layerwise``) ``layer_barrier.<layer>.train.loss``.
    permutations: {"<alignment>/<perm name>": int array [K, n]} mapping B onto A (``apply_permutation``).
    """
    unknown = set(alignments) - set(ALIGNMENTS + OPT_IN)
    if unknown:
        raise ValueError(f"lmc_pairs: unknown alignments {sorted(unknown)}; choose from {list(ALIGNMENTS + OPT_IN)}")
    pairs = torch.as_tensor(np.asarray(pairs), dtype=torch.long).reshape(-1, 2)
    spec = permutation_spec(model)
    ts = interpolation_points(n_points)
    k = len(pairs)
    reset_x = probe_x if has_batchnorm(model) else None
    matched: dict[str, dict[str, Tensor]] = {}
    tables, perms_out = [], {}
    for alignment in alignments:
        base, _, fix = alignment.partition("+")
        if fix == "repair" and (reset_x is not None or not repairable(model)):
            continue  # BatchNorm nets: the reset at every point is REPAIR; other graphs: not implemented
        if base not in matched:
            if base == "none":
                matched[base] = identity_perms(spec, k)
            elif base == "weight":
                matched[base] = weight_matching(spec, params, pairs, seed=seed)["perms"]
            elif base == "ste":
                matched[base] = ste_matching(model, objective, spec, params, buffers, pairs, *splits["train"],
                                             seed=seed)["perms"]
            else:
                with mode(model):
                    matched[base] = activation_matching(model, spec, params, buffers, pairs, probe_x)
        perms = matched[base]
        a, b = aligned_pairs(spec, {**params, **buffers}, pairs, perms)
        pa, pb = {n: a[n] for n in params}, {n: b[n] for n in params}
        ba, bb = {n: a[n] for n in buffers}, {n: b[n] for n in buffers}
        if fix == "repair":
            states = _repair_chunked(model, pa, pb, interpolate(pa, pb, ts), ts, probe_x)
            raw = evaluate_states(model, objective, states, interpolate(ba, bb, ts), splits, reset_x)
        else:
            raw = evaluate_line(model, objective, pa, pb, ba, bb, ts, splits, reset_x)
        values = curves(raw, k, n_points)
        cols: dict[str, object] = {"pair_index": np.arange(k), "alignment": alignment}
        cols.update(_barrier_columns(values, ts))
        dist = alignment_distances(spec, params, pairs, perms)
        cols.update({"l2": dist["l2_after"].numpy(), "cosine": dist["cosine_after"].numpy(),
                     "l2_before": dist["l2_before"].numpy(), "cosine_before": dist["cosine_before"].numpy()})
        if not fix:
            for key, v in singular_vector_alignment(spec, params, pairs, perms).items():
                cols["svd_align." + key.replace("/", ".")] = v.numpy()
            if layerwise and "train" in splits:
                train = {"train": splits["train"]}
                fixed_buffers = interpolate(ba, ba, ts)
                for layer, names in _layer_groups(model, params).items():
                    moved = interpolate(pa, pb, ts, only=names)
                    v = curves(evaluate_states(model, objective, moved, fixed_buffers, train, reset_x),
                               k, n_points)["train.loss"]
                    cols[f"layer_barrier.{layer}.train.loss"] = barrier_variants(v, ts.numpy())["max"]
        tables.append(pd.DataFrame(cols))
        for p, v in perms.items():
            perms_out[f"{alignment}/{p}"] = v.numpy()
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()), perms_out


MODE_ALIGNMENTS = {"weight": ("weight",), "ste": ("weight", "ste"), "all": ("weight", "activation", "weight+repair")}


def measure(pop: Population, spec) -> Measured:
    """Aligned paths of the population's pairs for the alignments of ``metrics.lmc`` (weight |
    ste | all), with each pair's permutation of model b as ``perm.<name>`` columns."""
    pairs = pop.pairs(spec.pairs == "population")
    params, buffers = pop.final
    rows, perms = lmc_pairs(pop.model, pop.objective, params, buffers, pairs, pop.splits, pop.probe(spec.probe_size),
                            alignments=MODE_ALIGNMENTS[spec.lmc], n_points=spec.curve_points,
                            layerwise=spec.lmc == "all")
    for key, value in perms.items():  # "<alignment>/<perm name>" -> [K, n]
        alignment, _, name = key.partition("/")
        column = np.empty(len(rows), dtype=object)
        for row in np.flatnonzero((rows["alignment"] == alignment).to_numpy()):
            column[row] = np.asarray(value)[rows["pair_index"].iloc[row]]
        rows[f"perm.{name}"] = column
    return Measured(tables={"pairs": rows})


METRIC = Metric(
    name="lmc",
    protocol="build: `metrics.lmc = \"weight\"`; `\"ste\"` adds STE (zoo/metrics/ste.py); `\"all\"` every alignment; "
             "`metrics.pairs = \"population\"` adds pairs across cells",
    switch="lmc", on="all", off="none", applies_to="pair", compute=measure, needs_pairs=True,
    about="linear mode connectivity after permutation alignment (weight / activation matching, STE, REPAIR)",
    columns={})  # its rows are pairs.parquet's aligned rows (the card's pairs section)

__all__ = ["ALIGNMENTS", "METRIC", "MODE_ALIGNMENTS", "lmc_pairs", "measure", "repair", "repairable"]
