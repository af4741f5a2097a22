"""SAE Match (zoo.metrics.sae_match): a planted permutation of features is recovered exactly (with
and without folding, through an MLP layer), batched SAE training equals one SAE at a time, a
model's results do not depend on its population mates, the metric on trained and residual-stream
models is finite and in range, and `zoo metrics sae_match` adds it to a published zoo."""

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from test_datasets import SMOKE_SETS, built_zoo
from torch import nn

from zoo.datasets.verify import verify
from zoo.functional import layout_of, stack_states
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks.objectives import objective_for
from zoo.metrics.base import Population
from zoo.metrics.sae_match import (
    METRIC,
    approximation_ev,
    decode,
    encode,
    explained_variance,
    feature_scales,
    fold,
    hidden_layers,
    hidden_states,
    match_features,
    match_layers,
    sae_match,
    train_saes,
)
from zoo.spec import MetricsSpec

SPEC = {"sae_match": True, "sae_expansion": 2, "sae_steps": 60, "sae_l1": 0.1, "sae_probe": 200}


def random_sae(g, n, f, gen):
    """G random SAEs whose features all fire (positive encoder biases)."""
    return {"w_enc": torch.randn(g, n, f, generator=gen), "b_enc": torch.rand(g, f, generator=gen) + 0.5,
            "w_dec": torch.randn(g, f, n, generator=gen), "b_dec": torch.randn(g, n, generator=gen)}


def test_matcher_recovers_a_planted_permutation_exactly():
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(4, 50, 8, generator=gen)
    sigma = torch.stack([torch.randperm(50, generator=gen) for _ in range(4)])
    target = source.gather(1, sigma.unsqueeze(2).expand(-1, -1, 8))  # target feature j = source feature sigma(j)
    target = target + 1e-3 * torch.randn(target.shape, generator=gen)
    pi, cost = match_features(source, target)
    assert torch.equal(pi, sigma.argsort(1))  # source i <-> target pi(i) with sigma(pi(i)) = i
    direct = ((source[:, :, None].double() - target[:, None].double()) ** 2).mean(3)
    torch.testing.assert_close(cost, direct)


def test_folding_keeps_the_sae_and_undoes_feature_scales():
    """An SAE whose features are rescaled (f_j -> c_j f_j, d_j -> d_j / c_j) and permuted is the same
    SAE: folded, its decoders are the original's permuted, so matching recovers the permutation,
    while the unfolded decoders, scaled over four decades (many near 0 in a 3-d space), do not."""
    gen = torch.Generator().manual_seed(1)
    n, f = 3, 30
    a = random_sae(1, n, f, gen)
    x = torch.randn(1, 500, n, generator=gen)
    sigma = torch.randperm(f, generator=gen)
    c = 10 ** (4 * torch.rand(f, generator=gen) - 2)
    b = {"w_enc": a["w_enc"][:, :, sigma] * c, "b_enc": a["b_enc"][:, sigma] * c,
         "w_dec": a["w_dec"][:, sigma] / c[:, None], "b_dec": a["b_dec"]}
    torch.testing.assert_close(decode(b, encode(b, x)), decode(a, encode(a, x)), rtol=1e-4, atol=1e-4)
    fa, fb = fold(a, feature_scales(a, x)), fold(b, feature_scales(b, x))
    torch.testing.assert_close(decode(fa, encode(fa, x)), decode(a, encode(a, x)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fb["w_dec"], fa["w_dec"][:, sigma], rtol=1e-4, atol=1e-5)
    assert torch.equal(match_features(fa["w_dec"], fb["w_dec"])[0][0], sigma.argsort())
    assert not torch.equal(match_features(a["w_dec"], b["w_dec"])[0][0], sigma.argsort())


def test_planted_mlp_layer_pair_is_matched_through_the_layer():
    """Layer 2 = P layer 1 (a permutation of units) and layer 2's SAE = layer 1's with its inputs
    permuted by P, features permuted by sigma and rescaled (the same SAE): matching carries layer 1's decoders
    through the layer (T(d) = P d) and recovers sigma exactly; the approximation of layer 2 from
    layer 1's features is then layer 2's own SAE reconstruction (match_ev = recon_ev)."""
    gen = torch.Generator().manual_seed(2)
    n, f, m = 10, 20, 3
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, n), nn.ReLU(), nn.Linear(n, n), nn.Identity(), nn.Linear(n, 4))
              for _ in range(m)]
    p = torch.stack([torch.randperm(n, generator=gen) for _ in range(m)])
    for net, pk in zip(models, p):
        net[2].weight.data = torch.eye(n)[pk]  # (P h)_a = h_p(a)
        net[2].bias.data.zero_()
    params, buffers = stack_states(models)
    kind, names = hidden_layers(models[0])
    assert (kind, names) == ("mlp", ["1", "3"])
    x = hidden_states(models[0], names, params, buffers, torch.randn(300, 6, generator=gen), 300)
    torch.testing.assert_close(x[:, 1], x[:, 0].gather(2, p[:, None].expand(-1, 300, -1)))

    a = random_sae(m, n, f, gen)  # a working SAE of layer 1: half its features are the units
    a["w_enc"][:, :, :n], a["b_enc"][:, :n] = torch.eye(n), 0.0
    a["w_dec"][:, :n], a["w_dec"][:, n:] = torch.eye(n), 0.05 * a["w_dec"][:, n:]
    a["b_dec"].zero_()
    assert (encode(a, x[:, 0]) > 0).any(1).all()  # every feature fires: folding is exact
    sigma = torch.stack([torch.randperm(f, generator=gen) for _ in range(m)])
    c = 10 ** (2 * torch.rand(m, f, generator=gen) - 1)
    b = {k: [] for k in a}
    for k, (pk, sk, ck) in enumerate(zip(p, sigma, c)):  # feature j of b = feature sigma(j) of a, unit a = p(a)
        b["w_enc"].append(a["w_enc"][k][pk][:, sk] * ck)
        b["b_enc"].append(a["b_enc"][k][sk] * ck)
        b["w_dec"].append(a["w_dec"][k][sk][:, pk] / ck[:, None])
        b["b_dec"].append(a["b_dec"][k][pk])
    b = {k: torch.stack(v) for k, v in b.items()}
    saes = {k: torch.stack([a[k], b[k]], 1) for k in a}
    flat = {k: v.flatten(0, 1) for k, v in saes.items()}
    folded = fold(flat, feature_scales(flat, x.flatten(0, 1)))
    folded = {k: v.unflatten(0, (m, 2)) for k, v in folded.items()}
    perm, mse = match_layers(models[0], kind, names, params, folded)
    assert torch.equal(perm[:, 0], sigma.argsort(1))
    assert (mse < 1e-8).all()
    recon = explained_variance(x[:, 1], decode(b, encode(b, x[:, 1])))
    torch.testing.assert_close(approximation_ev(folded, perm, x)[:, 0], recon, rtol=1e-6, atol=1e-6)
    unmatched = approximation_ev(folded, torch.arange(f).expand_as(perm), x)[:, 0]
    assert (unmatched < recon - 0.1).all()


def test_batched_training_equals_one_sae_at_a_time():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 400, 8, generator=gen) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1) + 2
    x = torch.relu(x)
    together = train_saes(x, 16, 80, 0.1, seeds=[0, 1, 2], batch=64)
    for g in range(3):
        alone = train_saes(x[g:g + 1], 16, 80, 0.1, seeds=[g], batch=64)
        for k, v in alone.items():
            torch.testing.assert_close(together[k][g:g + 1], v, rtol=1e-4, atol=1e-5, msg=k)
    loss_start = explained_variance(x, decode(train_saes(x, 16, 0, 0.1, seeds=[0, 1, 2]), torch.zeros(3, 400, 16)))
    ev = explained_variance(x, decode(together, encode(together, x)))
    assert (loss_start.abs() < 1e-4).all() and (ev > 0.5).all()  # b_dec starts at the mean: EV 0, then learns


def mlp_population(mnist1d_small, status=None, m=3):
    build = lambda: build_model("mlp", in_dim=40, out_dim=10, width=16, depth=3)  # noqa: E731
    members = [Member(f"m{i}", seed=i, lr=0.05, momentum=0.9) for i in range(m)]
    res = train_population(build, members, mnist1d_small, TrainConfig(steps=100, batch_size=64,
                                                                       checkpoint_steps=[100]))
    return Population(build(), objective_for(mnist1d_small), mnist1d_small, res.weights, [100],
                      layout_of(build()), [f"m{i}" for i in range(m)], ["c0"] * m, status or ["ok"] * m,
                      [0.05] * m)


def test_trained_mlp_gives_finite_metrics_in_range(mnist1d_small):
    pop = mlp_population(mnist1d_small, status=["ok", "diverged", "ok"])
    res = METRIC.compute(pop, MetricsSpec(options=SPEC))
    assert set(res.per_model) == set(METRIC.columns)
    for col, v in res.per_model.items():
        assert np.isnan(v[1]) and np.isfinite(v[[0, 2]]).all(), col
    ok = {col: v[[0, 2]] for col, v in res.per_model.items()}
    assert ((ok["sae.recon_ev_mean"] > 0.5) & (ok["sae.recon_ev_mean"] <= 1)).all()
    assert (ok["sae.match_ev_mean"] <= 1).all() and (ok["sae.match_mse_mean"] >= 0).all()
    assert ((ok["sae.l0_mean"] > 0) & (ok["sae.l0_mean"] <= 32)).all()  # 2 x width 16 features
    table = res.tables["sae"]
    assert list(table[METRIC.tables["sae"]].itertuples(index=False, name=None)) == [
        (mid, pair) for mid in ("m0", "m2") for pair in ("0->1", "1->2")]
    assert np.isfinite(table.drop(columns=["model_id", "layer_pair", "source", "target"]).to_numpy()).all()
    assert list(table["source"][:2]) == ["1", "3"] and list(table["target"][:2]) == ["3", "5"]


def test_a_models_results_do_not_depend_on_its_population_mates(mnist1d_small):
    pop = mlp_population(mnist1d_small)
    spec = MetricsSpec(options=SPEC)
    full = METRIC.compute(pop, spec)
    alone = METRIC.compute(Population(pop.model, pop.objective, pop.data, pop.weights[:, 1:2], pop.steps,
                                      pop.layout, ["m1"], ["c0"], ["ok"], [0.05]), spec)
    for col in METRIC.columns:
        assert alone.per_model[col][0] == pytest.approx(full.per_model[col][1], rel=1e-4, abs=1e-5), col


def test_residual_stream_features_persist_across_blocks():
    """A GPT's blocks write into one residual stream: matched features rebuild the next block's
    stream far better than an arbitrary pairing (the paper's finding), token inputs included."""
    torch.manual_seed(0)
    models = [build_model("gpt", vocab_size=11, block_size=8, out_dim=11, width=16, depth=3, heads=2)
              for _ in range(2)]
    params, buffers = stack_states(models)
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 11, (400, 8), generator=gen)
    cols, rows = sae_match(models[0], params, buffers, tokens[:200], tokens[200:], steps=150, probe=1000)
    assert hidden_layers(models[0]) == ("stream", ["blocks.0", "blocks.1", "blocks.2"])
    assert len(rows) == 4 and all(r["match_ev"] > r["match_ev_unmatched"] + 0.5 for r in rows)
    assert all(0 < r["match_ev"] <= 1 and 0 < r["recon_ev_source"] <= 1 for r in rows)
    assert all(np.isfinite(v).all() for v in cols.values())


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)), "applies to MLPs"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "needs two hidden layers"),
])
def test_models_it_cannot_measure_get_one_line(model, message):
    with pytest.raises(ValueError, match=message) as err:
        hidden_layers(model)
    assert "\n" not in str(err.value)


def test_option_defaults_come_from_the_registry():
    spec = MetricsSpec()
    assert spec.sae_match is False and spec.sae_expansion == 2 and spec.sae_steps == 300
    assert not METRIC.enabled(spec) and METRIC.enabled(MetricsSpec(options={"sae_match": True}))


def test_zoo_metrics_sae_match_measures_a_published_zoo(tmp_path_factory, tmp_path, data_root):
    zoo = tmp_path / "zoo"
    shutil.copytree(built_zoo(tmp_path_factory, "smoke", "smoke", SMOKE_SETS), zoo)
    r = subprocess.run([sys.executable, "-m", "zoo.cli", "metrics", "sae_match", str(zoo), "--quiet",
                        "--set", "metrics.sae_steps=40", "--set", "metrics.sae_probe=128"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = pd.read_parquet(zoo / "models.parquet")
    ok = m["status"] == "ok"
    for col in METRIC.columns:
        assert m.loc[ok, col].notna().all() and m.loc[~ok, col].isna().all(), col
    assert (m.loc[ok, "sae.recon_ev_mean"] <= 1).all() and (m.loc[ok, "sae.match_mse_mean"] >= 0).all()
    table = pd.read_parquet(zoo / "sae.parquet")
    assert sorted(table["model_id"]) == sorted(m.loc[ok, "model_id"]) and set(table["layer_pair"]) == {"0->1"}
    assert "`sae.match_ev_mean`" in (zoo / "README.md").read_text() and verify(zoo) == []
