"""Predict a model's test accuracy from its weights (the Model Zoos baseline and a DeepSets).

1. Ridge regression on per-layer weight statistics (mean, std, quantiles 0/25/50/75/100 %,
   L2 norm of each layer's weights and biases; Unterthiner et al. 2020, Schürholt et al. 2022).
2. A permutation-invariant DeepSets over SANE-style neuron tokens: each token (plus a one-hot of
   its layer) goes through a shared MLP phi, the tokens are mean-pooled, an MLP rho regresses.
Both fit on the train + val splits and report R^2 on the test split.

    python examples/predict_accuracy.py --zoo zoo-out [--quiet]

Progress of the DeepSets fit (steps, steps/s, ETA) on stderr unless --quiet.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from zoo.datasets import TokenView, affine_layers, compute_norm_stats, load, pad_tokens
from zoo.progress import ProgressBar, interruptible

QUANTILES = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])


def weight_statistics(zoo) -> tuple[list[str], np.ndarray]:
    """(model ids, features [N, F]): per layer and tensor: mean, std, 5 quantiles, L2 norm."""
    ids, rows = [], []
    for batch in zoo.iter_weights(batch_size=256):
        layers = affine_layers(torch.from_numpy(batch.weights), zoo.layout_of(batch.arch_id))
        feats = []
        for w, b in layers:
            for t in (w.flatten(1), b):
                feats += [t.mean(1, keepdim=True), t.std(1, keepdim=True),
                          torch.quantile(t, QUANTILES, dim=1).T, t.norm(dim=1, keepdim=True)]
        ids += batch.model_ids
        rows.append(torch.cat(feats, dim=1).numpy())
    if len({r.shape[1] for r in rows}) != 1:
        raise SystemExit("archs with different numbers of layers: select one family/depth")
    return ids, np.concatenate(rows)


class DeepSets(nn.Module):
    """rho(mean_t phi([token_t, onehot(layer_t)])): invariant to the order of the tokens."""

    def __init__(self, token_size: int, n_layers: int, hidden: int = 64):
        super().__init__()
        self.n_layers = n_layers
        self.phi = nn.Sequential(nn.Linear(token_size + n_layers, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden))
        self.rho = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, token_mask: torch.Tensor):
        layer = nn.functional.one_hot(positions[..., 0].clamp(max=self.n_layers - 1), self.n_layers).float()
        h = self.phi(torch.cat([tokens, layer], dim=-1)) * token_mask[..., None]
        pooled = h.sum(1) / token_mask.sum(1, keepdim=True).clamp(min=1)
        return self.rho(pooled).squeeze(-1)


def fit_deepsets(train: dict, steps: int, seed: int, on_step=None) -> DeepSets:
    torch.manual_seed(seed)
    n_layers = int(train["positions"][..., 0].max()) + 1
    net = DeepSets(train["tokens"].shape[-1], n_layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    y = train["target"]
    mean, std = y.mean(), y.std().clamp(min=1e-6)
    net.y_mean, net.y_std = mean, std
    for step in range(steps):
        opt.zero_grad()
        pred = net(train["tokens"], train["positions"], train["token_mask"])
        loss = ((pred - (y - mean) / std) ** 2).mean()
        loss.backward()
        opt.step()
        if on_step:
            on_step(step + 1)
    return net


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, help="a published zoo folder")
    p.add_argument("--target", default="test_acc")
    p.add_argument("--steps", type=int, default=500, help="DeepSets training steps (full batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    zoo = load(args.zoo)
    zoo = zoo.subset(zoo.models["status"] == "ok")
    fit_ids = zoo.models.loc[zoo.models["split"] != "test", "model_id"].tolist()
    test_ids = zoo.split("test").model_ids
    y_of = dict(zip(zoo.models["model_id"], zoo.models[args.target]))

    # 1. ridge on weight statistics
    ids, x = weight_statistics(zoo)
    row = {m: i for i, m in enumerate(ids)}
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    ridge.fit(x[[row[m] for m in fit_ids]], [y_of[m] for m in fit_ids])
    y_test = np.array([y_of[m] for m in test_ids])
    ridge_pred = ridge.predict(x[[row[m] for m in test_ids]])

    # 2. DeepSets over neuron tokens, normalized with train-split statistics
    stats = compute_norm_stats(zoo)
    fit = pad_tokens(list(TokenView(zoo.subset(fit_ids), target=args.target, normalize=stats)))
    with ProgressBar(None, args.steps, desc="predict_accuracy", enabled=not args.quiet, unit="step") as bar, \
            bar.track(args.steps) as fitting:
        net = fit_deepsets(fit, args.steps, args.seed, on_step=lambda k: fitting.report("fit DeepSets", k, args.steps))
    test_view = TokenView(zoo.subset(test_ids), target=args.target, normalize=stats,
                          token_size=fit["tokens"].shape[-1])
    test = pad_tokens(list(test_view))
    with torch.no_grad():
        pred = net(test["tokens"], test["positions"], test["token_mask"])
        ds_pred = (pred * net.y_std + net.y_mean).numpy()

    r2 = (lambda pred: float(r2_score(y_test, pred)) if len(y_test) > 1 else float("nan"))
    result = {"target": args.target, "n_fit": len(fit_ids), "n_test": len(test_ids),
              "ridge_r2": r2(ridge_pred), "deepsets_r2": r2(ds_pred),
              "ridge_mae": float(np.abs(ridge_pred - y_test).mean()),
              "deepsets_mae": float(np.abs(ds_pred - y_test).mean())}
    # 3. the phase label from the same weight statistics (logistic regression vs the majority class)
    if "phase" in zoo.models:
        phase_of = dict(zip(zoo.models["model_id"], zoo.models["phase"]))
        labels = [phase_of[m] for m in fit_ids]
        truth = np.array([phase_of[m] for m in test_ids])
        majority = max(set(labels), key=labels.count)
        if len(set(labels)) > 1:
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            clf.fit(x[[row[m] for m in fit_ids]], labels)
            guess = clf.predict(x[[row[m] for m in test_ids]])
        else:
            guess = np.array([majority] * len(test_ids))
        result["phase_accuracy"] = float((guess == truth).mean())
        result["phase_majority_accuracy"] = float((truth == majority).mean())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    interruptible(main, "predict_accuracy")
