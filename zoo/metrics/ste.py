"""Permutation search by the straight-through estimator (Ainsworth et al. 2023, Alg. 3), batched.

Weight matching aligns B to A by weights alone; STE aligns it for the loss of the merged model.
It keeps a free copy theta~ of B's weights, initialised at A. Every step:

1. pi <- weight matching of B onto theta~ (the permutation of B nearest to the free copy),
2. the merged model is (theta_A + pi(theta_B)) / 2, the midpoint of the aligned path,
3. its loss on a training batch is backpropagated *straight through* the projection: the
   forward uses pi(theta_B), the gradient updates theta~ as if it had been used (SGD + momentum).

The permutation with the lowest batch loss seen is returned (as git-re-basin's ``mnist_mlp_ste2``).
Here the search is batched over many groups at once (one stacked forward and backward of all
merged models, one batched weight matching per step, warm-started from the previous permutation)
and generalises to k >= 2 models: members 1..k-1 of each group each get a free copy, and the
merged model is the mean of member 0 and the projected others (k = 2 is the midpoint). Ito et al.
(2024) compare this with weight matching for k = 2 and k >= 3 merges.

Cost per step: one weight matching of all groups (its LAPs dominate; a permutation whose cost matrix
did not change is not solved again), one forward and backward on a batch, and the selection loss of
the groups whose permutations moved this step (the merged model's value depends on the permutations
alone, so an unchanged group keeps its last score): the same result as scoring every group.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..functional import make_forward
from .matching import PermutationSpec, apply_permutation_stacked, identity_perms, weight_matching
from .paths import batch_statistics, has_batchnorm

Tensor = torch.Tensor


def _compose(first: dict[str, Tensor], then: dict[str, Tensor]) -> dict[str, Tensor]:
    """The permutation applying ``first`` and then ``then`` (perm[i] = first[then[i]])."""
    return {p: torch.gather(first[p], 1, then[p]) for p in first}


def ste_merge(model: nn.Module, objective, spec: PermutationSpec, params: dict[str, Tensor],
              buffers: dict[str, Tensor], groups, x: Tensor, y: Tensor, steps: int = 200, lr: float = 0.1,
              momentum: float = 0.9, batch_size: int = 128, select: int = 1024, seed: int = 0,
              at: tuple[int, ...] = ()) -> dict:
    """STE permutations for G groups [G, k] of the stacked population ``params`` / ``buffers`` [M, ...].

    ``x`` [N, ...], ``y`` [N]: the data whose batch loss of the merged model drives the search
    (shared by all groups, batches drawn with ``seed``). The permutation kept is the one whose merged
    model has the lowest loss on the first ``select`` samples of x (a fixed set: batch losses are too
    noisy to rank permutations), so the result is never worse there than the first step's, weight
    matching to member 0. Returns {"perms": {p: LongTensor[G, k, n]} (member 0 the identity;
    member j permuted by perms[:, j] is aligned to the group), "loss": [G] the merged model's loss
    on the selection set, "loss_first": [G] the same at the first step, "best_step": [G] the step
    (1-based) at which the kept permutation was found}; with ``at`` (step counts) also
    "at": {s: (perms, loss)} the result a budget of s steps gives (the first s steps of a longer
    search are the whole of a shorter one: same batches, same updates).
    """
    groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)
    g, k = groups.shape
    others = groups[:, 1:].T.reshape(-1)  # member-major: rows j*G..(j+1)*G-1 are member j+1
    ref = {n: v[groups[:, 0]] for n, v in params.items()}
    moving = {n: v[others] for n, v in params.items()}
    free = {n: v.repeat(k - 1, *[1] * (v.dim() - 1)).detach().clone().requires_grad_(True) for n, v in ref.items()}
    velocity = {n: torch.zeros_like(v) for n, v in free.items()}
    merged_buffers = {n: v[groups[:, 0]].clone() for n, v in buffers.items()}
    forward = make_forward(model)
    pairs = torch.stack([torch.arange(len(others)), torch.arange(len(others)) + len(others)], 1)
    perms = identity_perms(spec, len(others))
    best = {p: v.clone() for p, v in perms.items()}
    best_loss = torch.full((g,), float("inf"), dtype=torch.float64)
    best_step = torch.zeros(g, dtype=torch.long)
    snapshots = {}
    first_loss = None
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(x), generator=gen) for _ in range(steps * batch_size // len(x) + 1)])
    bn, was = has_batchnorm(model), model.training
    scored = None  # per group, the permutations whose selection loss was last computed
    model.eval()  # dropout off; BatchNorm nets normalise with the merged model's batch statistics
    try:
        for step in range(steps):
            with torch.no_grad():  # 1. project B onto the free copy, warm-started from the last permutation
                current = apply_permutation_stacked(spec, perms, moving)
                both = {n: torch.cat([free[n].detach(), current[n]]) for n in free}
                delta = weight_matching(spec, both, pairs, seed=seed + step, objectives=False)["perms"]
                perms = _compose(perms, delta)
                projected = apply_permutation_stacked(spec, delta, current)  # = perms applied to moving
            # 2.-3. the merged model's loss, straight through the projection into the free copy
            ste = {n: free[n] + (projected[n] - free[n]).detach() for n in free}
            merged = {n: (ref[n] + ste[n].unflatten(0, (k - 1, g)).sum(0)) / k for n in ref}
            idx = order[step * batch_size:(step + 1) * batch_size]
            loss = _loss(objective, forward, model, bn, merged, merged_buffers, x[idx], y[idx])
            grads = torch.autograd.grad(loss.sum(), list(free.values()))
            with torch.no_grad():
                # the merged model's value is a function of the permutations alone: score only the
                # groups whose permutations moved since they were last scored (the others' selection
                # loss is the one already compared with their best)
                moved = (torch.ones(g, dtype=torch.bool) if scored is None else torch.stack(
                    [(perms[p] != scored[p]).any(1) for p in perms]).any(0).unflatten(0, (k - 1, g)).any(0))
                sel = moved.nonzero()[:, 0]
                value = torch.full((g,), float("inf"), dtype=torch.float64)
                if len(sel):
                    value[sel] = _loss(objective, forward, model, bn, {n: v[sel] for n, v in merged.items()},
                                       {n: v[sel] for n, v in merged_buffers.items()}, x[:select], y[:select])
                scored = {p: v.clone() for p, v in perms.items()}
                first_loss = value.clone() if first_loss is None else first_loss
                better = value < best_loss
                best_loss = torch.where(better, value, best_loss)
                best_step[better] = step + 1
                rows = better.repeat(k - 1)
                for p in best:
                    best[p][rows] = perms[p][rows]
                if step + 1 in at:
                    snapshots[step + 1] = (_by_group(spec, best, g, k), best_loss.numpy().copy())
                for (n, v), grad in zip(free.items(), grads, strict=True):
                    velocity[n] = momentum * velocity[n] + torch.nan_to_num(grad)
                    v.sub_(lr * velocity[n])
    finally:
        model.train(was)
    out = {"perms": _by_group(spec, best, g, k), "loss": best_loss.numpy(), "loss_first": first_loss.numpy(),
           "best_step": best_step.numpy()}
    return {**out, "at": snapshots} if at else out


def _by_group(spec: PermutationSpec, perms: dict[str, Tensor], g: int, k: int) -> dict[str, Tensor]:
    """Member-major permutations [(k-1) G, n] as [G, k, n] with member 0 the identity."""
    return {p: torch.cat([torch.arange(n).expand(g, 1, n), perms[p].unflatten(0, (k - 1, g)).transpose(0, 1)], 1)
            for p, n in spec.sizes.items()}


def _loss(objective, forward, model, bn, params, buffers, x, y) -> Tensor:
    """Loss [G] of stacked states on shared (x, y) (BatchNorm nets: with batch statistics)."""
    g = next(iter(params.values())).shape[0]
    xb, yb = x.expand(g, *x.shape), y.expand(g, *y.shape)
    if not bn:
        return objective.batch_loss(forward, params, buffers, xb, yb).double()
    with batch_statistics(model):
        return objective.batch_loss(forward, params, {n: v.clone() for n, v in buffers.items()}, xb, yb).double()


def ste_matching(model: nn.Module, objective, spec: PermutationSpec, params: dict[str, Tensor],
                 buffers: dict[str, Tensor], pairs, x: Tensor, y: Tensor, **options) -> dict:
    """STE for K pairs [K, 2]: {"perms": {p: LongTensor[K, n]} mapping B onto A (like ``weight_matching``),
    "loss": [K] best midpoint batch loss}. ``options``: those of ``ste_merge``."""
    result = ste_merge(model, objective, spec, params, buffers, pairs, x, y, **options)
    return {"perms": {p: v[:, 1] for p, v in result["perms"].items()}, "loss": result["loss"]}


__all__ = ["ste_matching", "ste_merge"]
