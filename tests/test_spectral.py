"""Spectral metrics against WeightWatcher, synthetic power laws, FARMS on Gaussian matrices, batching."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from zoo.functional import stack_states
from zoo.metrics.spectral import _fit, spectral_tables


def _net(kernel: int = 3) -> nn.Module:
    side = 6 - kernel + 1
    return nn.Sequential(nn.Conv2d(8, 16, kernel), nn.ReLU(), nn.Flatten(), nn.Linear(16 * side * side, 64),
                         nn.ReLU(), nn.Linear(64, 30))


def _heavy(models):
    """Multiply weights by |N(0,1)|^1.5 so the spectra have tails to fit."""
    with torch.no_grad():
        for m in models:
            for p in m.parameters():
                p.mul_(torch.randn_like(p).abs() ** 1.5)
    return models


@pytest.mark.parametrize("kernel", [3, 5])
def test_matches_weightwatcher(kernel):
    ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    torch.manual_seed(kernel)
    models = _heavy([_net(kernel) for _ in range(2)])
    params, _ = stack_states(models)
    layers, _ = spectral_tables(models[0], params, ["a", "b"], step=0)
    for k, model in enumerate(models):
        ref = ww.WeightWatcher(model=model).analyze()
        ours = layers[layers["model_id"] == "ab"[k]].reset_index(drop=True)
        assert len(ref) == len(ours) == 3
        assert ours["n_evals"].tolist() == ref["num_evals"].tolist()
        for mine, theirs in [("alpha", "alpha"), ("xmin", "xmin"), ("ks_distance", "D"), ("log_norm", "log_norm"),
                             ("log_spectral_norm", "log_spectral_norm"), ("stable_rank", "stable_rank"),
                             ("entropy", "entropy"), ("alpha_weighted", "alpha_weighted")]:
            np.testing.assert_allclose(ours[mine], ref[theirs].astype(float), rtol=1e-6, err_msg=mine)


def test_power_law_fit_recovers_pareto_exponent():
    rng = np.random.default_rng(0)
    alpha, n = 3.0, 4000
    samples = (1 - rng.random((4, n))) ** (-1 / (alpha - 1))  # pdf ~ x^-alpha on [1, inf)
    evals = torch.as_tensor(samples)
    fit = _fit(evals, torch.ones_like(evals, dtype=torch.bool))
    # MLE standard error (alpha - 1) / sqrt(n_tail); allow 4 of them
    se = (fit["alpha"] - 1) / np.sqrt(fit["n_tail"])
    assert np.all(np.abs(fit["alpha"] - alpha) < 4 * se)
    assert np.all(fit["n_tail"] > 200)


def test_farms_removes_the_aspect_ratio_bias_on_gaussian_matrices():
    torch.manual_seed(0)
    plain, farms = [], []
    for cols in (200, 400, 1000):  # aspect ratios 1, 2, 5
        model = nn.Sequential(nn.Linear(cols, 200, bias=False))
        params, _ = stack_states([model])
        params = {k: torch.randn_like(v) for k, v in params.items()}
        layers, _ = spectral_tables(model, params, ["g"], step=0)
        plain.append(float(layers["alpha"][0]))
        farms.append(float(layers["farms_alpha"][0]))
    # plain alpha drifts with the aspect ratio, and a square random matrix even fits inside the
    # "well-trained" band 2 < alpha < 6; FARMS' square windows give no heavy tail at every ratio
    assert plain[0] < plain[1] < plain[2] and plain[0] < 6
    assert min(farms) > 6


def test_batched_equals_model_by_model():
    torch.manual_seed(1)
    models = _heavy([_net() for _ in range(3)])
    params, _ = stack_states(models)
    ids = ["x", "y", "z"]
    layers, summary = spectral_tables(models[0], params, ids, step=5)
    for i, mid in enumerate(ids):
        one, one_summary = spectral_tables(models[0], {k: v[i:i + 1] for k, v in params.items()}, [mid], step=5)
        mine = layers[layers["model_id"] == mid].reset_index(drop=True)
        num = one.select_dtypes("number").columns
        np.testing.assert_allclose(mine[num].to_numpy(float), one[num].to_numpy(float), rtol=1e-9)
        np.testing.assert_allclose(summary.iloc[i, 1:].to_numpy(float), one_summary.iloc[0, 1:].to_numpy(float),
                                   rtol=1e-9)
    assert "spectral.alpha_mean" in summary and summary["model_id"].tolist() == ids
