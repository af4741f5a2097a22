"""STE permutation search (zoo.metrics.ste): planted permutations are recovered; never worse than WM."""

from __future__ import annotations

import torch
from torch import nn

from zoo.functional import stack_states
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.lmc import lmc_pairs
from zoo.metrics.matching import (
    aligned_pairs,
    apply_permutation_stacked,
    permutation_spec,
    random_perms,
    weight_matching,
)
from zoo.metrics.paths import evaluate_states, interpolate
from zoo.metrics.ste import ste_matching, ste_merge


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).double()


def bn_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 6, 3)).double()


def data(n: int = 200, shape=(6,)):
    """Inputs and learnable labels (a random linear teacher's argmax)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return x, (x.flatten(1) @ torch.randn(x[0].numel(), 3, generator=g, dtype=torch.float64)).argmax(1)


def planted(build, copies: int, x, y):
    """A model trained on (x, y) and ``copies`` permuted copies of it, stacked [1 + copies, ...].

    Trained, so that a wrong permutation's merge is worse than the model: an untrained model's
    midpoint with a mispermuted copy can have a lower loss, and STE would rightly prefer it."""
    torch.manual_seed(1)
    model = build()
    for _ in range(300):  # full-batch gradient descent
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= 0.5 * g
    model.eval()
    params, buffers = stack_states([model])
    spec = permutation_spec(model)
    perms = random_perms(spec, copies, seed=7)
    rep = {k: v.expand(copies, *v.shape[1:]) for k, v in {**params, **buffers}.items()}
    moved = apply_permutation_stacked(spec, perms, rep)
    stacked = {k: torch.cat([v, moved[k]]) for k, v in {**params, **buffers}.items()}
    return model, spec, {k: stacked[k] for k in params}, {k: stacked[k] for k in buffers}


def test_ste_recovers_a_planted_permutation_and_the_midpoint_is_the_endpoint():
    x, y = data()
    model, spec, params, buffers = planted(mlp, 1, x, y)
    result = ste_matching(model, Classification(), spec, params, buffers, [[0, 1]], x, y, steps=50)
    a, b = aligned_pairs(spec, params, [[0, 1]], result["perms"])
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    mid = interpolate(a, b, torch.tensor([0.0, 0.5], dtype=torch.float64))
    loss = evaluate_states(model, Classification(), mid, {}, {"train": (x, y)})["train.loss"]
    assert loss[1].item() == loss[0].item()


def test_ste_merge_of_three_permuted_copies_with_batchnorm_is_the_model():
    x, y = data(shape=(1, 6))
    model, spec, params, buffers = planted(bn_cnn, 2, x, y)
    result = ste_merge(model, Classification(), spec, params, buffers, [[0, 1, 2]], x, y, steps=50)
    perms = result["perms"]
    assert all(v.shape == (1, 3, spec.sizes[p]) for p, v in perms.items())
    for j in (1, 2):
        back = apply_permutation_stacked(spec, {p: v[:, j] for p, v in perms.items()},
                                         {k: v[j:j + 1] for k, v in {**params, **buffers}.items()})
        for k, v in back.items():
            torch.testing.assert_close(v, {**params, **buffers}[k][:1], rtol=0, atol=0)


def test_ste_is_never_worse_than_weight_matching_and_improves_on_real_pairs(mnist1d_small):
    """Two pairs of small MLPs trained on different seeds: STE's midpoint loss on its selection set is
    at most weight matching's (its first step is weight matching) and lower for at least one pair."""
    from zoo.generators.population import Member, TrainConfig, train_population
    from zoo.generators.tasks.base import TaskData

    def build():
        return nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 10))

    d = mnist1d_small
    task = TaskData("mnist1d", d.x_train, d.y_train, d.x_test, d.y_test, 10)
    result = train_population(build, [Member(f"m{i}", i, lr=0.05) for i in range(4)], task,
                              TrainConfig(steps=150, batch_size=32, checkpoint_steps=[150]))
    model = build().double()
    from zoo.functional import from_flat

    params, buffers = from_flat(torch.from_numpy(result.weights[-1]).double(), result.layout)
    x, y = torch.as_tensor(d.x_train).double(), torch.as_tensor(d.y_train)
    spec, pairs, obj = permutation_spec(model), torch.tensor([[0, 1], [2, 3]]), Classification()
    ste = ste_matching(model, obj, spec, params, buffers, pairs, x, y, steps=60, select=512)
    wm = weight_matching(spec, params, pairs)["perms"]
    half = torch.tensor([0.5], dtype=torch.float64)
    wm_loss = evaluate_states(model, obj, interpolate(*aligned_pairs(spec, params, pairs, wm), half), {},
                              {"train": (x[:512], y[:512])})["train.loss"].numpy()
    assert (ste["loss"] <= wm_loss + 1e-9).all()
    assert (ste["loss"] < wm_loss - 1e-3).any()


def test_lmc_pairs_accepts_ste_as_an_opt_in_alignment():
    x, y = data()
    model, spec, params, buffers = planted(mlp, 1, x, y)
    rows, perms = lmc_pairs(model, Classification(), params, buffers, torch.tensor([[0, 1]]), {"train": (x, y)}, x,
                            alignments=("none", "ste"), n_points=3, layerwise=False)
    ste = rows[rows["alignment"] == "ste"].iloc[0]
    assert abs(ste["barrier_max.train.loss"]) < 1e-12 and ste["l2"] < 1e-12
    assert set(k.split("/")[0] for k in perms) == {"none", "ste"}
