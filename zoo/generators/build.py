"""plan -> populations -> shards: the build pipeline and its execution backend.

One population is the unit of work, of parallelism (one joblib task) and of crash recovery:
its results are written as one shard file, atomically; a rerun skips populations whose shard
exists and is readable, so a killed build resumes and publishes the same dataset.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path, atomic_write_bytes
from ..spec import ZooSpec, stable_hash
from .architectures import build_for_task
from .population import Member, TrainConfig, train_population
from .sampling import PopulationPlan, group_populations, plan_models
from .tasks import DatasetMissing, TaskData, load_task

STATE_DIR = ".zoo"  # build state inside the output folder: the spec and one shard per population
SCHEMA_VERSION = 1


class BuildError(RuntimeError):
    """A user-facing build problem (bad output folder, corrupt shard): one line, exit 2."""


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """Step 0 (the initialisation) and ``n`` evenly spaced steps ending at the last one."""
    return sorted({0, *(round(steps * (i + 1) / n) for i in range(n))})


def spec_fingerprint(spec: ZooSpec) -> str:
    """What must match for a rerun to resume: everything that changes the models."""
    d = spec.to_dict()
    d["build"] = {k: v for k, v in d["build"].items() if k not in ("max_population",)}
    d.pop("description", None)
    return stable_hash(d, 16)


# ---------------------------------------------------------------- one population

def run_population(pop: PopulationPlan, data: TaskData, shard: Path, threads: int) -> dict:
    """Train one population and write its shard atomically. Runs inside a worker."""
    torch.set_num_threads(threads)
    cfg = pop.members[0].config
    build, adapt = build_for_task(cfg, data.input_shape, data.n_classes, data.extras.get("vocab_size"))
    data = replace(data, x_train=adapt(data.x_train), x_test=adapt(data.x_test))
    members = [Member(p.model_id, p.rng_seed, lr=p.config["train.lr"],
                      momentum=p.config["train.momentum"], weight_decay=p.config["train.weight_decay"],
                      label_noise=p.config["task.label_noise"],
                      train_fraction=p.config["task.train_fraction"], augment=p.config["task.augment"])
               for p in pop.members]
    train_cfg = TrainConfig(steps=cfg["train.steps"], batch_size=cfg["train.batch_size"],
                            checkpoint_steps=checkpoint_steps(cfg["train.steps"], cfg["train.checkpoints"]),
                            optimizer=cfg["train.optimizer"], schedule=cfg["train.schedule"])
    result = train_population(build, members, data, train_cfg)
    write_shard(shard, pop, result)
    return {"population_id": pop.population_id, "models": len(members), "wall_time_s": result.wall_time_s}


def write_shard(path: Path, pop: PopulationPlan, result) -> None:
    meta = {"population_id": pop.population_id, "model_ids": result.model_ids,
            "checkpoint_steps": result.checkpoint_steps, "status": result.status,
            "wall_time_s": result.wall_time_s,
            "layout": [vars(t) for t in result.layout.tensors]}
    arrays = {"weights": result.weights.astype(np.float32), "diverged_step": result.diverged_step,
              **{f"metric/{k}": v for k, v in result.metrics.items()}}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def read_shard(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Load a shard fully (zip CRCs are checked on read); raise BuildError if it is corrupt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise BuildError(f"corrupt shard {path}: {type(e).__name__}: {e}; rerun with --repair "
                         "to move it aside and retrain that population") from None
    return meta, arrays


# ---------------------------------------------------------------- the whole build

TASK_OPTIONS = ("modulus", "operation", "input_dim", "beta", "download")


def load_spec_task(spec: ZooSpec, data_root: Path | None = None) -> TaskData:
    """The task data of a spec; a dataset that is not available is a user error."""
    t = spec.task
    try:
        return load_task(t.name, t.n_train, t.n_test, t.data_seed, data_root,
                         **{k: getattr(t, k) for k in TASK_OPTIONS})
    except (DatasetMissing, ValueError, RuntimeError) as e:
        raise BuildError(str(e)) from None


def prepare_output(out: Path, spec: ZooSpec) -> None:
    """Create or reuse ``out``; refuse a non-empty folder that is not this zoo's."""
    state = out / STATE_DIR / "spec.json"
    if out.exists() and not out.is_dir():
        raise BuildError(f"output path {out} is a file; choose a folder with --out")
    if out.exists() and any(out.iterdir()):
        if not state.exists():
            raise BuildError(f"output folder {out} is not empty and holds no zoo build; "
                             "choose an empty or new folder with --out")
        previous = json.loads(state.read_text()).get("fingerprint")
        if previous != spec_fingerprint(spec):
            raise BuildError(f"output folder {out} holds a build of a different spec; "
                             "use another --out, or delete the folder to rebuild")
        return
    try:
        (out / STATE_DIR / "shards").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(state, json.dumps({"fingerprint": spec_fingerprint(spec),
                                              "spec": spec.to_dict()}, indent=1).encode())
    except OSError as e:
        raise BuildError(f"output folder {out} is not writable ({e.strerror}); choose another --out") from None


def shard_path(out: Path, pop: PopulationPlan) -> Path:
    return out / STATE_DIR / "shards" / f"{pop.population_id}.npz"


def pending_populations(out: Path, pops: list[PopulationPlan], repair: bool) -> list[PopulationPlan]:
    """Populations without a valid shard. Corrupt shards raise, or move aside with ``repair``."""
    todo = []
    for pop in pops:
        path = shard_path(out, pop)
        if not path.exists():
            todo.append(pop)
            continue
        try:
            meta, _ = read_shard(path)
            if meta["model_ids"] != [m.model_id for m in pop.members]:
                raise BuildError(f"corrupt shard {path}: it holds other models than its population")
        except BuildError:
            if not repair:
                raise
            path.rename(path.with_suffix(f".corrupt-{int(time.time())}"))
            todo.append(pop)
    return todo


def build(spec: ZooSpec, out: Path, jobs: int = 1, progress: bool = True, repair: bool = False,
          data_root: Path | None = None) -> Path:
    """Train every population of ``spec`` not yet in ``out`` and publish the dataset."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from ..datasets.writer import publish

    out = Path(out)
    plans = plan_models(spec)
    pops = group_populations(plans, spec.build.max_population)
    data = load_spec_task(spec, data_root)  # before touching the output folder
    prepare_output(out, spec)
    todo = pending_populations(out, pops, repair)
    jobs = max(1, min(jobs, len(todo) or 1))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    bar = tqdm(total=len(plans), initial=len(plans) - sum(len(p.members) for p in todo),
               unit="model", desc=f"zoo {spec.name}", disable=not progress, dynamic_ncols=True)
    bar.set_postfix_str(f"populations {len(pops) - len(todo)}/{len(pops)}")
    done = len(pops) - len(todo)
    tasks = (delayed(run_population)(p, data, shard_path(out, p), threads) for p in todo)
    for info in Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(tasks):
        done += 1
        bar.update(info["models"])
        bar.set_postfix_str(f"populations {done}/{len(pops)}")
    bar.close()
    publish(out, spec, plans, pops)
    return out
