"""Aligned linear mode connectivity: planted permutations, REPAIR statistics, BatchNorm resets,
layer-wise barriers, batching over pairs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from zoo.functional import stack_states
from zoo.generators.architectures.cnn import CNNConfig
from zoo.generators.architectures.cnn import build as build_cnn
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.lmc import lmc_pairs, repair
from zoo.metrics.matching import apply_permutation_stacked, permutation_spec, random_perms
from zoo.metrics.paths import curves, evaluate_states, interpolate, interpolation_points, reset_batchnorm


def _mlp():
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3))


def _data(n=200, seed=0, shape=(6,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    f = x.reshape(n, -1)
    return x, (f[:, 0] + f[:, 1] > 0).long() + (f[:, 2] > 1).long()


def _train(net, x, y, steps=150):
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def _plant(net):
    """Population [A, B] with B = A with every hidden unit permuted (params and buffers)."""
    params, buffers = stack_states([net])
    spec = permutation_spec(net)
    perm = random_perms(spec, 1, seed=3)
    both = {**params, **buffers}
    b = apply_permutation_stacked(spec, perm, both)
    return ({k: torch.cat([params[k], b[k]]) for k in params}, {k: torch.cat([buffers[k], b[k]]) for k in buffers})


def test_planted_permutation_is_undone():
    torch.manual_seed(0)
    x, y = _data()
    model = _train(_mlp(), x, y)
    params, buffers = _plant(model)
    splits = {"train": (x, y), "test": _data(100, 1)}
    rows, perms = lmc_pairs(model, Classification(), params, buffers, torch.tensor([[0, 1]]), splits, x, n_points=5)
    assert rows["alignment"].tolist() == ["none", "weight", "activation", "weight+repair"]
    naive, aligned = rows.iloc[0], rows.iloc[1:]
    assert naive["barrier_max.train.loss"] > 0.1 and naive["l2"] > 1.0 and naive["cosine"] < 0.9
    assert naive["l2"] == naive["l2_before"]
    for _, r in aligned.iterrows():
        for col in ("barrier_max.train.loss", "barrier_lin.test.err", "barrier_mid.test.loss"):
            assert abs(r[col]) < 1e-5, (r["alignment"], col)
        assert r["l2"] < 1e-5 and np.isclose(r["cosine"], 1.0) and r["l2_before"] == naive["l2"]
    assert {key.split("/")[0] for key in perms} == {"none", "weight", "activation", "weight+repair"}
    assert all(sorted(v[0].tolist()) == list(range(v.shape[1])) for v in perms.values())
    # B rebuilt from the stored permutation is A again
    spec = permutation_spec(model)
    rebuilt = apply_permutation_stacked(spec, {p: torch.from_numpy(perms[f"weight/{p}"]) for p in spec.sizes},
                                        {k: v[1:] for k, v in params.items()})
    assert all(torch.allclose(rebuilt[k][0], params[k][0]) for k in params)
    # every layer of A and aligned B is identical: layer-wise barriers vanish; the raw pair's do not
    layer_cols = [c for c in rows if c.startswith("layer_barrier.")]
    assert len(layer_cols) == 3 and np.allclose(rows.loc[1, layer_cols].astype(float), 0, atol=1e-5)
    assert rows.loc[0, "layer_barrier.0.train.loss"] > 0
    # Ito et al.: permuting B back onto A aligns every singular vector exactly
    assert np.isclose(rows.loc[1, "svd_align.2.weight.left_after"], 1.0)
    assert rows.loc[0, "svd_align.2.weight.left_after"] < 0.9
    assert np.isnan(rows.loc[3, "svd_align.2.weight.left_after"])  # not repeated for the repaired row


def _check_repair_statistics(models, upto, x):
    """After REPAIR, unit statistics of the layer ``models[i][:upto]`` ends in are the interpolated targets."""
    model = models[0]
    params, _ = stack_states(models)
    a = {k: v[:1] for k, v in params.items()}
    b = {k: v[1:] for k, v in params.items()}
    ts = interpolation_points(5)
    fixed = repair(model, a, b, interpolate(a, b, ts), ts, x)

    def stats(z):
        z = z.movedim(1, -1).reshape(-1, z.shape[1])
        return z.mean(0), z.std(0)

    with torch.no_grad():
        (ma, sa), (mb, sb) = stats(models[0][:upto](x)), stats(models[1][:upto](x))
        for i, t in enumerate(ts.tolist()):
            net = copy.deepcopy(model)
            net.load_state_dict({k: v[i] for k, v in fixed.items()})
            m, s = stats(net[:upto](x))
            np.testing.assert_allclose(m, (1 - t) * ma + t * mb, atol=1e-4)
            np.testing.assert_allclose(s, (1 - t) * sa + t * sb, rtol=1e-3, atol=1e-4)
        # the plain interpolation misses the targets (variance collapse)
        net.load_state_dict({k: v[2] for k, v in interpolate(a, b, ts).items()})
        assert not torch.allclose(stats(net[:upto](x))[1], (sa + sb) / 2, rtol=1e-2)


def test_repair_sets_interpolated_unit_statistics():
    torch.manual_seed(1)
    x, _ = _data(300)
    _check_repair_statistics([_mlp() for _ in range(2)], 3, x)  # second hidden layer pre-activations


def test_repair_conv_statistics_per_channel():
    torch.manual_seed(4)

    def cnn():
        return nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.MaxPool1d(2), nn.Tanh(), nn.Conv1d(6, 5, 3),
                             nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6, 3))

    x, _ = _data(100, 2, shape=(2, 16))
    _check_repair_statistics([cnn(), cnn()], 4, x)  # second conv's output, over samples and positions


def test_batchnorm_cnn_is_scored_with_reset_statistics():
    torch.manual_seed(5)
    x, y = _data(128, 3, shape=(1, 16))
    model = _train(build_cnn(CNNConfig(in_channels=1, out_dim=3, width=8, depth=2)), x, y, steps=40)
    params, buffers = _plant(model)
    splits = {"train": (x, y)}
    probe = x[:64]
    rows, _ = lmc_pairs(model, Classification(), params, buffers, torch.tensor([[0, 1]]), splits, probe,
                        alignments=("none", "weight", "weight+repair"), n_points=5)
    assert rows["alignment"].tolist() == ["none", "weight"]  # REPAIR of a BN net is the reset itself
    ts = interpolation_points(5)
    side = lambda s, i: {k: v[i:i + 1] for k, v in s.items()}  # noqa: E731
    states = interpolate(side(params, 0), side(params, 1), ts)
    bufs = interpolate(side(buffers, 0), side(buffers, 1), ts)
    fresh = reset_batchnorm(model, states, bufs, probe)
    want = curves(evaluate_states(model, Classification(), states, fresh, splits), 1, 5)["train.loss"][0]
    np.testing.assert_allclose(rows.loc[0, "curve.train.loss"], want, rtol=1e-5)
    stale = curves(evaluate_states(model, Classification(), states, bufs, splits), 1, 5)["train.loss"][0]
    assert not np.allclose(stale, want, rtol=1e-3)  # the reset changes the numbers
    aligned = np.asarray(rows.loc[1, "curve.train.loss"])
    np.testing.assert_allclose(aligned, want[0], rtol=1e-4)  # aligned B = A: flat path at A's (reset) loss
    assert abs(rows.loc[1, "barrier_max.train.loss"]) < 1e-5 < rows.loc[0, "barrier_max.train.loss"]


def test_layer_barrier_of_identical_layer_is_zero():
    torch.manual_seed(6)
    a, other = _mlp(), _mlp()
    b = copy.deepcopy(a)
    b[2].load_state_dict(other[2].state_dict())  # only the middle layer differs
    params, buffers = stack_states([a, b])
    x, y = _data()
    rows, _ = lmc_pairs(a, Classification(), params, buffers, torch.tensor([[0, 1]]), {"train": (x, y)}, x,
                        alignments=("none",), n_points=5)
    assert rows.loc[0, "layer_barrier.0.train.loss"] == pytest.approx(0, abs=1e-7)
    assert rows.loc[0, "layer_barrier.4.train.loss"] == pytest.approx(0, abs=1e-7)
    assert abs(rows.loc[0, "layer_barrier.2.train.loss"]) > 1e-4


def test_batched_pairs_equal_pair_by_pair():
    torch.manual_seed(2)
    models = [_mlp() for _ in range(4)]
    params, buffers = stack_states(models)
    x, y = _data()
    splits = {"train": (x, y)}
    pairs = torch.tensor([[0, 1], [2, 3], [3, 1]])
    rows, perms = lmc_pairs(models[0], Classification(), params, buffers, pairs, splits, x, n_points=5)
    numeric = [c for c in rows if c.startswith(("barrier_", "layer_barrier", "svd_align", "l2", "cosine"))]
    for k in range(len(pairs)):
        one, one_perms = lmc_pairs(models[0], Classification(), params, buffers, pairs[k:k + 1], splits, x,
                                   n_points=5)
        both = rows[rows["pair_index"] == k].reset_index(drop=True)
        assert both["alignment"].tolist() == one["alignment"].tolist()
        np.testing.assert_allclose(both[numeric].to_numpy(float), one[numeric].to_numpy(float), rtol=1e-4, atol=1e-6)
        for p, v in perms.items():
            assert (v[k] == one_perms[p][0]).all()


@pytest.mark.parametrize("family", ["vit", "gpt"])
def test_transformer_pairs_are_aligned_and_finite(family):
    """ViT/GPT population [A, B, pi(A)]: pi(A) aligns back onto A exactly (flat path, zero distance)
    by weight and by activation matching; the unrelated pair gets finite barriers."""
    from zoo.generators.architectures import build_model

    torch.manual_seed(7)
    if family == "vit":
        kw = dict(in_channels=1, image_size=8, width=16, heads=4, patch_size=4)
        x = torch.randn(64, 1, 8, 8)
    else:
        kw = dict(vocab_size=11, block_size=5, width=16, heads=2)
        x = torch.randint(0, 11, (64, 5))
    y = torch.randint(0, 3, (64,))
    models = [build_model(family, out_dim=3, depth=2, **kw).eval() for _ in range(2)]
    params, buffers = stack_states(models)
    planted, _ = _plant(models[0])
    params = {k: torch.cat([params[k], planted[k][1:]]) for k in params}
    rows, perms = lmc_pairs(models[0], Classification(), params, buffers, torch.tensor([[0, 2], [0, 1]]),
                            {"train": (x, y)}, x, n_points=5)
    assert rows["alignment"].tolist() == ["none"] * 2 + ["weight"] * 2 + ["activation"] * 2  # no REPAIR
    barriers = rows[[c for c in rows if c.startswith(("barrier_", "layer_barrier"))]].to_numpy(float)
    assert np.isfinite(barriers).all() and np.isfinite(rows[["l2", "cosine"]].to_numpy(float)).all()
    for _, r in rows[(rows["pair_index"] == 0) & (rows["alignment"] != "none")].iterrows():
        assert r["l2"] < 1e-5 < r["l2_before"] and abs(r["barrier_max.train.loss"]) < 1e-5
    heads = "P_blocks.1.attn.qkv"
    assert perms[f"weight/{heads}"].shape == (2, models[0].blocks[1].attn.heads)
