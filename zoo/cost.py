"""Cost estimates for a spec: FLOPs counted on the real model, time from a measured throughput."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .generators.architectures import build_for_task
from .generators.sampling import plan_models

# Population-trainer throughput on a 2-core x86 CPU (this project's CI machine), measured with
# benchmarks/population_vs_loop.py: sustained training FLOP/s of the vectorized trainer.
CPU_TRAIN_FLOPS_PER_S = 4e9
INPUT_SHAPES = {"mnist1d": ((40,), 10)}


def _train_flops_per_sample(config: dict) -> tuple[int, int]:
    """(forward+backward FLOPs for one sample, trainable parameters) of one model config."""
    shape, classes = INPUT_SHAPES[config["task.name"]]
    build, adapt = build_for_task(config, shape, classes)
    model = build()
    x = adapt(torch.zeros(2, *shape))
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def estimate(spec) -> dict:
    total, sizes, cache = 0, [], {}
    for plan in plan_models(spec):
        key = tuple(sorted((k, v) for k, v in plan.config.items() if k.startswith(("arch.", "task."))))
        if key not in cache:
            cache[key] = _train_flops_per_sample(plan.config)
        flops, params = cache[key]
        sizes.append(params)
        total += flops * plan.config["train.batch_size"] * plan.config["train.steps"]
    return {"train_flops": total, "params_min": min(sizes), "params_max": max(sizes),
            "cpu_seconds": total / CPU_TRAIN_FLOPS_PER_S}
