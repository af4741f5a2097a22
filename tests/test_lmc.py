"""Aligned linear mode connectivity: planted permutations, REPAIR statistics, layer-wise barriers."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zoo.functional import stack_states
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.lmc import lmc_pairs, repair
from zoo.metrics.matching import apply_permutation_stacked, permutation_spec, random_perms
from zoo.metrics.paths import interpolate, interpolation_points


def _mlp():
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3))


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def _planted():
    torch.manual_seed(0)
    a = _mlp()
    params, buffers = stack_states([a, _mlp()])
    spec = permutation_spec(a)
    perm = random_perms(spec, 1, seed=3)
    b = apply_permutation_stacked(spec, perm, {k: v[:1] for k, v in params.items()})
    params = {k: torch.cat([params[k][:1], b[k]]) for k in params}  # model 1 = model 0, units shuffled
    return a, params, buffers


def test_planted_permutation_is_undone():
    model, params, buffers = _planted()
    x, y = _data()
    splits = {"train": (x, y), "test": _data(100, 1)}
    rows, perms = lmc_pairs(model, Classification(), params, buffers, torch.tensor([[0, 1]]), splits, x,
                            alignments=("weight", "activation", "weight+repair"), n_points=5)
    assert rows["alignment"].tolist() == ["weight", "activation", "weight+repair"]
    for _, r in rows.iterrows():
        assert abs(r["barrier_max.train.loss"]) < 1e-5 and r["l2_after"] < 1e-5
        assert np.isclose(r["cosine_after"], 1.0) and r["l2_before"] > 1.0
    assert {key.split("/")[0] for key in perms} == {"weight", "activation", "weight+repair"}
    assert all(sorted(v[0].tolist()) == list(range(v.shape[1])) for v in perms.values())
    # every layer of A and aligned B is identical: layer-wise barriers vanish
    layer_cols = [c for c in rows if c.startswith("layer_barrier.")]
    assert len(layer_cols) == 3 and np.allclose(rows.loc[0, layer_cols].astype(float), 0, atol=1e-5)


def test_repair_sets_interpolated_unit_statistics():
    torch.manual_seed(1)
    models = [_mlp() for _ in range(2)]
    model = models[0]
    params, _ = stack_states(models)
    a = {k: v[:1] for k, v in params.items()}
    b = {k: v[1:] for k, v in params.items()}
    ts = interpolation_points(5)
    x, _ = _data(300)
    fixed = repair(model, a, b, interpolate(a, b, ts), ts, x)
    with torch.no_grad():
        z_a, z_b = models[0][:3](x), models[1][:3](x)  # second hidden layer pre-activations
        for i, t in enumerate(ts.tolist()):
            net = _mlp()
            net.load_state_dict({k: v[i] for k, v in fixed.items()})
            z = net[:3](x)
            np.testing.assert_allclose(z.mean(0), (1 - t) * z_a.mean(0) + t * z_b.mean(0), atol=1e-4)
            np.testing.assert_allclose(z.std(0), (1 - t) * z_a.std(0) + t * z_b.std(0), rtol=1e-3, atol=1e-4)


def test_batched_pairs_equal_pair_by_pair():
    torch.manual_seed(2)
    models = [_mlp() for _ in range(4)]
    params, buffers = stack_states(models)
    x, y = _data()
    splits = {"train": (x, y)}
    pairs = torch.tensor([[0, 1], [2, 3]])
    rows, perms = lmc_pairs(models[0], Classification(), params, buffers, pairs, splits, x,
                            alignments=("weight",), n_points=5, layerwise=False)
    for k in range(2):
        one, one_perms = lmc_pairs(models[0], Classification(), params, buffers, pairs[k:k + 1], splits, x,
                                   alignments=("weight",), n_points=5, layerwise=False)
        np.testing.assert_allclose(rows.loc[k, "barrier_max.train.loss"], one.loc[0, "barrier_max.train.loss"],
                                   rtol=1e-5)
        for p, v in perms.items():
            assert (v[k] == one_perms[p][0]).all()
