"""Permutation specs, applying permutations and weight/activation matching (zoo.metrics.matching).

Checks against brute force over all permutations of tiny hidden layers, against planted
permutations, pair-by-pair against batched, and the objective against the `rebasin` package.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.functional import from_flat, load_flat, population_forward, stack_states
from zoo.generators.architectures import build_model
from zoo.metrics.matching import (
    activation_matching,
    aligned_pairs,
    alignment_distances,
    apply_permutation,
    apply_permutation_stacked,
    hidden_features,
    identity_perms,
    matching_objective,
    permutation_spec,
    random_perms,
    singular_vector_alignment,
    weight_matching,
)

torch.set_num_threads(1)


class TinyResidual(nn.Module):
    """Conv stem, one identity-shortcut block, one projection-shortcut block, linear head."""

    def __init__(self, c: int = 4, n_out: int = 3):
        super().__init__()
        self.stem = nn.Conv1d(1, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm1d(c)
        self.conv1 = nn.Conv1d(c, c + 1, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(c + 1)
        self.conv2 = nn.Conv1d(c + 1, c, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(c)
        self.down = nn.Conv1d(c, 2 * c, 1, stride=2, bias=False)
        self.conv3 = nn.Conv1d(c, 2 * c, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * c, n_out)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        h = F.relu(h + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))
        h = torch.relu(self.down(h) + self.conv3(h))
        return self.head(F.adaptive_avg_pool1d(h, 1).flatten(1))


ARCHS = {  # name -> (builder, probe input)
    "mlp": (lambda: build_model("mlp", in_dim=6, out_dim=3, width=5, depth=2), lambda: torch.randn(16, 6)),
    "cnn_bn": (lambda: build_model("cnn", in_channels=1, out_dim=3, spatial_dims=1, width=4, depth=2),
               lambda: torch.randn(16, 1, 12)),
    "cnn_flatten": (lambda: build_model("cnn_s", in_channels=1, image_size=28, out_dim=3, width=4),
                    lambda: torch.randn(4, 1, 28, 28)),
    "cnn_l": (lambda: build_model("cnn_l", in_channels=3, image_size=32, out_dim=3, width=4),
              lambda: torch.randn(4, 3, 32, 32)),
    "mlp_dropout": (lambda: build_model("mlp", in_dim=6, out_dim=3, width=5, depth=2, dropout=0.5),
                    lambda: torch.randn(16, 6)),
    "cnn_dropout": (lambda: build_model("cnn", in_channels=1, out_dim=3, spatial_dims=1, width=4, depth=2,
                                        dropout=0.5), lambda: torch.randn(16, 1, 12)),
    "residual": (TinyResidual, lambda: torch.randn(16, 1, 12)),
    "resnet18": (lambda: build_model("resnet18", in_channels=3, out_dim=3, width=2),
                 lambda: torch.randn(2, 3, 8, 8)),
    "resnet50": (lambda: build_model("resnet50", in_channels=3, out_dim=3, width=2),
                 lambda: torch.randn(2, 3, 8, 8)),
    "vit": (lambda: build_model("vit", in_channels=1, image_size=8, out_dim=3, width=16, depth=2, heads=4,
                                patch_size=4), lambda: torch.randn(8, 1, 8, 8)),
    "gpt": (lambda: build_model("gpt", vocab_size=11, block_size=5, out_dim=3, width=16, depth=2, heads=2),
            lambda: torch.randint(0, 11, (8, 5))),
    "mixer": (lambda: build_model("mixer", in_channels=1, image_size=8, out_dim=3, width=8, depth=2, patch_size=2),
              lambda: torch.randn(8, 1, 8, 8)),
}


def _random_model(build, seed: int) -> nn.Module:
    """A model with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build().eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn_like(t))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand_like(t))
            elif t.is_floating_point() and name.endswith(("bn0.weight", "bn1.weight", "bn2.weight", "bias",
                                                          "ln1.weight", "ln2.weight", "ln.weight", "cls")):
                t.add_(0.1 * torch.randn_like(t))
    return model


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}


# ---------------------------------------------------------------- the spec

def test_spec_of_mlp_permutes_hidden_units_only():
    spec = permutation_spec(build_model("mlp", in_dim=6, out_dim=3, width=5, depth=2))
    assert spec.perm_to_axes == {"P_0": [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)],
                                 "P_2": [("2.weight", 0), ("2.bias", 0), ("4.weight", 1)]}
    assert spec.axes_to_perm["0.weight"] == ("P_0", None)  # input never permuted
    assert spec.axes_to_perm["4.weight"] == (None, "P_2")  # output never permuted
    assert spec.axes_to_perm["4.bias"] == (None,)
    assert spec.sizes == {"P_0": 5, "P_2": 5}


def test_spec_of_cnn_shares_channel_perm_with_batchnorm_buffers():
    spec = permutation_spec(ARCHS["cnn_bn"][0]())
    for role in ("weight", "bias", "running_mean", "running_var"):
        assert spec.axes_to_perm[f"1.{role}"] == ("P_0",)
    assert spec.axes_to_perm["0.weight"] == ("P_0", None, None)
    assert spec.axes_to_perm["4.weight"] == ("P_4", "P_0", None)
    assert spec.axes_to_perm["10.weight"] == (None, "P_4")  # GAP + Flatten keeps the channel perm
    assert spec.blocks == {}


def test_spec_flatten_of_spatial_map_is_block_permutation():
    model = ARCHS["cnn_flatten"][0]()
    spec = permutation_spec(model)
    (name, axis), (runs, block) = next(iter(spec.blocks.items()))
    lin = dict(model.named_modules())[name.rsplit(".", 1)[0]]
    perm = spec.axes_to_perm[name][axis]
    assert axis == 1 and runs == 1 and block > 1 and spec.sizes[perm] * block == lin.in_features


def test_spec_residual_add_joins_permutations_union_find():
    spec = permutation_spec(TinyResidual())
    a2p = spec.axes_to_perm
    stream = a2p["stem.weight"][0]
    assert a2p["bn0.weight"] == a2p["bn2.running_var"] == (stream,)
    assert a2p["conv2.weight"][0] == stream and a2p["conv1.weight"][1] == stream
    assert a2p["conv1.weight"][0] not in (None, stream)
    proj = a2p["down.weight"][0]
    assert proj == a2p["conv3.weight"][0] == a2p["head.weight"][1] and proj not in (None, stream)
    assert a2p["down.weight"][1] == a2p["conv3.weight"][1] == stream
    assert len(spec.perm_to_axes) == 3


def test_spec_refuses_unsupported_layers_with_clear_error():
    with pytest.raises(ValueError, match="unsupported module LayerNorm"):
        permutation_spec(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="grouped convolution"):
        permutation_spec(nn.Sequential(nn.Conv1d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("arch", ["vit", "gpt"])
def test_transformer_spec_permutes_stream_mlp_units_and_whole_heads(arch):
    model = ARCHS[arch][0]()
    spec = permutation_spec(model)
    a2p, stream = spec.axes_to_perm, ("P_patch" if arch == "vit" else "P_tok")
    heads = model.blocks[0].attn.heads
    d_head = 16 // heads
    assert spec.sizes == {stream: 16, **{f"P_blocks.{i}.{p}": n for i in range(2)
                                         for p, n in (("attn.qkv", heads), ("mlp.0", 64))}}
    floats = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    assert set(a2p) == floats and [k for k in floats if not any(a2p[k])] == ["head.bias"]
    assert a2p["pos"] == (None, None, stream) and a2p["head.weight"] == (None, stream)
    assert a2p["blocks.1.ln2.bias"] == a2p["ln.weight"] == a2p["blocks.0.mlp.2.bias"] == (stream,)
    assert a2p["blocks.1.attn.qkv.weight"] == ("P_blocks.1.attn.qkv", stream)
    assert a2p["blocks.1.attn.proj.weight"] == (stream, "P_blocks.1.attn.qkv")
    assert a2p["blocks.0.mlp.2.weight"] == (stream, "P_blocks.0.mlp.0")
    assert spec.blocks[("blocks.0.attn.qkv.weight", 0)] == spec.blocks[("blocks.0.attn.qkv.bias", 0)] == (3, d_head)
    assert spec.blocks[("blocks.0.attn.proj.weight", 1)] == (1, d_head)


def test_head_permutation_moves_whole_heads_in_q_k_and_v():
    model = ARCHS["vit"][0]()
    spec = permutation_spec(model)
    bias = torch.arange(48.0)  # qkv bias entries laid out [3, heads=4, d_head=4]
    moved = apply_permutation(spec, {**identity_perms(spec), "P_blocks.0.attn.qkv": torch.tensor([2, 0, 3, 1])},
                              {"blocks.0.attn.qkv.bias": bias})["blocks.0.attn.qkv.bias"]
    want = bias.view(3, 4, 4)[:, [2, 0, 3, 1]].reshape(-1)
    assert torch.equal(moved, want) and torch.equal(moved[:4], torch.arange(8.0, 12.0))


def test_declared_transformer_spec_refuses_a_tensor_it_does_not_know():
    model = ARCHS["gpt"][0]()
    model.blocks[0].attn.gain = nn.Parameter(torch.ones(16))
    with pytest.raises(ValueError, match=r"does not cover \['blocks.0.attn.gain'\]"):
        permutation_spec(model)


def test_residual_stream_reaching_the_output_is_not_permuted():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return x + self.fc(x)

    spec = permutation_spec(Skip())
    assert spec.perm_to_axes == {} and spec.axes_to_perm["fc.weight"] == (None, None)


# ---------------------------------------------------------------- applying permutations

@pytest.mark.parametrize("arch", list(ARCHS))
def test_apply_permutation_preserves_function(arch):
    build, probe = ARCHS[arch]
    model = _random_model(build, 0)
    spec = permutation_spec(model)
    x = probe()
    state = _float_state(model)
    with torch.no_grad():
        y = model(x)
        perms = {p: v[0] for p, v in random_perms(spec, 1, seed=1).items()}
        permuted = apply_permutation(spec, perms, state)
        assert any(not torch.equal(permuted[k], state[k]) for k in state)  # it did move weights
        model.load_state_dict(permuted, strict=False)
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
        # a wrong permutation of one tensor must break it (the check can fail)
        p0 = next(iter(spec.perm_to_axes))
        name, axis = spec.perm_to_axes[p0][0]
        broken = dict(permuted)
        broken[name] = permuted[name].roll(1, dims=axis)
        model.load_state_dict(broken, strict=False)
        assert (model(x) - y).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ["residual", "vit", "gpt", "mixer"])
def test_apply_permutation_stacked_equals_one_by_one_and_inverts(arch):
    build, probe = ARCHS[arch]
    models = [_random_model(build, s) for s in range(3)]
    spec = permutation_spec(models[0])
    params, buffers = stack_states(models)
    state = {**params, **buffers}
    perms = random_perms(spec, 3, seed=2)
    stacked = apply_permutation_stacked(spec, perms, state)
    for m in range(3):
        one = apply_permutation(spec, {p: v[m] for p, v in perms.items()},
                                {k: v[m] for k, v in state.items()})
        for k in state:
            assert torch.equal(stacked[k][m], one[k])
    inverse = {p: torch.argsort(v, dim=1) for p, v in perms.items()}
    back = apply_permutation_stacked(spec, inverse, stacked)
    assert all(torch.equal(back[k], state[k]) for k in state)
    # stacked forward of permuted population = original population
    x = probe()
    with torch.no_grad():
        y = population_forward(models[0], params, buffers, x)
        p2 = {k: stacked[k] for k in params}
        b2 = {k: stacked[k] for k in buffers}
        torch.testing.assert_close(population_forward(models[0], p2, b2, x), y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- weight matching

def _objective_under(spec, a, b, perms_single):
    perms = {p: v[None] for p, v in perms_single.items()}
    return float(matching_objective(spec, {k: v[None] for k, v in a.items()},
                                    {k: v[None] for k, v in b.items()}, perms)[0])


def test_weight_matching_one_hidden_layer_is_the_brute_force_optimum():
    build = lambda: build_model("mlp", in_dim=4, out_dim=3, width=5, depth=1)  # noqa: E731
    models = [_random_model(build, s) for s in range(2)]
    spec = permutation_spec(models[0])
    params, _ = stack_states(models)
    out = weight_matching(spec, params, [(0, 1)])
    a, b = {k: v[0] for k, v in params.items()}, {k: v[1] for k, v in params.items()}
    values = {perm: _objective_under(spec, a, b, {"P_0": torch.tensor(perm)})
              for perm in itertools.permutations(range(5))}
    best = max(values, key=values.get)
    assert tuple(out["perms"]["P_0"][0].tolist()) == best
    assert float(out["objective"][0]) == pytest.approx(values[best], rel=1e-12)
    assert float(out["objective_identity"][0]) == pytest.approx(values[tuple(range(5))], rel=1e-12)


def test_weight_matching_two_hidden_layers_vs_joint_brute_force():
    """Coordinate descent reaches a point no single-permutation change improves (each step is the
    brute-force optimum over all 4! permutations of one layer given the other) and never exceeds the
    joint optimum over all 4! x 4! pairs. It is a local method (as in Ainsworth et al.): on random
    pairs it reaches the joint optimum only sometimes (4 of 10 seeds when written), so that is not
    asserted; recovering a planted permutation exactly is tested below."""
    build = lambda: build_model("mlp", in_dim=3, out_dim=2, width=4, depth=2)  # noqa: E731
    for seed in range(3):
        models = [_random_model(build, 10 * seed + s) for s in range(2)]
        spec = permutation_spec(models[0])
        params, _ = stack_states(models)
        out = weight_matching(spec, params, [(0, 1)], seed=seed)
        a, b = {k: v[0] for k, v in params.items()}, {k: v[1] for k, v in params.items()}
        ours = {p: v[0] for p, v in out["perms"].items()}
        j = _objective_under(spec, a, b, ours)
        assert float(out["objective"][0]) == pytest.approx(j, rel=1e-12)
        all_perms = [torch.tensor(p) for p in itertools.permutations(range(4))]
        joint = max(_objective_under(spec, a, b, {"P_0": p0, "P_2": p2})
                    for p0 in all_perms for p2 in all_perms)
        assert j <= joint + 1e-9
        for name in ours:  # coordinate-wise optimal
            best_single = max(_objective_under(spec, a, b, {**ours, name: p}) for p in all_perms)
            assert j >= best_single - 1e-9


# not "mixer": coordinate descent stalls below the planted optimum on some random Mixers (its stream
# couples to the channel-mixing units only); test_family_registry measures how often it recovers
@pytest.mark.parametrize("arch", ["mlp", "cnn_bn", "cnn_flatten", "residual", "vit", "gpt"])
def test_weight_matching_recovers_planted_permutation(arch):
    build, _ = ARCHS[arch]
    model = _random_model(build, 3)
    spec = permutation_spec(model)
    params, buffers = stack_states([model])
    planted = random_perms(spec, 1, seed=5)
    assert any(not torch.equal(v[0], torch.arange(v.shape[1])) for v in planted.values())
    state_b = apply_permutation_stacked(spec, planted, {**params, **buffers})
    both = {k: torch.cat([params[k], state_b[k]]) for k in params}
    out = weight_matching(spec, both, [(0, 1)])
    for p, v in planted.items():  # B = pi(A), so the matching must be pi^-1
        assert torch.equal(out["perms"][p][0], torch.argsort(v[0]))
    a_dot_a = sum(float((v[0].double() ** 2).sum()) for v in params.values())
    assert float(out["objective"][0]) == pytest.approx(a_dot_a, rel=1e-12)
    _, aligned = aligned_pairs(spec, {**both, **{k: torch.cat([buffers[k], state_b[k]]) for k in buffers}},
                               [(0, 1)], out["perms"])
    for k in params:
        assert torch.equal(aligned[k][0], params[k][0])
    for k in buffers:  # running stats follow the permutation too
        assert torch.equal(aligned[k][0], buffers[k][0])


@pytest.fixture(scope="module")
def trained_mlps():
    from zoo.generators.population import Member, TrainConfig, train_population
    from zoo.generators.tasks import load_task

    data = load_task("mnist1d", 4000, 1000, 42)
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=12, depth=2)  # noqa: E731
    members = [Member(model_id=f"m{i}", seed=i, lr=0.05) for i in range(4)]
    cfg = TrainConfig(steps=150, batch_size=64, checkpoint_steps=[150])
    res = train_population(build, members, data, cfg)
    params, buffers = from_flat(torch.as_tensor(res.weights[-1]), res.layout)
    return build, res, params, buffers, torch.as_tensor(data.x_train[:256])


def test_weight_matching_batched_equals_pair_by_pair(trained_mlps):
    build, _, params, _, _ = trained_mlps
    spec = permutation_spec(build())
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    batched = weight_matching(spec, params, pairs, seed=7)
    for k, pair in enumerate(pairs):
        one = weight_matching(spec, params, [pair], seed=7)
        for p in spec.perm_to_axes:
            assert torch.equal(batched["perms"][p][k], one["perms"][p][0])
        assert batched["sweeps"][k] == one["sweeps"][0]
        torch.testing.assert_close(batched["objective"][k], one["objective"][0], rtol=1e-12, atol=0)
    assert (batched["objective"] > batched["objective_identity"]).all()
    d = alignment_distances(spec, params, pairs, batched["perms"])
    assert (d["l2_after"] < d["l2_before"]).all() and (d["cosine_after"] > d["cosine_before"]).all()
    # J = (|A|^2 + |B|^2 - |A - pi(B)|^2) / 2: the objective is the L2 alignment
    pairs_t = torch.tensor(pairs)
    sq = {i: sum(float((v[i].double() ** 2).sum()) for v in params.values()) for i in range(4)}
    for k, (i, j) in enumerate(pairs_t.tolist()):
        expect = 0.5 * (sq[i] + sq[j] - float(d["l2_after"][k]) ** 2)
        assert float(batched["objective"][k]) == pytest.approx(expect, rel=1e-6)


def test_weight_matching_objective_at_least_rebasin(trained_mlps):
    rebasin = pytest.importorskip("rebasin", reason="rebasin (test oracle) is not installed")
    build, res, params, _, x = trained_mlps
    spec = permutation_spec(build())
    pairs = [(0, 1), (2, 3), (1, 3)]
    ours = weight_matching(spec, params, pairs)
    for k, (i, j) in enumerate(pairs):
        a = load_flat(build(), torch.as_tensor(res.weights[-1][i]), res.layout)
        b = load_flat(build(), torch.as_tensor(res.weights[-1][j]), res.layout)
        with torch.no_grad():
            y_b = b(x)
        torch.manual_seed(0)
        rebasin.PermutationCoordinateDescent(a, b, x[:8]).rebasin()
        with torch.no_grad():
            torch.testing.assert_close(b(x), y_b, rtol=1e-4, atol=1e-5)  # the oracle kept B's function
        theirs = sum(float((pa.detach().double() * pb.detach().double()).sum())
                     for pa, pb in zip(a.parameters(), b.parameters()))
        assert float(ours["objective"][k]) >= theirs - 1e-3 * abs(theirs)
        assert theirs > float(ours["objective_identity"][k])  # the oracle did something


# ---------------------------------------------------------------- activation matching

@pytest.mark.parametrize("arch", ["mlp", "cnn_bn", "residual", "vit", "gpt", "mixer"])
def test_activation_matching_recovers_planted_permutation(arch):
    build, probe = ARCHS[arch]
    model = _random_model(build, 4)
    spec = permutation_spec(model)
    params, buffers = stack_states([model])
    planted = random_perms(spec, 1, seed=6)
    pb = apply_permutation_stacked(spec, planted, {**params, **buffers})
    params2 = {k: torch.cat([params[k], pb[k]]) for k in params}
    buffers2 = {k: torch.cat([buffers[k], pb[k]]) for k in buffers}
    before = {k: v.clone() for k, v in buffers2.items()}
    torch.manual_seed(0)
    perms = activation_matching(model, spec, params2, buffers2, [(0, 1)], probe())
    for p, v in planted.items():
        assert torch.equal(perms[p][0], torch.argsort(v[0]))
    assert all(torch.equal(before[k], buffers2[k]) for k in before)


def test_activation_matching_raises_feature_correlation(trained_mlps):
    build, _, params, buffers, x = trained_mlps
    model = build()
    spec = permutation_spec(model)
    pairs = [(0, 1), (2, 3)]
    perms = activation_matching(model, spec, params, buffers, pairs, x)
    feats = hidden_features(model, params, buffers, x)
    assert set(feats) == set(spec.perm_to_axes) and feats["P_0"].shape == (4, 256, 12)
    # the recorded features are the ReLU outputs of the first hidden layer
    with torch.no_grad():
        h0 = torch.relu(population_forward(model[:1], {k: params[k] for k in ("0.weight", "0.bias")}, {}, x))
    torch.testing.assert_close(feats["P_0"], h0)
    for p in spec.perm_to_axes:
        f = feats[p].double()
        z = (f - f.mean(1, keepdim=True)) / (f.std(1, unbiased=False, keepdim=True) + 1e-8)
        for k, (i, j) in enumerate(pairs):
            corr = z[i].T @ z[j] / f.shape[1]
            ident = corr.diagonal().sum()
            matched = corr[torch.arange(12), perms[p][k]].sum()
            assert matched > ident
            # LAP optimum: no assignment from a few random ones beats it
            g = torch.Generator().manual_seed(k)
            for _ in range(50):
                assert corr[torch.arange(12), torch.randperm(12, generator=g)].sum() <= matched + 1e-12


def test_transformer_hidden_features_are_stream_mlp_and_head_outputs():
    build, probe = ARCHS["gpt"]
    model = _random_model(build, 5)
    params, buffers = stack_states([model])
    x = probe()
    feats = hidden_features(model, params, buffers, x)
    n = x.numel()  # each token a sample
    assert feats["P_tok"].shape == (1, 2 * n, 16)  # both block outputs
    assert feats["P_blocks.1.mlp.0"].shape == (1, n, 64) and feats["P_blocks.0.attn.qkv"].shape == (1, n, 16)
    with torch.no_grad():
        h = model.blocks[0](model.tok(x) + model.pos)
        torch.testing.assert_close(feats["P_tok"][0, :n], h.reshape(n, 16))
        gelu = model.blocks[1].mlp[:2](model.blocks[1].ln2(h + model.blocks[1].attn(model.blocks[1].ln1(h))))
        torch.testing.assert_close(feats["P_blocks.1.mlp.0"][0], gelu.reshape(n, 64))


# ---------------------------------------------------------------- Ito et al. measure and distances

def test_singular_vector_alignment_matches_dense_numpy(trained_mlps):
    build, _, params, _, _ = trained_mlps
    spec = permutation_spec(build())
    pairs = [(0, 1), (1, 2)]
    perms = weight_matching(spec, params, pairs)["perms"]
    out = singular_vector_alignment(spec, params, pairs, perms, k=3)
    assert set(out) == {f"{n}/{s}_{t}" for n in ("0.weight", "2.weight", "4.weight")
                        for s in ("left", "right") for t in ("before", "after")}
    for k, (i, j) in enumerate(pairs):
        wa = params["2.weight"][i].double().numpy()
        wb = params["2.weight"][j].double().numpy()
        pb = wb[perms["P_2"][k].numpy()][:, perms["P_0"][k].numpy()]
        ua, _, vta = np.linalg.svd(wa)
        for tag, w in (("before", wb), ("after", pb)):
            ub, _, vtb = np.linalg.svd(w)
            left = np.abs((ua[:, :3] * ub[:, :3]).sum(0)).mean()
            right = np.abs((vta[:3] * vtb[:3]).sum(1)).mean()
            assert float(out[f"2.weight/left_{tag}"][k]) == pytest.approx(left, abs=1e-9)
            assert float(out[f"2.weight/right_{tag}"][k]) == pytest.approx(right, abs=1e-9)


def test_planted_permutation_gives_perfect_alignment_measures():
    build, _ = ARCHS["mlp"]
    model = _random_model(build, 8)
    spec = permutation_spec(model)
    params, _ = stack_states([model])
    planted = random_perms(spec, 1, seed=9)
    pb = apply_permutation_stacked(spec, planted, params)
    both = {k: torch.cat([params[k], pb[k]]) for k in params}
    perms = {p: torch.argsort(v, dim=1) for p, v in planted.items()}
    d = alignment_distances(spec, both, [(0, 1)], perms)
    assert float(d["l2_after"][0]) == 0.0 and float(d["cosine_after"][0]) == pytest.approx(1.0)
    assert float(d["l2_before"][0]) > 0.1
    sv = singular_vector_alignment(spec, both, [(0, 1)], perms, k=2)
    assert float(sv["2.weight/left_after"][0]) == pytest.approx(1.0, abs=1e-9)
    assert float(sv["2.weight/right_after"][0]) == pytest.approx(1.0, abs=1e-9)
    ident = identity_perms(spec, 1)
    assert float(alignment_distances(spec, both, [(0, 1)], ident)["l2_after"][0]) == pytest.approx(
        float(d["l2_before"][0]))
