"""Cost estimates for a spec: FLOPs and activations counted on the real model, time from a
measured throughput calibration of the population trainer on this kind of machine.

``zoo presets --calibrate`` trains a small population of every family for a few steps, divides
the counted training FLOPs by the wall time and stores FLOP/s per (device, family) in the user
cache; the numbers shipped in ``calibration.json`` were measured that way on a 2-core x86 CPU.
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .generators.architectures import build_for_task
from .generators.sampling import plan_models
from .generators.tasks import default_data_root

# Sample shape, outputs and vocabulary of each task, known without loading it.
TASK_SHAPES = {
    "mnist1d": ((40,), 10, None), "digits": ((1, 8, 8), 10, None), "teacher_student": (None, 1, None),
    "convection": ((2,), 1, None), "mnist": ((1, 28, 28), 10, None), "fashion_mnist": ((1, 28, 28), 10, None),
    "cifar10": ((3, 32, 32), 10, None), "cifar100": ((3, 32, 32), 100, None), "svhn": ((3, 32, 32), 10, None),
    "tinyimagenet": ((3, 64, 64), 200, None),
}
CALIBRATION_FAMILIES = {  # family: (task, arch fields) of a representative small model
    "mlp": ("mnist1d", {"width": 64, "depth": 2, "activation": "relu"}),
    "pinn": ("convection", {"width": 32, "depth": 3, "activation": "tanh"}),
    "cnn": ("mnist1d", {"width": 16, "depth": 2, "activation": "relu"}),
    "cnn_s": ("mnist", {"width": 8, "activation": "tanh"}),
    "cnn_l": ("cifar10", {"width": 16, "activation": "relu"}),
    "resnet18": ("cifar10", {"width": 4}),
    "resnet50": ("cifar10", {"width": 2}),
    "vit": ("digits", {"width": 32, "depth": 2, "heads": 2, "patch_size": 4}),
    "gpt": ("modular", {"width": 64, "depth": 1, "heads": 4}),
}


def task_shape(task: dict) -> tuple[tuple[int, ...], int, int | None]:
    name = task["task.name"]
    if name == "modular":
        return (3,), task["task.modulus"], task["task.modulus"] + 1
    if name == "teacher_student":
        return (task["task.input_dim"],), 1, None
    return TASK_SHAPES[name]


def _example_input(shape, vocab):
    if vocab is not None:
        return torch.zeros(2, *shape, dtype=torch.long)
    return torch.zeros(2, *shape, requires_grad=True)  # PINN-style losses differentiate inputs too


def model_costs(config: dict) -> dict:
    """Per-sample training FLOPs, activations saved per sample, and parameters of one config."""
    arch = tuple(sorted((k, v) for k, v in config.items() if k.startswith("arch.") and k != "arch.init"))
    key = (arch, task_shape(config))  # tasks of one sample shape (CIFAR-10, SVHN) cost the same
    if key not in _COSTS:
        _COSTS[key] = _count(config)
    return _COSTS[key]


_COSTS: dict[tuple, dict] = {}


def _count(config: dict) -> dict:
    shape, n_out, vocab = task_shape(config)
    build, adapt = build_for_task(config, shape, n_out, vocab)
    with torch.device("meta"):  # count without allocating: full-scale ResNets have 10^8 parameters
        model = build()
        x = adapt(_example_input(shape, vocab))
    acts = []
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o.numel() if torch.is_tensor(o) else 0))
             for m in model.modules() if not list(m.children())]
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).float().sum().backward()
    for h in hooks:
        h.remove()
    return {"flops": counter.get_total_flops() // 2, "activations": sum(acts) // 2,
            "params": sum(p.numel() for p in model.parameters())}


def _calibration_paths() -> list[Path]:
    return [default_data_root() / "calibration.json"]


def load_calibration() -> dict:
    table = json.loads(resources.files("zoo").joinpath("calibration.json").read_text())
    table.pop("_comment", None)
    for path in _calibration_paths():
        if path.exists():
            for device, fams in json.loads(path.read_text()).items():
                table.setdefault(device, {}).update(fams)
    return table


def estimate(spec) -> dict:
    """Training FLOPs, parameters, memory of the largest population and time on CPU / GPU."""
    calib = load_calibration()
    total, sizes, memory, seconds = 0, [], 0, {"cpu": 0.0, "cuda": 0.0}
    plans = plan_models(spec)
    for plan in plans:
        states = 3 if plan.config["train.optimizer"] == "sgd" else 4  # weights, grads, momentum (+ Adam's)
        c = model_costs(plan.config)
        sizes.append(c["params"])
        flops = c["flops"] * plan.config["train.batch_size"] * plan.config["train.steps"]
        total += flops
        pop = min(spec.build.max_population, len(plans))
        memory = max(memory, pop * 4 * (states * c["params"] + 2 * c["activations"] * plan.config["train.batch_size"]))
        for device in seconds:
            rate = calib.get(device, {}).get(plan.config["arch.family"])
            seconds[device] += flops / rate if rate else math.nan
    return {"train_flops": total, "params_min": min(sizes), "params_max": max(sizes),
            "population_bytes": memory, "cpu_seconds": seconds["cpu"], "gpu_seconds": seconds["cuda"]}


def _train_seconds(build, members, data, device: str, steps: int) -> float:
    from .generators.population import TrainConfig, train_population

    t = time.perf_counter()
    train_population(build, members, data, TrainConfig(steps=steps, batch_size=64, checkpoint_steps=[steps],
                                                      device=device))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def calibrate(device: str = "cpu", steps: int = 4, models: int = 16, budget: float = 8.0) -> dict[str, float]:
    """Measure training FLOP/s of the population trainer per family on ``device`` (``models`` models
    at batch 64, about ``budget`` seconds each); store them in the user cache."""
    from .generators.population import Member, TrainConfig, train_population
    from .generators.tasks import TaskData

    rates = {}
    for family, (task, arch) in CALIBRATION_FAMILIES.items():
        config = {"arch.family": family, **{f"arch.{k}": v for k, v in arch.items()}, "task.name": task,
                  "task.modulus": 97, "task.input_dim": 16}
        shape, n_out, vocab = task_shape(config)
        build, adapt = build_for_task(config, shape, n_out, vocab)
        n = 256
        x = (torch.randint(0, vocab, (n, *shape)) if vocab else torch.randn(n, *shape)).numpy()
        y = np.random.default_rng(0).integers(0, n_out, n) if task != "convection" else np.zeros(n, np.float32)
        kind = "pinn" if task == "convection" else "classification"
        extras = {"beta": 1.0, "ic_points": np.zeros((16, 2), np.float32),
                  "bc_times": np.zeros(8, np.float32)} if kind == "pinn" else {}
        xa = np.asarray(adapt(torch.as_tensor(x)))
        data = TaskData(task, xa, y, xa[:8], y[:8], n_out, kind, extras)
        members = [Member(f"m{i}", i, 0.01) for i in range(models)]
        train_population(build, members[:2], data, TrainConfig(steps=2, batch_size=32, checkpoint_steps=[2],
                                                              device=device))
        seconds = partial(_train_seconds, build, members, data, device)

        # the difference of a short and a long run is the time of the extra steps alone, without
        # the fixed set-up and evaluation cost that dominates short runs of small models; the
        # long run gets as many extra steps as fit in about ``budget`` seconds
        short = seconds(steps)
        extra = int(min(max(budget * steps / short, steps), 50 * steps))
        per_step = max(seconds(steps + extra) - short, 1e-9) / extra
        rates[family] = model_costs(config)["flops"] * 64 * models / per_step
    path = _calibration_paths()[0]
    table = json.loads(path.read_text()) if path.exists() else {}
    table[device] = {**table.get(device, {}), **rates}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1))
    return rates


