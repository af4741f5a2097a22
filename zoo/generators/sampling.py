"""Phase-plane samplers: turn a spec into model plans with stable ids, and group them.

A model's id is the hash of its full resolved config (task, arch, train and seed), so ids and
random streams stay the same when a grid is extended or reordered (also by a field added later,
such as arch.dropout, at its neutral value: see spec.NEUTRAL).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from ..spec import PER_MODEL_KEYS, ZooSpec, identity, stable_hash


@dataclass
class ModelPlan:
    model_id: str
    cell_id: str  # same config, different seeds
    seed: int  # the user-facing seed (phase.seeds)
    config: dict  # flat dotted keys: task.*, arch.*, train.*
    axes: dict = field(default_factory=dict)  # axis name -> value

    @property
    def rng_seed(self) -> int:
        """The integer every random stream of this model derives from."""
        return int(self.model_id[2:], 16)


@dataclass
class PopulationPlan:
    population_id: str
    members: list[ModelPlan]

    @property
    def shared(self) -> dict:
        return {k: v for k, v in self.members[0].config.items() if k not in PER_MODEL_KEYS}


def grid(spec: ZooSpec) -> list[ModelPlan]:
    """Every combination of axis values x seeds, in a fixed order."""
    base = spec.model_configs()
    axes = spec.phase.axes
    plans = []
    for values in itertools.product(*[a.values for a in axes]):
        config = dict(base)
        config.update({a.key: v for a, v in zip(axes, values)})
        if config["train.epochs"] > 0:  # an epoch budget fixes the number of steps per batch size
            config["train.steps"] = math.ceil(config["train.epochs"] * config["task.n_train"]
                                              / config["train.batch_size"])
        hashed = identity(config)
        cell_id = "c-" + stable_hash(hashed, 10)
        for seed in spec.phase.seeds:
            model_id = "m-" + stable_hash({"config": hashed, "seed": seed}, 14)
            plans.append(ModelPlan(model_id, cell_id, seed, config,
                                   {a.name: v for a, v in zip(axes, values)}))
    return plans


# The adaptive sampler trains a subset of the grid, chosen round by round (adaptive.py); planning
# questions asked before training (cost, memory) are answered for the full grid.
SAMPLERS = {"grid": grid, "adaptive": grid}


def plan_models(spec: ZooSpec, sampler: str | None = None) -> list[ModelPlan]:
    return SAMPLERS[sampler or spec.phase.sampler](spec)


def arch_key(config: dict) -> str:
    return stable_hash({k: v for k, v in identity(config).items() if k.startswith("arch.")})


def group_populations(plans: list[ModelPlan], max_population: int,
                      caps: dict[str, int] | None = None) -> list[PopulationPlan]:
    """Models sharing shapes and step schedule train together, at most ``max_population`` each
    (or the per-architecture cap in ``caps``, keyed by ``arch_key``, from the memory budget).

    Whole cells stay in one population where they fit, so same-cell pair metrics (barriers,
    CKA, matching) are computed inside the job that trained the models.
    """
    groups: dict[str, dict[str, list[ModelPlan]]] = {}
    for p in plans:
        key = stable_hash({k: v for k, v in p.config.items() if k not in PER_MODEL_KEYS})
        groups.setdefault(key, {}).setdefault(p.cell_id, []).append(p)
    pops = []
    for cells in groups.values():
        first = next(iter(cells.values()))[0]
        limit = min(max_population, (caps or {}).get(arch_key(first.config), max_population))
        chunk: list[ModelPlan] = []
        for cell in cells.values():
            while cell:
                if chunk and len(chunk) + len(cell) > limit:
                    pops.append(_population(chunk))
                    chunk = []
                take = cell[:limit]
                cell = cell[limit:]
                chunk += take
        if chunk:
            pops.append(_population(chunk))
    return pops


def _population(members: list[ModelPlan]) -> PopulationPlan:
    return PopulationPlan("p-" + stable_hash([m.model_id for m in members], 12), members)


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """Step 0 (the initialisation) and ``n`` evenly spaced steps ending at the last one."""
    return sorted({0, *(round(steps * (i + 1) / n) for i in range(n))})
