"""Test accuracy and phase from weights alone, on held-out phase-grid cells (not random models).

Why: a random model split lets a predictor recognise a cell from a sibling seed; holding whole
(width, lr) cells out (``zoo.datasets.split_by_cells``) asks whether weights predict accuracy at
hyperparameters never seen in the fit set. Per draw of held-out cells it fits on the other cells and
reports R^2 on the held-out ones for:

1. ``ridge_stats``: the Model Zoos baseline, ridge on per-layer weight statistics
   (``weight_statistics`` of examples/predict_accuracy.py);
2. ``deepsets``: the permutation-invariant DeepSets over neuron tokens of examples/predict_accuracy.py;
3. ``ridge_invariant`` / ``krr_invariant`` / ``trees_invariant``: ridge, RBF kernel ridge and
   extremely randomised trees on features invariant to permutations of hidden units, computed from the
   weights only: per layer its shape and quantiles of its log singular values, log row and column
   norms, entries and biases; the first layer's per-input column norms, the last layer's per-class
   rows and the end-to-end linear map W_L ... W_1; and the function of the network on a fixed
   Gaussian probe batch (fraction of active and dead units per hidden layer, logit scale, output
   entropy and margin, sorted class frequencies). Nothing is read from models.parquet but the target.
   Kernel ridge picks its hyperparameters by cross-validation grouped by cell on the fit cells.
4. ``ridge_probe`` / ``trees_probe``: ridge and the same trees on the function features alone (the
   probe part of the invariant set).

Context rows: ``cell_mean_oracle`` predicts each held-out model by its own cell's mean (the noise
ceiling of seed-to-seed spread), ``config_krr`` is kernel ridge on the true (log width, log lr).
Phase from weights: logistic regression on each feature set against the fit cells' majority phase.

Two protocols: ``--splits`` draws of ``n_test`` held-out cells (R^2 per draw), and ``cell_folds``
cross-validation (every cell held out once; R^2 over all models' held-out predictions at once).

    python examples/accuracy_from_weights.py --zoo zoo-out [--quiet]

Progress (the predictor being fit, held-out draws, draws/s, ETA) goes to stderr unless --quiet.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from zoo.datasets import TokenView, affine_layers, cell_folds, compute_norm_stats, load, pad_tokens, split_by_cells
from zoo.progress import ProgressBar, interruptible, stage, track
from zoo.spec import load_toml, preset_names

QUANTILES = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64)
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": torch.nn.functional.gelu,
               "sigmoid": torch.sigmoid, "silu": torch.nn.functional.silu}


def _predict_accuracy():
    """examples/predict_accuracy.py as a module (weight_statistics, DeepSets, fit_deepsets)."""
    path = Path(__file__).resolve().with_name("predict_accuracy.py")
    spec = importlib.util.spec_from_file_location("example_predict_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _q(t: torch.Tensor) -> torch.Tensor:
    return torch.quantile(t, QUANTILES, dim=1).T


def _log(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(min=1e-12).log()


def layer_features(layers: list[tuple[torch.Tensor, torch.Tensor]], activation=torch.relu, probe: int = 512,
                   seed: int = 0) -> torch.Tensor:
    """Features [M, F] of M MLPs given as affine layers [(W [M, out, in], b [M, out])], invariant to
    permutations of the hidden units: ``weight_features`` then ``probe_features``."""
    return torch.cat([weight_features(layers), probe_features(layers, activation, probe, seed)], dim=1)


def weight_features(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per layer: log fan-out and fan-in, quantiles of log singular values, log squared Frobenius norm,
    log stable rank, quantiles of log row norms, log column norms, entries and biases, log std of the
    entries. Per-input column norms of the first layer, per-class row norms and biases of the last,
    the entries and log singular values of the end-to-end linear map W_L ... W_1 (input and output
    axes are not permuted by the symmetry)."""
    m, feats = layers[0][0].shape[0], []
    for w, b in layers:
        sv = torch.linalg.svdvals(w)
        feats += [torch.full((m, 1), float(np.log(w.shape[1]))), torch.full((m, 1), float(np.log(w.shape[2]))),
                  _q(_log(sv)), _log((sv ** 2).sum(1, keepdim=True)),
                  _log((sv ** 2).sum(1, keepdim=True) / sv[:, :1] ** 2),
                  _q(_log(w.norm(dim=2))), _q(_log(w.norm(dim=1))), _q(w.flatten(1)), _q(b),
                  _log(w.flatten(1).std(1, keepdim=True))]
    (w_in, _), (w_out, b_out) = layers[0], layers[-1]
    end = w_out
    for w, _ in layers[-2::-1]:
        end = end @ w
    feats += [_log(w_in.norm(dim=1)), _log(w_out.norm(dim=2)), b_out, end.flatten(1),
              _log(torch.linalg.svdvals(end))]
    return torch.cat(feats, dim=1)


def probe_features(layers: list[tuple[torch.Tensor, torch.Tensor]], activation=torch.relu, probe: int = 512,
                   seed: int = 0) -> torch.Tensor:
    """The MLP's function on a fixed N(0, I) probe batch (task-free, so still weights only): per hidden
    layer the fraction of positive pre-activations, the fraction of units never active and the log
    pre-activation std; at the output the mean softmax entropy, quantiles of log(1 + top-1 - top-2
    margin), log logit std and the sorted frequencies of the argmax classes. Why: a collapsed net
    (dead units, near-constant output) shows here directly, where weight statistics see it only
    through many correlated entries."""
    w_in, m = layers[0][0], layers[0][0].shape[0]
    x = torch.randn(probe, w_in.shape[2], generator=torch.Generator().manual_seed(seed), dtype=w_in.dtype)
    h, feats = x.expand(m, *x.shape), []
    for i, (w, b) in enumerate(layers):
        h = torch.einsum("bni,boi->bno", h, w) + b[:, None, :]
        if i < len(layers) - 1:
            on = (h > 0).double()
            feats += [on.mean((1, 2))[:, None], (on.mean(1) == 0).double().mean(1, keepdim=True),
                      _log(h.std((1, 2)))[:, None]]
            h = activation(h)
    p = h.softmax(-1)
    top = h.topk(min(2, h.shape[-1]), dim=-1).values
    freq = torch.stack([(h.argmax(-1) == c).double().mean(1) for c in range(h.shape[-1])], 1)
    feats += [-(p * _log(p)).sum(-1).mean(1, keepdim=True), _q(torch.log1p(top[..., 0] - top[..., -1])),
              _log(h.std((1, 2)))[:, None], freq.sort(1).values]
    return torch.cat(feats, dim=1)


def invariant_features(zoo, probe: int = 512, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(model ids, ``weight_features`` [N, F], ``probe_features`` [N, G]) of the models of an MLP zoo,
    from weights only; the invariant feature set is both side by side."""
    activation = ACTIVATIONS.get(str(zoo.models["config.arch.activation"].iloc[0])
                                 if "config.arch.activation" in zoo.models else "relu")
    ids, weights, probes = [], [], []
    for batch in zoo.iter_weights(batch_size=256):
        layers = affine_layers(torch.from_numpy(batch.weights).double(), zoo.layout_of(batch.arch_id))
        if activation is None or any(w.dim() != 3 for w, _ in layers):
            raise SystemExit("invariant_features probes MLPs only (Linear layers, a known activation)")
        ids += batch.model_ids
        weights.append(weight_features(layers).numpy())
        probes.append(probe_features(layers, activation, probe, seed).numpy())
    if len({r.shape[1] for r in weights}) != 1:
        raise SystemExit("archs with different numbers of layers: select one family/depth")
    return ids, np.concatenate(weights), np.concatenate(probes)


def kernel_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray):
    """RBF kernel ridge on standardised features and centred targets (KernelRidge has no intercept,
    so far from the fit set it falls back to the fit mean, not to 0), (alpha, gamma) by CV grouped
    by cell."""
    scaler, mean = StandardScaler().fit(x), float(np.mean(y))
    folds = min(5, len(set(groups)))
    grid = {"alpha": np.logspace(-3, 1, 5), "gamma": np.logspace(-4, 0, 9) * 100 / x.shape[1]}
    search = GridSearchCV(KernelRidge(kernel="rbf"), grid, cv=GroupKFold(folds), scoring="neg_mean_squared_error")
    search.fit(scaler.transform(x), y - mean, groups=groups)
    return lambda z: search.best_estimator_.predict(scaler.transform(z)) + mean


def extra_trees(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """Extremely randomised trees (default settings, 500 trees, leaves of >= 2 models): no tuning,
    and predictions stay within the range of the fit targets."""
    return ExtraTreesRegressor(n_estimators=500, min_samples_leaf=2, random_state=seed).fit(x, y).predict


def ridge(x: np.ndarray, y: np.ndarray):
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(x, y)
    return model.predict


def deepsets(pa, view, fit_ids: list[str], test_ids: list[str], target: str, steps: int, seed: int,
             on_step=None):
    stats = compute_norm_stats(view)
    fit = pad_tokens(list(TokenView(view.subset(fit_ids), target=target, normalize=stats)))
    net = pa.fit_deepsets(fit, steps, seed, on_step=on_step)
    test = pad_tokens(list(TokenView(view.subset(test_ids), target=target, normalize=stats,
                                     token_size=fit["tokens"].shape[-1])))
    with torch.no_grad():
        pred = net(test["tokens"], test["positions"], test["token_mask"])
    return (pred * net.y_std + net.y_mean).numpy()


def phase_classifier(x: np.ndarray, labels: list[str], fit: list[int], test: list[int]) -> list[str]:
    """Logistic regression on the fit models' phases (a constant guess when they share one phase)."""
    y_fit = [labels[i] for i in fit]
    if len(set(y_fit)) < 2:
        return [y_fit[0]] * len(test)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x[fit], y_fit)
    return list(clf.predict(x[test]))


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(r2_score(y, pred)) if len(y) > 1 and np.ptp(y) > 0 else float("nan")


def _prefixed(bar, prefix: str):
    """A progress report function that names the draw or fold before the predictor being fit."""
    return lambda what, *done, **kw: bar.report(f"{prefix}: {what}", *done, **kw)


def predict_held_out(data: dict, fit: list[int], test: list[int], seed: int, args, pa, view, report) -> dict:
    """Every predictor fit on the models ``fit`` and applied to ``test`` (indices into ``data``)."""
    xs, xi, xp, y, cell, config = (data[k] for k in ("stats", "invariant", "probe", "y", "cell", "config"))
    report("ridge, kernel ridge, trees")
    preds = {"ridge_stats": ridge(xs[fit], y[fit])(xs[test]),
             "ridge_invariant": ridge(xi[fit], y[fit])(xi[test]),
             "krr_invariant": kernel_ridge(xi[fit], y[fit], cell[fit])(xi[test]),
             "trees_invariant": extra_trees(xi[fit], y[fit], seed)(xi[test]),
             "ridge_probe": ridge(xp[fit], y[fit])(xp[test]),
             "trees_probe": extra_trees(xp[fit], y[fit], seed)(xp[test]),
             "config_krr": kernel_ridge(config[fit], y[fit], cell[fit])(config[test])}
    if args.deepsets_steps > 0:
        ids = data["ids"]
        preds["deepsets"] = deepsets(pa, view, [ids[i] for i in fit], [ids[i] for i in test], args.target,
                                     args.deepsets_steps, seed,
                                     partial(report, "DeepSets", total=args.deepsets_steps))
    means = {c: y[cell == c].mean() for c in set(cell[test])}
    preds["cell_mean_oracle"] = np.array([means[c] for c in cell[test]])
    return preds


def phase_guesses(data: dict, fit: list[int], test: list[int]) -> dict:
    """Phase labels guessed for ``test``: the fit cells' majority, and logistic regression on each feature set."""
    labels = data["labels"]
    fit_labels = [labels[i] for i in fit]
    majority = max(sorted(set(fit_labels)), key=fit_labels.count)
    return {"majority": [majority] * len(test),
            "logistic_stats": phase_classifier(data["stats"], labels, fit, test),
            "logistic_invariant": phase_classifier(data["invariant"], labels, fit, test),
            "logistic_probe": phase_classifier(data["probe"], labels, fit, test)}


def evaluate(zoo, args, pa) -> dict:
    stage("features")
    ids, x_stats = pa.weight_statistics(zoo)
    ids_inv, x_weights, x_probe = invariant_features(zoo, args.probe)
    x_inv = np.concatenate([x_weights, x_probe], axis=1)
    if ids_inv != ids:
        raise RuntimeError("feature rows out of order")
    stage("held-out draws")
    models = zoo.models.set_index("model_id").loc[ids]
    y = models[args.target].to_numpy(dtype=float)
    cell = models["cell_id"].to_numpy()
    labels = models["phase"].astype(str).tolist() if "phase" in models else None
    data = {"ids": ids, "stats": x_stats, "invariant": x_inv, "probe": x_probe, "y": y, "cell": cell, "labels": labels,
            "config": np.log(models[[args.capacity, args.temperature]].to_numpy(dtype=float))}
    n_cells = len(set(cell))
    n_test = args.n_test or max(1, round(0.2 * n_cells))

    def sides(view) -> tuple[list[int], list[int]]:
        """(fit, test) row indices of a split view."""
        split_of = dict(zip(view.models["model_id"], view.models["split"]))
        held = [split_of[m] == "test" for m in ids]
        return [i for i, h in enumerate(held) if not h], [i for i, h in enumerate(held) if h]

    splits = []
    for seed in range(args.splits):
        view = split_by_cells(zoo, n_test=n_test, seed=seed)
        fit, test = sides(view)
        test_cells, fit_cells = set(cell[test]), set(cell[fit])
        yt = y[test]
        with track(1) as draw:  # progress: one held-out draw; the stage names the predictor being fit
            preds = predict_held_out(data, fit, test, seed, args, pa, view,
                                     _prefixed(draw, f"draw {seed}"))
        configs = sorted({tuple(float(v) for v in np.exp(data["config"][i]).round(6)) for i in test})
        row = {"seed": seed, "n_fit": len(fit), "n_test": len(test), "test_cells": sorted(test_cells),
               "test_configs": [list(c) for c in configs],
               "cells_overlap": len(test_cells & fit_cells),
               "r2": {k: _r2(yt, p) for k, p in preds.items()},
               "mae": {k: float(np.abs(p - yt).mean()) for k, p in preds.items()},
               "y_test": yt.tolist(), "pred": {k: np.asarray(p).tolist() for k, p in preds.items()}}
        if labels is not None:
            row["phase"] = {k: float(np.mean([g == labels[i] for g, i in zip(guess, test)]))
                            for k, guess in phase_guesses(data, fit, test).items()}
        splits.append(row)
    stage("cell folds")
    folds = cross_validate(zoo, data, args, pa, sides)
    summary = {}
    groups = {"": splits}
    if 0 < args.dev_splits < len(splits):  # draws not looked at while the features were chosen
        groups["_fresh"] = splits[args.dev_splits:]
    for suffix, group in groups.items():
        for key in splits[0]["r2"]:
            v = np.array([s["r2"][key] for s in group])
            summary[f"{key}_r2_mean{suffix}"] = float(np.nanmean(v))
            summary[f"{key}_r2_std{suffix}"] = float(np.nanstd(v))
        if labels is not None:
            for key in splits[0]["phase"]:
                v = np.array([s["phase"][key] for s in group])
                summary[f"phase_{key}_mean{suffix}"] = float(v.mean())
                summary[f"phase_{key}_std{suffix}"] = float(v.std())
    for key in folds[0]["r2"] if folds else []:
        v = np.array([f["r2"][key] for f in folds])
        summary[f"{key}_cv_r2_mean"], summary[f"{key}_cv_r2_std"] = float(v.mean()), float(v.std())
    for key in folds[0].get("phase", {}) if folds else []:
        v = np.array([f["phase"][key] for f in folds])
        summary[f"phase_{key}_cv_mean"], summary[f"phase_{key}_cv_std"] = float(v.mean()), float(v.std())
    seeds = sorted({int(s) for s in models["seed"]}) if "seed" in models else []
    return {"target": args.target, "capacity": args.capacity, "temperature": args.temperature,
            "dev_splits": args.dev_splits, "n_models": len(ids), "n_cells": n_cells,
            "n_test_cells": n_test, "n_folds": folds[0]["k"] if folds else 0, "model_seeds": seeds,
            "features": {"stats": x_stats.shape[1], "invariant": x_inv.shape[1], "probe": x_probe.shape[1]},
            "splits": splits, "folds": folds, "summary": summary}


def cross_validate(zoo, data: dict, args, pa, sides) -> list[dict]:
    """Per repeat r, ``cell_folds(zoo, k, seed=r)``: every model predicted once by a fit that never saw
    its cell; R^2 (and phase accuracy) of those predictions pooled over the whole zoo."""
    y, cell, labels = data["y"], data["cell"], data["labels"]
    k = min(args.folds, len(set(cell)))
    if args.fold_repeats <= 0 or k < 2:
        return []
    repeats = []
    for rep in range(args.fold_repeats):
        preds, guesses, fold_of = {}, {}, [-1] * len(y)
        for i, view in enumerate(cell_folds(zoo, k, seed=rep)):
            fit, test = sides(view)
            for j in test:
                fold_of[j] = i
            with track(1) as fold:
                got = predict_held_out(data, fit, test, 1000 * (rep + 1) + i, args, pa, view,
                                       _prefixed(fold, f"repeat {rep} fold {i}"))
            for key, p in got.items():
                preds.setdefault(key, np.full(len(y), np.nan))[test] = p
            if labels is not None:
                for key, g in phase_guesses(data, fit, test).items():
                    guesses.setdefault(key, [None] * len(y))
                    for j, label in zip(test, g):
                        guesses[key][j] = label
        row = {"seed": rep, "k": k, "fold_of": fold_of, "r2": {key: _r2(y, p) for key, p in preds.items()},
               "pred": {key: p.tolist() for key, p in preds.items()}, "y": y.tolist(),
               "model_ids": list(data["ids"])}
        if labels is not None:
            row["phase"] = {key: float(np.mean([a == b for a, b in zip(g, labels)])) for key, g in guesses.items()}
        repeats.append(row)
    return repeats


def plot(result: dict, path: Path, keys=("ridge_stats", "trees_invariant", "ridge_probe")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if k in result["splits"][0]["pred"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for s in result["splits"]:
            ax.scatter(s["y_test"], s["pred"][key], s=10, label=f"draw {s['seed']}: R2 {s['r2'][key]:.2f}")
        lo = min(min(s["y_test"]) for s in result["splits"])
        hi = max(max(s["y_test"]) for s in result["splits"])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        sm = result["summary"]
        ax.set_title(f"{key}: R2 {sm[f'{key}_r2_mean']:.2f} +- {sm[f'{key}_r2_std']:.2f}", fontsize=9)
        ax.set_xlabel(f"true {result['target']} (held-out cells)")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("predicted from weights")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict, command: str, zoo_desc: str, plot_path: Path | None) -> str:
    sm = result["summary"]
    keys = list(result["splits"][0]["r2"])
    fresh = int(any(k.endswith("_fresh") for k in sm))
    lines = ["# Test accuracy from weights on held-out cells", "",
             f"- date: {result['date']}",
             f"- machine: 2-core CPU dev VM ({platform.platform()}, python {platform.python_version()}, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); wall time {result['wall_s']:.0f} s",
             f"- zoo: {zoo_desc}",
             f"- command: `{command}`",
             f"- {len(result['splits'])} draws of `split_by_cells(zoo, n_test={result['n_test_cells']}, seed=s)` "
             f"({result['n_test_cells']} of {result['n_cells']} cells held out whole), fit on the other cells; "
             f"features: {result['features']['stats']} weight statistics, {result['features']['invariant']} "
             f"invariant features, of which {result['features']['probe']} describe the function on the probe"
             + (f"; draws 0-{result['dev_splits'] - 1} were looked at while the invariant features and "
                f"learners were chosen, the 'fresh draws' column summarises the others only" if fresh else ""), "",
             "## R^2 of held-out test accuracy", "",
             "| predictor | " + " | ".join(f"draw {s['seed']}" for s in result["splits"]) + " | mean +- std |"
             + (" fresh draws |" if fresh else ""),
             "|---|" + "---|" * (len(result["splits"]) + 1 + fresh)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{s['r2'][k]:.3f}" for s in result["splits"])
                     + f" | {sm[f'{k}_r2_mean']:.3f} +- {sm[f'{k}_r2_std']:.3f} |"
                     + (f" {sm[f'{k}_r2_mean_fresh']:.3f} +- {sm[f'{k}_r2_std_fresh']:.3f} |" if fresh else ""))
    if "phase" in result["splits"][0]:
        lines += ["", "## Phase from weights (accuracy on held-out cells)", "",
                  "| classifier | " + " | ".join(f"draw {s['seed']}" for s in result["splits"]) + " | mean +- std |"
                  + (" fresh draws |" if fresh else ""),
                  "|---|" + "---|" * (len(result["splits"]) + 1 + fresh)]
        for k in result["splits"][0]["phase"]:
            lines.append(f"| {k} | " + " | ".join(f"{s['phase'][k]:.3f}" for s in result["splits"])
                         + f" | {sm[f'phase_{k}_mean']:.3f} +- {sm[f'phase_{k}_std']:.3f} |"
                         + (f" {sm[f'phase_{k}_mean_fresh']:.3f} +- {sm[f'phase_{k}_std_fresh']:.3f} |"
                            if fresh else ""))
    if result["folds"]:
        folds = result["folds"]
        lines += ["", f"## Cross-validated over cells: every cell held out once ({result['n_folds']} folds)", "",
                  f"`cell_folds(zoo, k={result['n_folds']}, seed=r)` partitions the {result['n_cells']} cells into "
                  f"{result['n_folds']} folds; each model is predicted by the fit on the other folds, and R^2 is "
                  f"taken over all {result['n_models']} predictions at once, per partition r:", "",
                  "| predictor | " + " | ".join(f"r = {f['seed']}" for f in folds) + " | mean +- std |",
                  "|---|" + "---|" * (len(folds) + 1)]
        for k in folds[0]["r2"]:
            lines.append(f"| {k} | " + " | ".join(f"{f['r2'][k]:.3f}" for f in folds)
                         + f" | {sm[f'{k}_cv_r2_mean']:.3f} +- {sm[f'{k}_cv_r2_std']:.3f} |")
        if "phase" in folds[0]:
            lines += ["", "Phase from weights, cross-validated the same way (accuracy over all models):", "",
                      "| classifier | " + " | ".join(f"r = {f['seed']}" for f in folds) + " | mean +- std |",
                      "|---|" + "---|" * (len(folds) + 1)]
            for k in folds[0]["phase"]:
                lines.append(f"| {k} | " + " | ".join(f"{f['phase'][k]:.3f}" for f in folds)
                             + f" | {sm[f'phase_{k}_cv_mean']:.3f} +- {sm[f'phase_{k}_cv_std']:.3f} |")
    lines += ["", f"Held-out cells per draw ({result['capacity']}, {result['temperature']}):", ""]
    lines += [f"- draw {s['seed']} ({s['n_test']} models): "
              + ", ".join(f"({c[0]:g}, {c[1]:g})" for c in s["test_configs"]) for s in result["splits"]]
    if plot_path is not None:
        lines += ["", f"![predicted vs true]({plot_path.name})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, help="a published zoo folder")
    p.add_argument("--target", default="test_acc")
    p.add_argument("--splits", type=int, default=5, help="draws of held-out cells (seeds 0..splits-1)")
    p.add_argument("--n-test", type=int, default=None, help="held-out cells per draw (default 20 %%)")
    p.add_argument("--folds", type=int, default=5, help="cell folds for the cross-validated R^2 (at most one per cell)")
    p.add_argument("--fold-repeats", type=int, default=3, help="partitions of the cells into folds; 0 skips")
    p.add_argument("--dev-splits", type=int, default=0,
                   help="the first draws were used while choosing features: summarise the rest apart too")
    p.add_argument("--deepsets-steps", type=int, default=500, help="0 skips the DeepSets")
    p.add_argument("--probe", type=int, default=512, help="Gaussian probe inputs for the function features")
    p.add_argument("--capacity", default="config.arch.width", help="config column for config_krr")
    p.add_argument("--temperature", default="config.train.lr", help="config column for config_krr")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--out-md", type=Path, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    zoo = load(args.zoo)
    zoo = zoo.subset(zoo.models["status"] == "ok")
    folds = min(args.folds, zoo.models["cell_id"].nunique()) if args.folds >= 2 else 0
    with ProgressBar(None, args.splits + args.fold_repeats * folds, desc="accuracy_from_weights",
                     enabled=not args.quiet, unit="fit", weights={}):
        result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  **evaluate(zoo, args, _predict_accuracy())}
    result["wall_s"] = time.time() - start
    if args.plot is not None:
        plot(result, args.plot)
    if args.out_md is not None:
        preset = zoo.manifest.get("spec", {}).get("name", "?") if isinstance(zoo.manifest, dict) else "?"
        command = "OMP_NUM_THREADS=1 python examples/accuracy_from_weights.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        made = {k: zoo.manifest.get(k) for k in ("created", "git_hash")} if isinstance(zoo.manifest, dict) else {}
        seeds = zoo.manifest.get("spec", {}).get("phase", {}).get("seeds") if isinstance(zoo.manifest, dict) else None
        if preset in preset_names() and seeds == load_toml(preset).get("phase", {}).get("seeds"):
            seeds = None  # the preset's own seeds: nothing to override
        desc = (f"`{args.zoo}` (preset {preset!r}, {len(zoo)} models, {result['n_cells']} cells, seeds "
                f"{result['model_seeds']}; built {made.get('created')} at {str(made.get('git_hash'))[:10]} by "
                f"`zoo build --phase grid" + (f" --set 'phase.seeds={seeds}'" if seeds else "")
                + f" --out {args.zoo}`)")
        args.out_md.write_text(report(result, command, desc, args.plot))
    out = {k: v for k, v in result.items() if k not in ("splits", "folds")}
    out["r2"] = {k: [s["r2"][k] for s in result["splits"]] for k in result["splits"][0]["r2"]}
    out["cv_r2"] = {k: [f["r2"][k] for f in result["folds"]] for k in (result["folds"] or [{"r2": {}}])[0]["r2"]}
    print(json.dumps(out))
    return result


if __name__ == "__main__":
    interruptible(main, "accuracy_from_weights")
