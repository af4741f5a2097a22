"""The vectorized population trainer: M models of one architecture trained as stacked tensors.

All trainable parameters live in one flat buffer ``theta`` [M, P] (state_dict order); each step
takes views of it, runs one batched forward for all models, one backward of the summed per-model
losses (the models share no parameters, so each gets exactly its own gradient) and one fused
optimizer update on [M, P] with per-model lr / momentum / weight decay as [M, 1] tensors.
Every random stream (init, label noise, data subset, batch order, dropout keys) comes from the model's own
seed, so a model trains to the same weights whichever population it is in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..functional import (  # noqa: F401
    ELEMENTWISE,
    Layout,
    evaluate,
    layout_of,
    make_forward,
    population_forward,
    stack_states,
    to_flat,
)
from .architectures.dropout import assign_dropout_keys, stack_dropout_state
from .tasks import TaskData
from .tasks.objectives import objective_for


@dataclass
class Member:
    """One model of a population: its seed and its per-model hyperparameters."""

    model_id: str
    seed: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_noise: float = 0.0
    train_fraction: float = 1.0
    augment: bool = False  # random flips and +-4 pixel shifts of image batches


@dataclass
class TrainConfig:
    """What all members of a population share."""

    steps: int
    batch_size: int
    checkpoint_steps: list[int]
    optimizer: str = "sgd"
    schedule: str = "constant"
    betas: tuple[float, float] = (0.9, 0.999)
    eval_chunk: int | None = None  # samples per evaluation chunk (None: sized to the population)
    dtype: torch.dtype = torch.float32  # float64 for numerical-agreement checks
    device: str = "cpu"
    precision: str = "fp32"  # "bf16": forward and backward under bf16 autocast (CUDA), fp32 weights
    on_step: Callable[[int], None] | None = None  # called after each step with the steps done (progress)


@dataclass
class PopulationResult:
    model_ids: list[str]
    layout: Layout
    checkpoint_steps: list[int]
    weights: np.ndarray  # [K, M, P] float32 flat state_dict vectors per checkpoint
    metrics: dict[str, np.ndarray]  # name -> [K, M]: train/test loss/acc per checkpoint
    status: list[str]  # ok | diverged, per model
    diverged_step: np.ndarray  # [M] first step with a non-finite loss, -1 if none
    wall_time_s: float
    extra: dict = field(default_factory=dict)


def seed_stream(seed: int, stream: int) -> torch.Generator:
    """A generator for one named random stream of one model."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) % (2**63 - 1))


INIT, NOISE, SUBSET, ORDER, AUGMENT, DROPOUT = range(6)
SHIFT = 4  # pixels of random translation (zero padded), as in the usual CIFAR augmentation


def init_models(build: Callable[[], nn.Module], seeds: list[int]) -> list[nn.Module]:
    """Build one model per seed, each initialised from its own stream (global RNG restored)."""
    models = []
    with torch.random.fork_rng(devices=[]):
        for s in seeds:
            torch.manual_seed(seed_stream(s, INIT).initial_seed())
            models.append(assign_dropout_keys(build(), seed_stream(s, DROPOUT)))
    return models


def member_data(member: Member, y: torch.Tensor, n_classes: int, steps: int, batch: int):
    """(labels [N], subset mask [N], batch indices [steps, batch]) of one model, from its seed.

    Label noise replaces a fraction of labels by a different random class; the subset is the
    load axis (fraction of training data seen); batches walk epoch permutations of the subset.
    """
    n = y.shape[0]
    labels = y.clone()
    if member.label_noise > 0 and not y.is_floating_point():
        g = seed_stream(member.seed, NOISE)
        flip = torch.randperm(n, generator=g)[: round(member.label_noise * n)]
        shift = torch.randint(1, n_classes, (flip.numel(),), generator=g)
        labels[flip] = (labels[flip] + shift) % n_classes
    g = seed_stream(member.seed, SUBSET)
    subset = torch.randperm(n, generator=g)[: max(batch, round(member.train_fraction * n))]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[subset] = True
    g = seed_stream(member.seed, ORDER)
    epochs = math.ceil(steps * batch / subset.numel())
    order = torch.cat([subset[torch.randperm(subset.numel(), generator=g)] for _ in range(epochs)])
    return labels, mask, order[: steps * batch].view(steps, batch)


def member_augmentation(member: Member, steps: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flip [steps, B] bool, shift [steps, B, 2] int) of one model; all zero without augmentation."""
    if not member.augment:
        return torch.zeros(steps, batch, dtype=torch.bool), torch.zeros(steps, batch, 2, dtype=torch.long)
    g = seed_stream(member.seed, AUGMENT)
    flip = torch.rand(steps, batch, generator=g) < 0.5
    return flip, torch.randint(-SHIFT, SHIFT + 1, (steps, batch, 2), generator=g)


def augment_images(x: torch.Tensor, flip: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-sample horizontal flip and translation of image batches x [M, B, C, H, W]."""
    m, b, c, h, w = x.shape
    x = torch.where(flip[..., None, None, None], x.flip(-1), x)
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT))
    rows = torch.arange(h) + SHIFT + shift[..., 0:1]  # [M, B, H]
    cols = torch.arange(w) + SHIFT + shift[..., 1:2]  # [M, B, W]
    padded = padded.gather(3, rows[:, :, None, :, None].expand(m, b, c, h, w + 2 * SHIFT))
    return padded.gather(4, cols[:, :, None, None, :].expand(m, b, c, h, w))


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    """Learning-rate multiplier at ``step``: torch's CosineAnnealingLR (eta_min 0) or OneCycleLR
    (pct_start 0.3, div_factor 25, final_div_factor 1e4, cosine; momentum is not cycled)."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / steps))
    if schedule == "onecycle":
        warm_end = 0.3 * steps - 1
        if step <= warm_end:
            return _cos_anneal(1 / 25, 1.0, step / warm_end if warm_end > 0 else 1.0)
        return _cos_anneal(1.0, 1 / 25 / 1e4, (step - warm_end) / (steps - 1 - warm_end))
    return 1.0


def train_population(build: Callable[[], nn.Module], members: list[Member], data: TaskData,
                     cfg: TrainConfig, threads: int | None = None) -> PopulationResult:
    """Train all ``members`` of one architecture together; see the module docstring."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    models = [mdl.to(device=device, dtype=cfg.dtype) for mdl in init_models(build, [mb.seed for mb in members])]
    template = models[0].train()
    layout = layout_of(template)
    params0, buffers = stack_states(models)
    buffers |= stack_dropout_state(models)  # per-model dropout keys and counters (int64, not published)
    del models
    m = len(members)
    train_names = [t for t in layout.tensors if t.trainable]
    # One flat buffer holds every trainable tensor as a contiguous [M, *shape] block, so the
    # optimizer is a handful of ops on [M * P] and each parameter is a free view of it.
    theta = torch.cat([params0[t.name].reshape(-1) for t in train_names])
    blocks = np.cumsum([0] + [m * (t.end - t.start) for t in train_names]).tolist()
    params = {t.name: theta[a:b].view(m, *t.shape).requires_grad_(True)
              for t, a, b in zip(train_names, blocks, blocks[1:])}
    grad_flat = torch.zeros_like(theta)  # backward accumulates every gradient straight into it
    for p, a, b in zip(params.values(), blocks, blocks[1:]):
        p.grad = grad_flat[a:b].view_as(p)
    owner = torch.cat([torch.arange(m).repeat_interleave(t.end - t.start) for t in train_names])
    theta_blocks = [theta[a:b].view(m, -1) for a, b in zip(blocks, blocks[1:])]

    def as_input(a):  # float inputs follow the training dtype; token ids stay integers
        t = torch.as_tensor(a).to(device)
        return t.to(cfg.dtype) if t.is_floating_point() else t

    objective = objective_for(data)
    x_train, x_test, y_test = as_input(data.x_train), as_input(data.x_test), as_input(data.y_test)
    y_train = as_input(data.y_train)
    per = [member_data(mb, y_train, data.n_classes, cfg.steps, cfg.batch_size) for mb in members]
    labels = torch.stack([p[0] for p in per]).to(device)  # [M, N, ...] (differ per model under label noise)
    subset = torch.stack([p[1] for p in per]).to(device)  # [M, N]
    order = torch.stack([p[2] for p in per]).to(device)  # [M, steps, B]
    augmenting = any(mb.augment for mb in members) and x_train.dim() == 4
    if augmenting:
        aug = [member_augmentation(mb, cfg.steps, cfg.batch_size) for mb in members]
        flips, shifts = torch.stack([a[0] for a in aug]).to(device), torch.stack([a[1] for a in aug]).to(device)
    del per

    def per_element(values):  # a per-model hyperparameter spread over theta's elements
        v = torch.tensor(values, dtype=theta.dtype)
        return v[0].item() if bool((v == v[0]).all()) else v[owner].to(device)

    lr = torch.tensor([mb.lr for mb in members], dtype=theta.dtype, device=device)
    mom = per_element([mb.momentum for mb in members])
    wd = per_element([mb.weight_decay for mb in members])
    use_wd = not (isinstance(wd, float) and wd == 0.0)
    buf = torch.zeros_like(theta)
    buf2 = torch.zeros_like(theta) if cfg.optimizer == "adam" else None
    alive = torch.ones(m, dtype=torch.bool, device=device)
    diverged_step = torch.full((m,), -1, dtype=torch.long, device=device)
    forward = make_forward(template)
    has_buffers = bool(buffers)

    snapshots, metrics = [], {}

    # On the CPU, metrics are computed in float64 and rounded to float32, so they do not depend on
    # how many threads the GEMMs used (a worker's thread count varies with the backend and --jobs).
    eval_dtype = torch.float64 if device.type == "cpu" and cfg.dtype == torch.float32 else cfg.dtype

    def cast(t):
        return t.to(eval_dtype) if t.is_floating_point() else t

    def checkpoint():
        p = {k: cast(v.detach()) for k, v in params.items()}
        b = {k: cast(v) for k, v in buffers.items()}
        for split, x, y, w in (("train", x_train, labels, subset), ("test", x_test, y_test, None)):
            values = evaluate(forward, template, objective, p, b, cast(x), cast(y), w, cfg.eval_chunk, split)
            for k, v in values.items():
                metrics.setdefault(f"{split}_{k}", []).append(v.float().cpu().numpy().copy())
        snapshots.append(to_flat(params, buffers, layout).detach().float().cpu().numpy().copy())

    checkpoints = set(cfg.checkpoint_steps)
    if 0 in checkpoints:
        checkpoint()
    rows = torch.arange(m, device=device).unsqueeze(1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    for step in range(cfg.steps):
        idx = order[:, step]  # [M, B]
        xb = x_train[idx]
        if augmenting:
            xb = augment_images(xb, flips[:, step], shifts[:, step])
        yb = labels[rows, idx]
        old_buffers = {k: v.clone() for k, v in buffers.items()} if has_buffers else None
        with autocast:
            loss = objective.batch_loss(forward, params, buffers, xb, yb).float()  # [M]
        grad_flat.zero_()
        loss.sum().backward()
        with torch.no_grad():
            g = grad_flat
            if use_wd:
                g = torch.addcmul(g, wd, theta) if torch.is_tensor(wd) else g.add(theta, alpha=wd)
            step_lr = lr * _lr_factor(cfg.schedule, step, cfg.steps)
            if cfg.optimizer == "sgd":  # torch.optim.SGD: buf = mom * buf + g; p -= lr * buf
                new_buf = torch.addcmul(g, mom, buf) if torch.is_tensor(mom) else torch.add(g, buf, alpha=mom)
                update = new_buf
            else:  # Adam with bias correction; betas shared by the population
                b1, b2 = cfg.betas
                t = step + 1
                new_buf = torch.lerp(buf, g, 1 - b1)
                new_buf2 = torch.lerp(buf2, g * g, 1 - b2)
                update = (new_buf / (1 - b1**t)) / (new_buf2 / (1 - b2**t)).sqrt_().add_(1e-8)
            # A model whose loss or update is not finite is frozen at its last finite state.
            finite = torch.stack([g[a:b].view(m, -1).sum(1) for a, b in zip(blocks, blocks[1:])]).sum(0).isfinite()
            ok = alive & loss.isfinite() & finite & step_lr.isfinite()  # a NaN/inf lr would poison theta
            scale = torch.where(ok, step_lr, 0.0).unsqueeze(1)  # [M, 1]
            if not bool(ok.all()):  # NaN * 0 is NaN: zero the frozen models' updates first
                update = torch.nan_to_num(update, nan=0.0, posinf=0.0, neginf=0.0)
            for block, a, b in zip(theta_blocks, blocks, blocks[1:]):
                block.addcmul_(update[a:b].view(m, -1), scale, value=-1.0)
            buf = new_buf
            if buf2 is not None:
                buf2 = new_buf2
            if has_buffers:  # frozen models keep the running stats of their last finite state
                for k, v in buffers.items():
                    keep = ok.view(m, *([1] * (v.dim() - 1)))
                    v.copy_(torch.where(keep, v, old_buffers[k]))
            diverged_step = torch.where(alive & ~ok, step, diverged_step)
            alive = ok
        if step + 1 in checkpoints:
            checkpoint()
        if cfg.on_step is not None:
            cfg.on_step(step + 1)

    return PopulationResult(
        model_ids=[mb.model_id for mb in members],
        layout=layout,
        checkpoint_steps=sorted(checkpoints),
        weights=np.stack(snapshots),
        metrics={k: np.stack(v) for k, v in metrics.items()},
        status=["ok" if a else "diverged" for a in alive.cpu().tolist()],
        diverged_step=diverged_step.cpu().numpy(),
        wall_time_s=time.perf_counter() - t0,
    )
