"""Cost estimates for a spec: FLOPs and activations counted on the real model, time from a
measured throughput calibration of the population trainer on this kind of machine.

Time of a build's training = per population, steps x a fixed per-step cost (op dispatch, which
dominates small models on small inputs) + counted training FLOPs / training throughput + the
checkpoint evaluations' forward FLOPs (train and test set at every checkpoint) / evaluation
throughput. ``zoo presets --calibrate`` measures the three per family on a device by differences
of short and long runs and stores them in the user cache; the numbers shipped in
``calibration.json`` were measured that way on a 2-core x86 CPU.

Time of the measure step = per population and metric family, its work counted in the same three
terms (``metric_work``: Hessian-vector products as training passes over the Hessian samples, the
Bezier bend as training steps of the pairs plus its curve evaluations, linear and aligned paths
and CKA as forward passes, spectral fits per weight matrix) times a factor per family
(``calibration.json`` ``metric_factors``) fitted from the stage times of measured builds
(``time_stages``; the factor absorbs what counting cannot see: Hessian iterations stopping at their
tolerance, the bend's half-budget check, Python work per layer). Opt-in metrics without a cost
model are listed in ``metrics_not_estimated``.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .generators.architectures import FAMILIES, build_for_task
from .generators.sampling import plan_models
from .generators.tasks import default_data_root, task_kind, task_shape


def _example_input(shape, vocab):
    if vocab is not None:
        return torch.zeros(2, *shape, dtype=torch.long)
    return torch.zeros(2, *shape, requires_grad=True)  # PINN-style losses differentiate inputs too


def model_costs(config: dict) -> dict:
    """Per-sample training and forward FLOPs, activations saved per sample, and parameters of one config."""
    arch = tuple(sorted((k, v) for k, v in config.items() if k.startswith("arch.") and k != "arch.init"))
    key = (arch, task_shape(config))  # tasks of one sample shape (CIFAR-10, SVHN) cost the same
    if key not in _COSTS:
        _COSTS[key] = _count(config)
    return _COSTS[key]


_COSTS: dict[tuple, dict] = {}


def train_flops(config: dict) -> float:
    """FLOPs of training one model of ``config``: per-sample cost x batch size x steps."""
    return model_costs(config)["flops"] * config["train.batch_size"] * config["train.steps"]


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
        out = model(x).float().sum()
        forward = counter.get_total_flops()
        out.backward()
    for h in hooks:
        h.remove()
    return {"flops": counter.get_total_flops() // 2, "forward_flops": forward // 2,
            "activations": sum(acts) // 2, "params": sum(p.numel() for p in model.parameters()),
            **_matrices(model)}


def _matrices(model) -> dict:
    """The spectral metrics' work on one model: the weight matrices it fits (``layers``), the FLOPs
    of their eigenvalue problems (min(m, n)^2 max(m, n) per slice of a layer and per FARMS window)
    and of the power-law scans (about 5 n^2 for n pooled eigenvalues: every candidate xmin against
    the tail), with the conventions of ``zoo.metrics.spectral`` (windows of side min(100, m, n) on a
    9 x 9 offset grid; at most 15000 eigenvalues fitted)."""
    from .metrics.spectral import layer_weights

    def offsets(length: int, side: int) -> int:  # distinct window offsets (zoo.metrics.spectral.farms_matrices)
        return len({int(round(v)) for v in np.linspace(0, length - side, 9)})

    shapes = dict(model.named_parameters())
    layers, flops = 0, 0
    for name, _ in layer_weights(model):
        shape = tuple(shapes[name].shape) if name in shapes else ()
        if len(shape) < 2:
            continue
        n, m, slices = max(shape[:2]), min(shape[:2]), math.prod(shape[2:])
        side = min(100, m)
        windows = offsets(n, side) * offsets(m, side)
        layers += 1
        flops += slices * (m * m * n + windows * side**3)
        flops += sum(5 * k * k for k in (slices * m, slices * windows * side) if k <= 15000)
    return {"layers": layers, "spectral_flops": flops}


def _calibration_paths() -> list[Path]:
    return [default_data_root() / "calibration.json"]


def load_calibration() -> dict:
    """{device: {family: {"train_flops_per_s", "eval_flops_per_s", "step_s"}}}, shipped + user cache."""
    table = json.loads(resources.files("zoo").joinpath("calibration.json").read_text())
    table.pop("_comment", None)
    table.pop("metric_factors", None)
    table.pop("publish", None)
    for path in _calibration_paths():
        if path.exists():
            for device, fams in json.loads(path.read_text()).items():
                table.setdefault(device, {}).update(fams)
    for fams in table.values():  # caches written before the three-term model hold one rate
        for family, c in fams.items():
            if not isinstance(c, dict):
                fams[family] = {"train_flops_per_s": c, "eval_flops_per_s": c, "step_s": 0.0}
    return table


def metric_factors() -> dict[str, dict[str, float]]:
    """{family or "default": {metric term: factor}} of the measure step's cost model (calibration.json)."""
    table = json.loads(resources.files("zoo").joinpath("calibration.json").read_text()).get("metric_factors", {})
    return {k: v for k, v in table.items() if not k.startswith("_")}


def publish_seconds(stored_floats: float) -> float:
    """Start-up (imports, task data, planning) and publishing (Parquet, HDF5, plots, card) of a build
    storing ``stored_floats`` weights over its checkpoints: CPU work of the machine that measured it
    (calibration.json ``publish``)."""
    table = json.loads(resources.files("zoo").joinpath("calibration.json").read_text()).get("publish", {})
    return table.get("fixed_s", 0.0) + table.get("per_million_floats_s", 0.0) * stored_floats / 1e6


def _pairs(spec, members) -> int:
    """The pairs the measure step compares in one population (same-cell, or all with metrics.pairs = population)."""
    if spec.metrics.pairs == "population":
        return len(members) * (len(members) - 1) // 2
    return sum(s * (s - 1) // 2 for s in Counter(p.cell_id for p in members).values())


def metric_work(spec, members, rates: dict) -> dict[str, tuple[float, float]]:
    """Per cost term of the measure step on one population: (overhead, compute) seconds before the
    term's factors, counted in the calibrated terms ``rates`` (train FLOP/s, eval FLOP/s, seconds
    per step); overhead counts sequential steps at ``step_s`` each, compute counts FLOPs.

    - hessian: (top_k + 1) x max_iter iterations (power iteration, then Hutchinson) of
      ``hessian_batches`` batches, each model's samples at two training passes (a Hessian-vector
      product); x the checkpoints with ``hessian_checkpoints``;
    - spectral: a step per weight matrix of the population (one batched fit each), and per model its
      eigenvalue and power-law-scan FLOPs (``_matrices``);
    - linear: ``curve_points`` steps, and a forward pass of each pair over the train and test sets per point;
    - bezier: 1.5 x the bend steps (the half-budget check trains again) as training steps of the
      pairs, plus its curves (train and test, and train for the half-budget bend);
    - lmc: per aligned alignment, its curves and the matching's forward pass over the probe batch;
    - cka: each pair's forward pass over the probe batch.
    """
    from .generators.sampling import checkpoint_steps
    from .metrics.connectivity import bend_steps
    from .metrics.registry import METRICS

    ms, cfg = spec.metrics, members[0].config
    kind, c = task_kind(cfg["task.name"]), model_costs(cfg)
    m, pairs = len(members), _pairs(spec, members)
    steps, batch = cfg["train.steps"], cfg["train.batch_size"]
    n_train, n_eval = cfg["task.n_train"], cfg["task.n_train"] + cfg["task.n_test"]
    train_pass, forward = c["flops"] / rates["train_flops_per_s"], c["forward_flops"] / rates["eval_flops_per_s"]
    step_s = rates["step_s"]
    checkpoints = len(checkpoint_steps(steps, cfg["train.checkpoints"]))
    on = {name for name, metric in METRICS.items() if metric.enabled(ms) and metric.applies(kind)}
    work: dict[str, tuple[float, float]] = {}
    if "hessian" in on:
        samples = min(ms.hessian_batches * ms.hessian_batch_size, n_train)
        iters = (checkpoints if ms.hessian_checkpoints else 1) * (ms.hessian_top_k + 1) * ms.hessian_max_iter
        work["hessian"] = (iters * math.ceil(samples / ms.hessian_batch_size) * step_s,
                           iters * m * samples * 2 * train_pass)
    if "spectral" in on:
        sweeps = checkpoints if ms.spectral_checkpoints == "all" else 1
        work["spectral"] = (sweeps * c["layers"] * step_s,
                            sweeps * m * c["spectral_flops"] / rates["eval_flops_per_s"])
    if pairs and "connectivity" in on:
        work["linear"] = (ms.curve_points * step_s, ms.curve_points * pairs * n_eval * forward)
        bend = bend_steps(ms, steps)
        if bend:
            work["bezier"] = (1.5 * bend * step_s, 1.5 * bend * pairs * batch * train_pass
                              + ms.curve_points * pairs * (n_eval + n_train) * forward)
    if pairs and "cka" in on:
        work["cka"] = (step_s, pairs * ms.probe_size * forward)
    if pairs and "lmc" in on:
        aligned = {"none": 0, "weight": 1, "ste": 2, "all": 3}.get(str(ms.lmc), 1)
        work["lmc"] = (aligned * ms.curve_points * step_s,
                       aligned * pairs * (ms.curve_points * n_eval + ms.probe_size) * forward)
    return work


def metric_seconds(spec, members, rates: dict, factors: dict | None = None) -> dict[str, float]:
    """Estimated seconds of each cost term of the measure step on one population: ``metric_work``'s
    (overhead, compute) weighted by the term's fitted factors (default: this family's, else all families')."""
    if factors is None:
        table, family = metric_factors(), members[0].config["arch.family"]
        factors = {**table.get("default", {}), **table.get(family, {})}
    return {term: sum(f * w for f, w in zip(factors.get(term, (1.0, 1.0)), parts, strict=True))
            for term, parts in metric_work(spec, members, rates).items()}


def metrics_not_estimated(spec) -> list[str]:
    """Enabled metrics of ``spec`` that the measure step's cost model does not cover."""
    from .metrics.registry import METRICS

    known = {"hessian", "spectral", "connectivity", "cka", "lmc"}
    kind = task_kind(spec.task.name)
    return [n for n, m in METRICS.items() if n not in known and m.enabled(spec.metrics) and m.applies(kind)]


def estimate(spec) -> dict:
    """Training FLOPs, parameters, memory of the largest population, and estimated seconds of
    training (``cpu_seconds`` / ``gpu_seconds``) and of the measure step (``cpu_metrics_seconds``
    / ``gpu_metrics_seconds``, with ``cpu_metrics_terms`` per term) on CPU / GPU (NaN where the
    family has no calibration for the device), and of start-up and publishing (``publish_seconds``)."""
    from .generators.sampling import checkpoint_steps, group_populations

    calib, factors = load_calibration(), metric_factors()
    total, sizes, memory, seconds, stored = 0, [], 0, {"cpu": 0.0, "cuda": 0.0}, 0
    measure = {"cpu": 0.0, "cuda": 0.0}
    terms: dict[str, float] = {}
    plans = plan_models(spec)
    for pop in group_populations(plans, spec.build.max_population):
        family, steps = pop.members[0].config["arch.family"], pop.members[0].config["train.steps"]
        for device in seconds:
            c = calib.get(device, {}).get(family)
            seconds[device] += steps * c["step_s"] if c else math.nan
            if not c:
                measure[device] = math.nan
                continue
            scale = {**factors.get("default", {}), **factors.get(family, {})}
            for term, s in metric_seconds(spec, pop.members, c, scale).items():
                measure[device] += s
                if device == "cpu":
                    terms[term] = terms.get(term, 0.0) + s
    for plan in plans:
        cfg = plan.config
        states = 3 if cfg["train.optimizer"] == "sgd" else 4  # weights, grads, momentum (+ Adam's)
        c = model_costs(cfg)
        sizes.append(c["params"])
        flops = train_flops(cfg)
        kept = len(checkpoint_steps(cfg["train.steps"], spec.train.checkpoints))
        evaluated = kept * (cfg["task.n_train"] + cfg["task.n_test"])
        stored += kept * c["params"]
        total += flops
        pop = min(spec.build.max_population, len(plans))
        memory = max(memory, pop * 4 * (states * c["params"] + 2 * c["activations"] * cfg["train.batch_size"]))
        for device in seconds:
            rates = calib.get(device, {}).get(cfg["arch.family"])
            seconds[device] += (flops / rates["train_flops_per_s"]
                                + c["forward_flops"] * evaluated / rates["eval_flops_per_s"]) if rates else math.nan
    return {"train_flops": total, "params_min": min(sizes), "params_max": max(sizes),
            "population_bytes": memory, "cpu_seconds": seconds["cpu"], "gpu_seconds": seconds["cuda"],
            "cpu_metrics_seconds": measure["cpu"], "gpu_metrics_seconds": measure["cuda"],
            "cpu_metrics_terms": terms, "metrics_not_estimated": metrics_not_estimated(spec),
            "publish_seconds": publish_seconds(stored)}


def _train_seconds(build, members, data, device: str, steps: int, batch: int = 64,
                   evaluate_every_step: bool = False) -> float:
    from .generators.population import TrainConfig, train_population

    checkpoints = list(range(1, steps + 1)) if evaluate_every_step else [steps]
    t = time.perf_counter()
    train_population(build, members, data, TrainConfig(steps=steps, batch_size=batch,
                                                      checkpoint_steps=checkpoints, device=device))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _per_unit(seconds, n: int, budget: float, cap: int = 50, repeats: int = 2) -> float:
    """Seconds per unit of work: the difference of a run with n units and one with as many more as
    fit in about ``budget`` seconds (at most ``cap`` x n), which cancels the fixed set-up cost.
    Each run is the fastest of ``repeats`` (page faults and the scheduler only ever add time)."""
    def best(k):
        return min(seconds(k) for _ in range(repeats))

    short = best(n)
    extra = int(min(max(budget * n / short, n), cap * n))
    return max(best(n + extra) - short, 1e-9) / extra


def calibrate(device: str = "cpu", steps: int = 4, models: int = 16, budget: float = 8.0,
              families: list[str] | None = None) -> dict[str, dict]:
    """Measure, per family (all, or ``families``) on ``device`` (``models`` models, about 2 x
    ``budget`` seconds per term), on the family's calibration sample (``Family.calibration``):
    training FLOP/s at batch 64, the fixed per-step cost (steps at batch 1, minus their FLOPs at
    that rate) and the FLOP/s of checkpoint evaluation; store them in the user cache."""
    from .generators.population import Member
    from .generators.tasks import TaskData

    table = {}
    for family in families or list(FAMILIES):
        task, arch = FAMILIES[family].calibration
        config = {"arch.family": family, **{f"arch.{k}": v for k, v in arch.items()}, "task.name": task,
                  "task.modulus": 97, "task.input_dim": 16}
        shape, n_out, vocab = task_shape(config)
        build, adapt = build_for_task(config, shape, n_out, vocab)
        n = 256
        x = (torch.randint(0, vocab, (n, *shape)) if vocab else torch.randn(n, *shape)).numpy()
        kind = task_kind(task)
        y = np.random.default_rng(0).integers(0, n_out, n) if kind == "classification" else np.zeros(n, np.float32)
        extras = {"beta": 1.0, "ic_points": np.zeros((16, 2), np.float32),
                  "bc_times": np.zeros(8, np.float32)} if kind == "pinn" else {}
        xa = np.asarray(adapt(torch.as_tensor(x)))
        data = TaskData(task, xa, y, xa[:8], y[:8], n_out, kind, extras)
        members = [Member(f"m{i}", i, 0.01) for i in range(models)]
        run = partial(_train_seconds, build, members, data, device)
        run(2, batch=2)  # warm-up
        costs = model_costs(config)

        rate = costs["flops"] * 64 * models / _per_unit(run, steps, budget)
        small_step = _per_unit(partial(run, batch=1), steps, budget)
        step_s = max(small_step - costs["flops"] * models / rate, 0.0)
        # the same batch-1 steps, each followed by a checkpoint evaluation of the train and test sets
        per_eval = max(_per_unit(partial(run, batch=1, evaluate_every_step=True), steps, budget) - small_step, 1e-9)
        evaluate = costs["forward_flops"] * (len(data.x_train) + len(data.x_test)) * models / per_eval
        table[family] = {"train_flops_per_s": rate, "eval_flops_per_s": evaluate, "step_s": step_s}
    path = _calibration_paths()[0]
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[device] = {**stored.get(device, {}), **table}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=1))
    return table

