"""The pipeline above its stages: plan -> populations (train, then measure) -> shards -> publish,
and its execution backend.

One population is the unit of work, of parallelism (one joblib task) and of crash recovery:
its results are written as one shard file, atomically; a rerun skips populations whose shard
exists and is readable, so a killed build resumes and publishes the same dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from .cost import train_flops
from .errors import BuildError, DatasetError, os_error_line
from .generators.adaptive import adaptive_plans
from .generators.architectures import build_for_task
from .generators.population import Member, TrainConfig, train_population
from .generators.sampling import PopulationPlan, arch_key, checkpoint_steps, group_populations, plan_models
from .generators.tasks import DatasetMissing, TaskData, load_task_section, model_task, task_record
from .generators.tasks.objectives import objective_for
from .io import atomic_write_bytes
from .metrics.base import Population
from .metrics.measure import measure_population
from .progress import ProgressBar, Reporter
from .shards import read_shard, write_shard
from .spec import PER_MODEL_KEYS, MetricsSpec, ZooSpec, spec_identity, stable_hash

STATE_DIR = ".zoo"  # build state inside the output folder: the spec and one shard per population
NEW_STATE_PREFIX = ".zoo-new-"  # a build state being assembled (see prepare_output)


def spec_fingerprint(spec: ZooSpec) -> str:
    """What must match for a rerun to resume: everything that changes the models."""
    d = spec_identity(spec)
    d["build"] = {k: v for k, v in d["build"].items() if k not in ("max_population",)}
    d.pop("description", None)
    return stable_hash(d, 16)


# ---------------------------------------------------------------- one population

def run_population(pop: PopulationPlan, data: TaskData, shard: Path, threads: int | None,
                   device: str = "cpu", precision: str = "fp32", metrics: MetricsSpec | None = None,
                   progress: Path | None = None) -> dict:
    """Train one population, measure it, and write its shard atomically. Runs inside a worker;
    reports its stage and steps to the file ``progress`` (see zoo.progress)."""
    report = Reporter(progress, len(pop.members)) if progress else None
    if threads:
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
                            optimizer=cfg["train.optimizer"], schedule=cfg["train.schedule"],
                            device=device, precision=precision,
                            on_step=report and (lambda k: report.report("train", k, cfg["train.steps"])))
    result = train_population(build, members, data, train_cfg)
    measured = None
    if metrics is not None:
        if report:
            report.report("measure", 0, 1, force=True)
        population = Population(
            model=build(), objective=objective_for(data), data=data, weights=result.weights,
            steps=result.checkpoint_steps, layout=result.layout, model_ids=result.model_ids,
            cell_ids=[p.cell_id for p in pop.members], status=result.status, lr=[m.lr for m in members],
            optimizer=cfg["train.optimizer"], momentum=cfg["train.momentum"], batch_size=cfg["train.batch_size"])
        measured = measure_population(population, metrics, report=report and report.report)
    try:
        write_shard(shard, pop, result, measured)
    except OSError as e:  # disk full, folder gone: the atomic writer left nothing behind
        raise BuildError(f"could not write shard {shard}: {e.strerror or e}; free space and rerun to resume") from None
    finally:
        if report:
            report.close()
    return {"population_id": pop.population_id, "models": len(members), "wall_time_s": result.wall_time_s}


# ---------------------------------------------------------------- the whole build

def cell_summary(spec: ZooSpec, plans, shards: dict[str, Path], n_classes: int | None) -> dict[str, tuple]:
    """{cell_id: (mean refine metric, phase label)} of trained plans: what the adaptive sampler reads."""
    rows, cache = [], {}
    for p in plans:
        path = shards[p.model_id]
        if path not in cache:
            cache.clear()
            meta, arrays = read_shard(path)
            cache[path] = (arrays, {m: i for i, m in enumerate(meta["model_ids"])})
        arrays, index = cache[path]
        i = index[p.model_id]
        row = {"model_id": p.model_id, "cell_id": p.cell_id, **{f"config.{k}": v for k, v in p.config.items()}}
        row.update({k[7:]: float(v[-1, i]) for k, v in arrays.items() if k.startswith("metric/")})
        row.update({k[13:]: float(v[i]) for k, v in arrays.items() if k.startswith("model_metric/")})
        rows.append(row)
    models = pd.DataFrame(rows)
    labels = pd.Series("", index=models.index)
    if n_classes and "train_loss" in models:
        from .metrics.phases import PhaseThresholds, assign_phases

        labels = assign_phases(models, PhaseThresholds(**spec.metrics.thresholds), n_classes)["cell_phase"]
    metric = spec.phase.refine_metric
    if metric not in models:
        raise BuildError(f"phase.refine_metric={metric!r} is not a model metric; choose one of: "
                         + ", ".join(c for c in models.columns if not c.startswith("config.")))
    models["_label"] = labels
    groups = models.groupby("cell_id")
    return {c: (float(g[metric].mean()), str(g["_label"].iloc[0])) for c, g in groups}


def _size(n_bytes: float) -> str:
    """A byte count as a person reads it: 512 KiB, 3.2 MiB, 1.50 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes / 2**10:.0f} KiB"


def load_spec_task(spec: ZooSpec, data_root: Path | None = None, config: dict | None = None) -> TaskData:
    """The task data of a spec, or of one model ``config`` of it (its task.* axis values applied);
    a dataset that is not available is a user error."""
    task = spec.to_dict()["task"]
    try:
        return load_task_section(model_task(task, config) if config else task, data_root)
    except (DatasetMissing, ValueError, RuntimeError) as e:
        raise BuildError(str(e)) from None


class TaskCache:
    """Each population's task data, loaded once per distinct ``[task]`` section: phase axes on task
    fields (``task.beta``, ``task.n_train``) give populations their own data."""

    def __init__(self, spec: ZooSpec, data_root: Path | None):
        self.spec, self.data_root, self.cache = spec, data_root, {}

    def __call__(self, pop: PopulationPlan) -> TaskData:
        config = {k: v for k, v in pop.members[0].config.items() if k.startswith("task.") and k not in PER_MODEL_KEYS}
        key = stable_hash(config)
        if key not in self.cache:
            self.cache[key] = load_spec_task(self.spec, self.data_root, config)
        return self.cache[key]


def prepare_output(out: Path, spec: ZooSpec) -> None:
    """Create or reuse ``out``; refuse a non-empty folder that is not this zoo's.

    Safe when several builds start on one folder at once: the build state (``.zoo/`` with the
    spec's fingerprint) is assembled in a temporary folder and appears whole, by one rename that
    exactly one build wins; the others then find it and compare fingerprints."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"output path {out} is a file; choose a folder with --out")
    _refuse_newer_schema(out)
    state = out / STATE_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not state.exists():
            foreign = sorted(p.name for p in out.iterdir()
                             if p.name != STATE_DIR and not p.name.startswith(NEW_STATE_PREFIX))
            if foreign:
                raise BuildError(f"output folder {out} is not empty (it holds {foreign[0]}) and holds no zoo "
                                 "build; choose an empty or new folder with --out")
            tmp = Path(tempfile.mkdtemp(prefix=NEW_STATE_PREFIX, dir=out))
            try:
                (tmp / "shards").mkdir()
                atomic_write_bytes(tmp / "spec.json", json.dumps({"fingerprint": spec_fingerprint(spec),
                                                                  "spec": spec.to_dict()}, indent=1).encode())
                os.rename(tmp, state)
            except OSError:
                if not (state / "spec.json").is_file():  # not a lost race: a real failure
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        previous = json.loads((state / "spec.json").read_text()).get("fingerprint")
    except OSError as e:
        raise BuildError(os_error_line(e, f"output folder {out} is not writable") + "; or use another --out") from None
    except ValueError:
        raise BuildError(f"{state / 'spec.json'} is damaged; delete {out} to rebuild from scratch") from None
    if previous != spec_fingerprint(spec):
        raise BuildError(f"output folder {out} holds a build of a different spec; "
                         "use another --out, or delete the folder to rebuild")


def _refuse_newer_schema(out: Path) -> None:
    """A zoo written by a newer zoo package is left alone, before anything else happens."""
    from .datasets.manifest import SCHEMA_VERSION

    try:
        version = json.loads((out / "zoo.json").read_text()).get("schema_version")
    except (OSError, ValueError, AttributeError):
        return  # absent or damaged: is_published decides
    if type(version) is int and version > SCHEMA_VERSION:
        raise BuildError(f"{out} holds a zoo of schema_version {version}, newer than this zoo package "
                         f"({SCHEMA_VERSION}); upgrade zoo or choose another --out")


def shard_path(out: Path, pop: PopulationPlan) -> Path:
    return out / STATE_DIR / "shards" / f"{pop.population_id}.npz"


def scan_shards(out: Path, repair: bool) -> dict[str, Path]:
    """model_id -> the shard holding its results. Corrupt shards raise, or move aside with ``repair``.

    Resume works per model, so a rerun with another population size (or memory budget) reuses
    every finished model and trains only the rest.
    """
    done: dict[str, Path] = {}
    for path in sorted((out / STATE_DIR / "shards").glob("*.npz")):
        try:
            meta, _ = read_shard(path)
        except BuildError:
            if not repair:
                raise
            path.rename(path.with_suffix(f".corrupt-{int(time.time())}"))
            continue
        for mid in meta["model_ids"]:
            done.setdefault(mid, path)
    return done


def largest_first(pops: list[PopulationPlan]) -> list[PopulationPlan]:
    """Populations by training FLOPs, largest first: with several workers, the last to finish is then
    not one running the biggest population alone (the default grid's widest width is half its work)."""
    return sorted(pops, key=lambda pop: len(pop.members) * train_flops(pop.members[0].config), reverse=True)


def pending_populations(pops: list[PopulationPlan], done: dict[str, Path]) -> list[PopulationPlan]:
    """Each population restricted to its unfinished models; fully finished ones dropped."""
    todo = []
    for pop in pops:
        missing = [m for m in pop.members if m.model_id not in done]
        if len(missing) == len(pop.members):
            todo.append(pop)
        elif missing:
            todo.append(PopulationPlan(pop.population_id + "-r" + stable_hash([m.model_id for m in missing], 6),
                                       missing))
    return todo


def population_cap(spec: ZooSpec, plans, max_memory: int | None) -> dict[str, int]:
    """Largest population per arch whose parameters, optimizer state and activations fit."""
    from .cost import model_costs

    states = 3 if spec.train.optimizer == "sgd" else 4
    caps: dict[str, int] = {}
    for p in plans:
        c = model_costs(p.config)
        per_model = 4 * (states * c["params"] + 2 * c["activations"] * p.config["train.batch_size"])
        cap = spec.build.max_population if max_memory is None else int(max_memory // per_model)
        if cap < 1:
            raise BuildError(f"one model of {p.config['arch.family']} width {p.config['arch.width']} needs "
                             f"~{_size(per_model)}, over the memory budget {_size(max_memory)}; "
                             "raise --max-memory or lower train.batch_size")
        key = arch_key(p.config)
        caps[key] = min(caps.get(key, spec.build.max_population), cap, spec.build.max_population)
    return caps


def usable_cores() -> int:
    """Cores this build may use: $OMP_NUM_THREADS if set, else the CPU affinity (what SLURM or
    taskset grant, not the whole machine). Deterministic on purpose: the measure step's float
    rounding depends on the thread count, and a resumed build must publish the same dataset, so
    the count never follows the momentary load (on a shared machine, set OMP_NUM_THREADS=1)."""
    requested = os.environ.get("OMP_NUM_THREADS", "")
    if requested.isdigit() and int(requested) > 0:
        return int(requested)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_max_memory(device: str) -> int:
    """Half of the memory available now (RAM, or free GPU memory on CUDA), shared by the workers."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0] // 2
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 8 << 30


def build(spec: ZooSpec, out: Path, jobs: int | None = None, progress: bool = True, repair: bool = False,
          data_root: Path | None = None, backend: str = "loky", device: str = "cpu",
          max_memory: int | None = None, precision: str = "fp32", max_retries: int = 2,
          claim_ttl: float = 120.0) -> Path:
    """Train every model of ``spec`` not yet in ``out`` and publish the dataset.

    Populations run as joblib tasks on ``backend`` (loky processes, or an existing Dask/Ray
    cluster set up by the caller): ``jobs`` at once, by default one per usable core (one on CUDA). One
    single-threaded worker per core holds up on a shared machine where one multi-threaded worker
    does not (OpenMP threads wait on a descheduled sibling: ``benchmarks/contention.py``). A
    population lost to a dead worker is retried; populations claimed by another live build on the
    same folder are left to it and waited for.
    """
    from joblib import Parallel, delayed, parallel_config

    from .datasets.writer import publish
    from .generators.claims import Claims

    out = Path(out)
    data = load_spec_task(spec, data_root)  # before touching the output folder
    task_of = TaskCache(spec, data_root)
    jobs = jobs or (1 if device == "cuda" else usable_cores())
    budget = max_memory if max_memory is not None else default_max_memory(device) // jobs
    population_cap(spec, plan_models(spec, "grid"), budget)  # a model that cannot fit fails here, first
    prepare_output(out, spec)
    claims = Claims(out / STATE_DIR / "claims", ttl=claim_ttl)

    def train(plans: list) -> dict[str, Path]:
        """Train and measure every plan not yet in a shard; returns model_id -> shard."""
        pops = group_populations(plans, spec.build.max_population, population_cap(spec, plans, budget))
        done = scan_shards(out, repair)
        finished = sum(p.model_id in done for p in plans)
        with ProgressBar(out / STATE_DIR / "progress", len(plans), finished, f"zoo {spec.name}",
                         enabled=progress and finished < len(plans)) as bar:
            return run_pending(pops, done, bar)

    def run_pending(pops, done, bar) -> dict[str, Path]:
        # from the whole plan, not what is pending: a resumed build runs with the thread count (and so
        # the float rounding of the measure step) of an uninterrupted one
        workers = max(1, min(jobs, len(pops)))
        threads = max(1, usable_cores() // workers) if backend == "loky" else None
        failures: dict[str, int] = {}
        while todo := pending_populations(pops, done):
            mine = largest_first([p for p in todo if claims.acquire(p.population_id)])
            if not mine:  # everything left is being trained by another live build: wait for it
                time.sleep(min(5.0, claim_ttl / 10))
                done = scan_shards(out, repair)
                continue
            tasks = (delayed(run_population)(p, task_of(p), shard_path(out, p), threads, device, precision,
                                             metrics=spec.metrics, progress=bar.folder / f"{p.population_id}.json")
                     for p in mine)
            try:
                with parallel_config(backend=backend, n_jobs=min(workers, len(mine))):
                    for info in Parallel(return_as="generator_unordered")(tasks):
                        claims.release(info["population_id"])
                        bar.finish(info["models"])
            except BuildError:
                raise
            except Exception as e:  # a worker died (SIGKILL, OOM): retry what is still missing
                for p in mine:
                    failures[p.population_id] = failures.get(p.population_id, 0) + 1
                    if failures[p.population_id] > max_retries:
                        raise BuildError(f"population {p.population_id} failed {failures[p.population_id]} "
                                         f"times ({type(e).__name__}: {e}); see the log and rerun") from None
            finally:
                for p in mine:
                    claims.release(p.population_id)
            done = scan_shards(out, repair)
        return done

    n_classes = data.n_classes if data.kind == "classification" else None
    with claims.heartbeat():
        if spec.phase.sampler == "adaptive":
            plans = adaptive_plans(spec, train, lambda ps: cell_summary(spec, ps, scan_shards(out, repair), n_classes))
        else:
            plans = plan_models(spec)
        done = train(plans)
    pops = group_populations(plans, spec.build.max_population, population_cap(spec, plans, budget))
    say = (lambda text: print(f"zoo {spec.name}: {text}", file=sys.stderr)) if progress else (lambda text: None)
    with claims.exclusive("publish"):
        if is_published(out, plans, repair):
            say(f"{out} already holds this zoo, intact; nothing to publish (results added later are kept)")
        else:
            say(f"publishing {len(plans)} models to {out}")
            publish(out, spec, plans, done, pops, device=device, precision=precision, n_classes=n_classes,
                    task=task_record(data))
    return out


def is_published(out: Path, plans, repair: bool) -> bool:
    """True if ``out`` already holds an intact zoo of exactly these models: a rerun then changes
    nothing, so whatever `zoo metrics` or `zoo study` added stays. A damaged zoo is refused, or
    with ``repair`` republished from the build's shards (which drops results added later)."""
    from .datasets.manifest import require_intact
    from .datasets.reader import read_table

    if not (out / "zoo.json").exists():
        return False
    try:
        require_intact(out)
        ids = set(read_table(out, "models.parquet", columns=["model_id"])["model_id"])
    except DatasetError as e:
        if not repair:
            raise BuildError(f"{e}. To republish it from this build's shards, rerun with --repair "
                             "(results added later by zoo metrics / zoo study are dropped)") from None
        return False
    return ids == {p.model_id for p in plans}
