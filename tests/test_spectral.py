"""Spectral metrics against WeightWatcher, synthetic power laws, FARMS on Gaussian matrices, batching."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from zoo.functional import stack_states
from zoo.metrics.spectral import fit_tails, mp_softrank, spectral_tables


def _net() -> nn.Module:
    # conv 16x8x3x3 (9 pooled slices, 72 evals: standard fit), dense 64x256, 12x64 (12 evals) and
    # 10x12 (10 evals): the last two go through WW's small-sample fit; Linear(12, 4) has 4 < 8 evals
    return nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 64), nn.ReLU(),
                         nn.Linear(64, 12), nn.Linear(12, 10), nn.Linear(10, 4))


def _heavy(models):
    """Multiply weights by |N(0,1)|^1.5 so the spectra have tails to fit."""
    with torch.no_grad():
        for m in models:
            for p in m.parameters():
                p.mul_(torch.randn_like(p).abs() ** 1.5)
    return models


@pytest.fixture(scope="module")
def population():
    torch.manual_seed(0)
    models = _heavy([_net() for _ in range(3)])
    params, _ = stack_states(models)
    ids = ["a", "b", "c"]
    layers, summary = spectral_tables(models[0], params, ids, step=7)
    return models, params, ids, layers, summary


def test_matches_weightwatcher(population):
    ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    models, _, ids, layers, _ = population
    pairs = [("n_evals", "num_evals"), ("lambda_max", "lambda_max"), ("alpha", "alpha"), ("xmin", "xmin"),
             ("ks_distance", "D"), ("n_tail", "num_pl_spikes"), ("alpha_sigma", "sigma"), ("log_norm", "log_norm"),
             ("log_spectral_norm", "log_spectral_norm"), ("stable_rank", "stable_rank"), ("entropy", "entropy"),
             ("matrix_rank", "matrix_rank"), ("alpha_weighted", "alpha_weighted"),
             ("log_alpha_norm", "log_alpha_norm")]
    for k in range(2):  # WW is slow: two models, one with its MP fit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ww.WeightWatcher(model=models[k]).analyze(mp_fit=k == 1)
        ours = layers[layers["model_id"] == ids[k]].reset_index(drop=True)
        # WW drops the 4-eigenvalue layer; we keep its norms and give the reason
        assert ours["reason"].tolist() == [""] * 4 + ["fewer than min_evals=8 eigenvalues"]
        assert np.isnan(ours["alpha"][4]) and np.isfinite(ours["log_norm"][4])
        ours = ours.iloc[:4]
        assert len(ref) == 4
        for mine, theirs in pairs:
            np.testing.assert_allclose(ours[mine], ref[theirs].astype(float), rtol=1e-7, err_msg=mine)
        # squared norms in WW's columns, true norms in ours
        np.testing.assert_allclose(ours["frobenius_norm"] ** 2, ref["norm"].astype(float), rtol=1e-9)
        np.testing.assert_allclose(ours["spectral_norm"] ** 2, ref["spectral_norm"].astype(float), rtol=1e-9)
        if k == 1:  # WW polishes its MP sigma with Nelder-Mead, we with golden section: ~1e-4 apart here
            np.testing.assert_allclose(ours["mp_softrank"], ref["mp_softrank"].astype(float), rtol=2e-3)


def test_eigenvalues_follow_weightwatcher_conv2d_normalization():
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 10, 5)
    w = conv.weight.detach().double()
    slices = [w[:, :, i, j].numpy() for i in range(5) for j in range(5)]
    ref = np.sort(np.concatenate([np.linalg.svd(s / np.sqrt(2), compute_uv=False) ** 2 for s in slices]))
    layers, _ = spectral_tables(nn.Sequential(conv), {"0.weight": w[None]}, ["x"], step=0, farms=False)
    assert layers["n_evals"][0] == 6 * 25 and layers["q"][0] == 10 / 6
    np.testing.assert_allclose(layers["lambda_max"][0], ref[-1], rtol=1e-12)
    np.testing.assert_allclose(layers["log_norm"][0], np.log10(ref.sum()), rtol=1e-12)
    np.testing.assert_allclose(layers["nuclear_norm"][0], np.sqrt(ref).sum(), rtol=1e-12)


def test_power_law_fit_recovers_pareto_exponent():
    rng = np.random.default_rng(0)
    alpha, n = 3.0, 3000
    samples = (1 - rng.random((4, n))) ** (-1 / (alpha - 1))  # pdf ~ x^-alpha on [1, inf)
    fit = fit_tails(torch.as_tensor(samples))
    se = (fit["alpha"] - 1) / np.sqrt(fit["n_tail"])  # MLE standard error; allow 4 of them
    assert np.all(np.abs(fit["alpha"] - alpha) < 4 * se)
    assert np.all(fit["n_tail"] > 200)
    np.testing.assert_allclose(fit["alpha_sigma"], se)


def test_small_sample_fit_matches_wwfit():
    wwp = pytest.importorskip("weightwatcher.WW_powerlaw")
    rng = np.random.default_rng(1)
    rows = [np.sort(rng.pareto(1.5, size=n) + 1) for n in (8, 12, 19, 19)]
    padded = torch.full((4, 19), float("nan"), dtype=torch.float64)
    for i, r in enumerate(rows):
        padded[i, :len(r)] = torch.as_tensor(r)
    fit = fit_tails(padded)
    for i, r in enumerate(rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = wwp.WWFit(r)
        np.testing.assert_allclose([fit["alpha"][i], fit["xmin"][i], fit["ks_distance"][i]],
                                   [ref.alpha, ref.xmin, ref.D], rtol=1e-10)


def test_mp_softrank_of_a_random_matrix_is_near_one():
    # a pure Marchenko-Pastur bulk: lambda_max sits at the bulk edge, so bulk_max / lambda_max ~ 1
    torch.manual_seed(0)
    w = torch.randn(4, 400, 100, dtype=torch.float64)
    ev = torch.linalg.svdvals(w) ** 2
    soft = mp_softrank(ev, 4.0)
    assert np.all(np.abs(soft - 1) < 0.1)
    # a rank-one spike far above the bulk makes lambda_max large and the soft rank small
    u = torch.randn(400, 1, dtype=torch.float64)
    spiked = torch.linalg.svdvals(w + 3 * u @ torch.randn(1, 100, dtype=torch.float64)) ** 2
    assert np.all(mp_softrank(spiked, 4.0) < 0.3)


def test_farms_removes_the_aspect_ratio_bias_on_gaussian_matrices():
    # Gaussian matrices have no heavy tail at any aspect ratio Q. The plain ESD fit still drifts with Q
    # (a narrower MP bulk at large Q) and a square one even falls in the "well-trained" band alpha < 6;
    # FARMS fits the pooled ESD of square windows, the same at every Q, and sees no heavy tail.
    # (50 x 50 windows on a 4 x 4 grid instead of 100 x 100 on 9 x 9 to keep the test small.)
    torch.manual_seed(0)
    plain, farms = {}, {}
    for q in (1, 8):
        model = nn.Sequential(nn.Linear(100 * q, 100, bias=False))
        params = {"0.weight": torch.randn(32, 100, 100 * q)}
        layers, _ = spectral_tables(model, params, [str(i) for i in range(32)], step=0, mp_fit=False,
                                    farms_window=50, farms_grid=4)
        assert (layers["farms_window"] == 50).all() and (layers["farms_n_evals"] == 16 * 50).all()
        plain[q], farms[q] = layers["alpha"].median(), layers["farms_alpha"].median()
    assert plain[1] < 6 and plain[8] - plain[1] > 1.5
    assert farms[1] > 8 and farms[8] > 8


def test_batched_equals_model_by_model(population):
    models, params, ids, layers, summary = population
    for i, mid in enumerate(ids):
        one, one_summary = spectral_tables(models[0], {k: v[i:i + 1] for k, v in params.items()}, [mid], step=7)
        mine = layers[layers["model_id"] == mid].reset_index(drop=True)
        num = one.select_dtypes("number").columns
        np.testing.assert_allclose(mine[num].to_numpy(float), one[num].to_numpy(float), rtol=1e-9)
        np.testing.assert_allclose(summary.iloc[i, 1:].to_numpy(float), one_summary.iloc[0, 1:].to_numpy(float),
                                   rtol=1e-9)
    assert summary["model_id"].tolist() == ids
    assert {"spectral.alpha_mean", "spectral.farms_alpha_mean", "spectral.log_norm_mean",
            "spectral.stable_rank_mean", "spectral.mp_softrank_mean"} <= set(summary)
    assert (summary["spectral.n_fitted"] == 4).all()
    mean = layers[layers["model_id"] == "a"]["alpha"].mean()  # NaN of the skipped layer left out
    assert summary["spectral.alpha_mean"][0] == pytest.approx(mean)


def test_diverged_model_gets_nan_and_a_reason(population):
    models, params, ids, _, _ = population
    bad = {k: v.clone() for k, v in params.items()}
    bad["3.weight"][1, 0, 0] = float("nan")
    layers, summary = spectral_tables(models[0], bad, ids, step=7, farms=False, mp_fit=False)
    row = layers[(layers["model_id"] == "b") & (layers["layer"] == "3.weight")].iloc[0]
    assert row["reason"] == "non-finite weights" and np.isnan(row["alpha"]) and np.isnan(row["log_norm"])
    assert summary["spectral.n_fitted"].tolist() == [4, 3, 4]
    with pytest.raises(TypeError, match="unknown spectral fit options"):
        spectral_tables(models[0], params, ids, step=7, min_eval=3)
