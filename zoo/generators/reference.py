"""The per-model training loop the population trainer must match: plain PyTorch, one model at
a time, with the same seeds, batches and optimizer semantics. Used by tests and benchmarks as
the baseline; never by builds."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..functional import layout_of, stack_states, to_flat
from .population import Member, TrainConfig, init_models, member_data
from .tasks import TaskData


def train_model_loop(build, member: Member, data: TaskData, cfg: TrainConfig) -> np.ndarray:
    """Train one model with torch.optim and return its final flat state_dict vector [P]."""
    model: nn.Module = init_models(build, [member.seed])[0].to(cfg.dtype).train()
    x = torch.as_tensor(data.x_train).to(cfg.dtype)
    labels, _, order = member_data(member, torch.as_tensor(data.y_train), data.n_classes,
                                   cfg.steps, cfg.batch_size)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=member.lr, momentum=member.momentum,
                              weight_decay=member.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=member.lr, betas=cfg.betas,
                               weight_decay=member.weight_decay)
    sched = None
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    elif cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=member.lr, total_steps=cfg.steps,
                                                    cycle_momentum=False)
    for step in range(cfg.steps):
        idx = order[step]
        loss = F.cross_entropy(model(x[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched:
            sched.step()
    params, buffers = stack_states([model])
    return to_flat(params, buffers, layout_of(model))[0].numpy()
