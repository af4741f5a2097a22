"""What a zoo is: the spec dataclasses, TOML presets, overrides and validation.

A spec has sections (task, arch, train, phase, metrics, build). Every field is checked on load;
problems raise ``SpecError`` with one line naming the field and the allowed values, which the
CLI prints before exiting with code 2.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import reprlib
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import SpecError  # re-exported: callers import it from here

OPERATIONS = ("add", "sub", "mul", "div")
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "leaky_relu")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "onecycle")
INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "uniform", "normal")
SAMPLERS = ("grid", "adaptive")
LMC_MODES = ("none", "weight", "ste", "all")  # aligned barriers: off, weight matching, + STE search, every alignment
# Fields that may differ between the models of one population (held as per-model tensors).
PER_MODEL_KEYS = ("train.lr", "train.momentum", "train.weight_decay", "task.label_noise",
                  "task.train_fraction", "task.augment")
# Fields added after zoos were published, with the value that reproduces the older models: ids and
# fingerprints leave them out at that value, so those models keep their ids and random streams.
NEUTRAL = {"arch.dropout": 0.0, "metrics.options": {}}


@dataclass
class TaskSpec:
    name: str = "mnist1d"
    n_train: int = 4000  # MNIST-1D: the package's 5000 samples split 4000/1000
    n_test: int = 1000
    train_fraction: float = 1.0  # load axis: fraction of the training set a model sees
    label_noise: float = 0.0  # load axis: fraction of training labels replaced at random
    data_seed: int = 42  # the dataset itself (not the models)
    modulus: int = 97  # modular arithmetic: p
    operation: str = "add"  # modular arithmetic: a op b mod p
    input_dim: int = 16  # teacher-student: input dimension
    beta: float = 1.0  # convection PDE: transport speed (the PINN zoo's load axis)
    download: bool = False  # vision tasks: allow torchvision to download into the data root
    augment: bool = False  # image tasks: random flips and +-4 pixel shifts (a load axis)


@dataclass
class ArchSpec:
    family: str = "mlp"
    width: int = 64
    depth: int = 2
    activation: str = "relu"
    init: str = "default"  # weight init of conv/linear layers (the Model Zoos' init axis)
    dropout: float = 0.0  # after each hidden activation (families that take it; the Model Zoos' dropout axis)
    heads: int = 4  # transformers
    patch_size: int = 4  # ViT


@dataclass
class TrainSpec:
    steps: int = 1000
    epochs: float = 0.0  # if > 0: steps = ceil(epochs * task.n_train / batch_size), overriding steps
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    checkpoints: int = 4  # evenly spaced checkpoints after the initialisation (step 0)


@dataclass
class Axis:
    key: str  # dotted field, e.g. "arch.width"
    values: list
    name: str = ""  # role in the phase plane: capacity, temperature, load

    def __post_init__(self) -> None:
        self.name = self.name or self.key.rpartition(".")[2]


@dataclass
class PhaseSpec:
    sampler: str = "grid"
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    axes: list = field(default_factory=list)
    # adaptive sampler: a coarse grid (every ``coarse_stride``-th axis value), then rounds that add
    # the most disputed unvisited cells until ``budget`` models are trained (0 = the full grid's size / 2)
    budget: int = 0
    coarse_stride: int = 3
    refine_metric: str = "test_acc"


@dataclass
class MetricsSpec:
    """What the measure step computes after training (defaults: the reference zoo's protocol, scaled
    so the default build stays within its 5-minute budget; see README "Metrics")."""

    hessian: bool = True
    hessian_batches: int = 10  # reference zoo: 10 batches x 64 training samples
    hessian_batch_size: int = 64
    hessian_max_iter: int = 100  # power iteration / Hutchinson, relative tolerance hessian_tol
    hessian_tol: float = 1e-3
    hessian_top_k: int = 1
    hessian_density: bool = False  # stochastic Lanczos quadrature summary
    hessian_checkpoints: bool = False  # also top eigenvalue and trace at every checkpoint (checkpoint rows)
    spectral: bool = True
    spectral_checkpoints: str = "final"  # final | all
    farms: bool = True
    connectivity: bool = True  # linear paths between same-cell pairs
    curve_points: int = 11
    bezier_steps: int = -1  # Bezier bend steps per pair: -1 bezier_budget x the models' steps, 0 no mc, n > 0: n
    bezier_budget: float = 1.0  # with bezier_steps = -1: the bend's steps as a fraction of the models' (docs/phases.md)
    bezier_lr: float = 0.0  # 0: the cell's own lr x connectivity.BEND_LR_SCALE; > 0: this lr
    cka: bool = True
    probe_size: int = 512  # fixed test-set probe batch for CKA, activation matching, BN reset
    lmc: str = "weight"  # aligned barriers in the build: none | weight | all
    pairs: str = "cell"  # cell: same-cell pairs; population: also pairs across the cells of a population
    thresholds: dict = field(default_factory=dict)  # phase-rule overrides (zoo.metrics.phases.PhaseThresholds)
    options: dict = field(default_factory=dict)  # fields added by registered metrics (metrics.<name> in specs)

    def __getattr__(self, name: str):
        """A registered metric's option (``Metric.options``): its value in ``options``, or its default."""
        if name.startswith("__") or name == "options":
            raise AttributeError(name)
        if name in self.__dict__.get("options", {}):
            return self.options[name]
        options = metric_options()
        if name in options:
            return options[name].default
        raise AttributeError(f"MetricsSpec has no field {name!r}")


@dataclass
class BuildSpec:
    max_population: int = 64  # models trained together in one vectorized job
    split: list = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/val/test, by model
    split_seed: int = 0
    hdf5: bool = True


SECTIONS = {"task": TaskSpec, "arch": ArchSpec, "train": TrainSpec, "phase": PhaseSpec,
            "metrics": MetricsSpec, "build": BuildSpec}


@dataclass
class ZooSpec:
    name: str = "custom"
    description: str = ""
    task: TaskSpec = field(default_factory=TaskSpec)
    arch: ArchSpec = field(default_factory=ArchSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    phase: PhaseSpec = field(default_factory=PhaseSpec)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    build: BuildSpec = field(default_factory=BuildSpec)

    def to_dict(self) -> dict:
        return asdict(self)

    def model_configs(self) -> dict[str, Any]:
        """The base per-model config: flat dotted keys of the task, arch and train sections."""
        return {f"{s}.{k}": v for s in ("task", "arch", "train")
                for k, v in asdict(getattr(self, s)).items()}

    @property
    def n_models(self) -> int:
        n = len(self.phase.seeds)
        for axis in self.phase.axes:
            n *= len(axis.values)
        return n


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short sha256 of the canonical JSON of ``obj``: ids that never change across runs."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def identity(config: dict) -> dict:
    """A flat config (dotted keys) without the NEUTRAL fields at their neutral value: what ids hash."""
    return {k: v for k, v in config.items() if k not in NEUTRAL or v != NEUTRAL[k]}


def spec_identity(spec: ZooSpec) -> dict:
    """``spec.to_dict()`` without the NEUTRAL fields at their neutral value (see ``identity``)."""
    d = spec.to_dict()
    for key, value in NEUTRAL.items():
        section, _, name = key.partition(".")
        if d[section][name] == value:
            del d[section][name]
    return d


# ---------------------------------------------------------------- loading and validation

# Allowed values of the numeric fields: an interval, ends included "[ ]" or excluded "( )"; float
# fields must also be finite. The upper bounds lie beyond any sane zoo: they keep every size
# computable in Python ints before anything is allocated and refuse what would overflow later.
RANGES = {
    "task.n_train": "[1, 1e9]", "task.n_test": "[1, 1e9]", "task.train_fraction": "(0, 1]",
    "task.label_noise": "[0, 1]", "task.data_seed": "[0, 4294967295]", "task.modulus": "[2, 1e5]",
    "task.input_dim": "[1, 1e6]",
    "arch.width": "[1, 1e6]", "arch.depth": "[1, 1000]", "arch.dropout": "[0, 1)", "arch.heads": "[1, 1e4]",
    "arch.patch_size": "[1, 1e4]",
    "train.steps": "[1, 1e9]", "train.epochs": "[0, 1e6]", "train.batch_size": "[1, 1e7]",
    "train.lr": "(0, inf)", "train.momentum": "[0, 1)", "train.weight_decay": "[0, inf)",
    "train.checkpoints": "[1, 1e5]",
    "phase.budget": "[0, 1e9]", "phase.coarse_stride": "[1, 1000]",
    "metrics.hessian_batches": "[1, 1e4]", "metrics.hessian_batch_size": "[1, 1e6]",
    "metrics.hessian_max_iter": "[1, 1e6]", "metrics.hessian_tol": "(0, 1)", "metrics.hessian_top_k": "[1, 1000]",
    "metrics.curve_points": "[3, 1e4]", "metrics.bezier_steps": "[-1, 1e7]", "metrics.bezier_budget": "(0, 100]",
    "metrics.bezier_lr": "[0, inf)", "metrics.probe_size": "[1, 1e6]",
    "metrics.thresholds.loss_fraction": "(0, inf)", "metrics.thresholds.sharp_quantile": "[0, 1]",
    "metrics.thresholds.mc_tolerance": "[0, inf)", "metrics.thresholds.cka_high": "[0, 1]",
    "build.max_population": "[1, 1e6]", "build.split_seed": "[0, 4294967295]",
}


def metric_options() -> dict:
    """{name: zoo.metrics.base.Option} of every ``[metrics]`` field a registered metric adds
    (asked when a spec is read, so that importing this module does not import torch)."""
    from .metrics.registry import OPTIONS

    return OPTIONS


def _task_names() -> tuple[str, ...]:
    """The registered tasks (asked when a spec is checked)."""
    from .generators.tasks import TASKS

    return TASKS


def _family_names() -> tuple[str, ...]:
    """The registered architecture families (asked when a spec is checked, so that importing this
    module does not import torch)."""
    from .generators.architectures import FAMILIES

    return tuple(FAMILIES)


CHOICES = {  # allowed values, or a function giving them
    "task.name": _task_names, "task.operation": OPERATIONS, "arch.family": _family_names,
    "arch.activation": ACTIVATIONS,
    "arch.init": INITS, "train.optimizer": OPTIMIZERS, "train.schedule": SCHEDULES, "phase.sampler": SAMPLERS,
    "metrics.thresholds.sharpness_metric": ("hessian.trace", "hessian.top_eig"),
}
MAX_SEED = 4294967295
MAX_CELLS = 100_000  # of the phase grid (models = cells x seeds); validation checks every cell
MAX_STEPS = 10**9  # also when train.epochs sets them
TYPE_NAMES = {int: "an int", float: "a finite float", str: "a string", bool: "true or false", list: "a list",
              dict: "a table"}


def _show(value: Any) -> str:
    """A value as an error line shows it: its repr, shortened."""
    return reprlib.repr(value)


def _check_type(where: str, value: Any, expected: type) -> Any:
    """``value`` if it has the field's type (an int counts as a float), else SpecError."""
    if expected is float and type(value) is int and abs(value) < 1e308:
        value = float(value)
    ok = isinstance(value, expected) and not (expected in (int, float) and isinstance(value, bool))
    if not ok or expected is float and not math.isfinite(value):
        raise SpecError(f"{where}: expected {TYPE_NAMES[expected]}, got {_show(value)}")
    return value


def _in(interval: str, value: float) -> bool:
    low, high = (float(x) for x in interval[1:-1].split(", "))
    return (low < value if interval[0] == "(" else low <= value) and \
        (value < high if interval[-1] == ")" else value <= high)


def _check_field(where: str, value: Any, expected: type) -> Any:
    """Type, range (RANGES) and allowed values (CHOICES) of the field ``where``."""
    value = _check_type(where, value, expected)
    if where in RANGES and not _in(RANGES[where], value):
        kind = "an int" if expected is int else "a float"
        raise SpecError(f"{where}: expected {kind} in {RANGES[where]}, got {_show(value)}")
    allowed = CHOICES.get(where)
    allowed = allowed() if callable(allowed) else allowed  # arch.family: the registry's names
    if allowed is not None and value not in allowed:
        raise SpecError(f"{where}: expected one of {', '.join(allowed)}, got {_show(value)}")
    return value


def _field_types(cls) -> dict[str, type]:
    hints = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}
    return {f.name: hints[str(f.type)] for f in fields(cls)}


def _build_section(name: str, raw: Any):
    cls = SECTIONS[name]
    _check_type(name, raw, dict)
    types = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        if name == "metrics" and key not in types and key in metric_options():
            kwargs.setdefault("options", {})[key] = value  # checked with the other fields
            continue
        if key not in types:
            raise SpecError(f"unknown key {name}.{key}; allowed: {', '.join(_allowed_keys(name))}")
        if name == "phase" and key == "axes":
            kwargs[key] = _build_axes(value)
            continue
        if name == "metrics" and key == "options":  # a stored spec: the options as one table
            kwargs[key] = {**_check_type(f"{name}.{key}", value, dict), **kwargs.get(key, {})}
            continue
        kwargs[key] = _check_type(f"{name}.{key}", value, types[key])
    return cls(**kwargs)


def _allowed_keys(section: str) -> list[str]:
    """The keys a section takes: its fields, and for metrics the registered metrics' options."""
    keys = [k for k in _field_types(SECTIONS[section]) if not (section == "metrics" and k == "options")]
    return keys + list(metric_options()) if section == "metrics" else keys


def _check_options(options: dict) -> None:
    """Type, range and choices of each registered metric option in ``metrics.options``."""
    known = metric_options()
    for key, value in options.items():
        where = f"metrics.{key}"
        if key not in known:
            raise SpecError(f"unknown key {where}; allowed: {', '.join(_allowed_keys('metrics'))}")
        option = known[key]
        value = options[key] = _check_type(where, value, type(option.default))
        if option.range and not _in(option.range, value):
            kind = "an int" if type(option.default) is int else "a float"
            raise SpecError(f"{where}: expected {kind} in {option.range}, got {_show(value)}")
        if option.choices and value not in option.choices:
            raise SpecError(f"{where}: expected one of {', '.join(map(str, option.choices))}, got {_show(value)}")


def _build_axes(raw: Any) -> list[Axis]:
    if not isinstance(raw, list):
        raise SpecError(f"phase.axes: expected a list of tables with key and values, got {_show(raw)}")
    axes = []
    for i, a in enumerate(raw):
        where = f"phase.axes[{i}]"
        if not isinstance(a, dict) or set(a) - {"key", "values", "name"} or "key" not in a or "values" not in a:
            raise SpecError(f"{where}: expected a table of key, values (and optional name), got {_show(a)}")
        axes.append(Axis(key=_check_type(f"{where}.key", a["key"], str), values=a["values"],
                         name=_check_type(f"{where}.name", a.get("name", ""), str)))
    return axes


def spec_from_dict(raw: dict) -> ZooSpec:
    """Build and validate a ZooSpec from a TOML-like dict."""
    raw = copy.deepcopy(raw)
    unknown = set(raw) - set(SECTIONS) - {"name", "description"}
    if unknown:
        raise SpecError(f"unknown section {sorted(unknown)[0]!r}; allowed: name, description, "
                        + ", ".join(SECTIONS))
    spec = ZooSpec(name=_check_type("name", raw.pop("name", "custom"), str),
                   description=_check_type("description", raw.pop("description", ""), str))
    for section, value in raw.items():
        setattr(spec, section, _build_section(section, value))
    validate(spec)
    return spec


def _choice(where: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise SpecError(f"{where}: expected one of {', '.join(allowed)}, got {_show(value)}")


def _positive(where: str, value: Any) -> None:
    if value <= 0:
        raise SpecError(f"{where}: expected a value > 0, got {_show(value)}")


def _validate_fields(spec: ZooSpec) -> None:
    """Type, range and allowed values of every field (of a spec made in code too)."""
    for section, cls in SECTIONS.items():
        for name, expected in _field_types(cls).items():
            _check_field(f"{section}.{name}", getattr(getattr(spec, section), name), expected)
    _check_options(spec.metrics.options)
    split = spec.build.split
    if len(split) != 3 or abs(sum(x for x in split if type(x) in (int, float)) - 1) > 1e-6 or not all(
            (type(x) is int or type(x) is float and math.isfinite(x)) and x >= 0 for x in split):
        raise SpecError(f"build.split: expected three fractions >= 0 (train, val, test) summing to 1, "
                        f"got {_show(split)}")


def _validate_cell(spec: ZooSpec) -> None:
    """The rules between fields, on one cell of the grid (the spec with one value of every axis)."""
    t, tr = spec.task, spec.train
    steps = math.ceil(tr.epochs * t.n_train / tr.batch_size) if tr.epochs > 0 else tr.steps
    if steps > MAX_STEPS:
        raise SpecError(f"train.epochs: expected at most {MAX_STEPS:,} steps, got {tr.epochs:g} epochs of "
                        f"{t.n_train} samples at train.batch_size {tr.batch_size} = {steps:,} steps")
    if tr.checkpoints > steps:
        raise SpecError(f"train.checkpoints: expected at most train.steps ({steps}), got {tr.checkpoints}")
    from .generators.tasks import get_task

    task = get_task(t.name)
    limit = task.samples({f"task.{k}": v for k, v in asdict(t).items()}) if task.samples else None
    if limit is not None and t.n_train + t.n_test > limit:
        raise SpecError(f"task.n_train + task.n_test: expected at most {limit} for {t.name}, "
                        f"got {t.n_train + t.n_test}")
    if t.label_noise > 0 and task.kind != "classification":
        raise SpecError(f"task.label_noise: expected 0 for {t.name} (classification tasks only), "
                        f"got {t.label_noise!r}")
    if tr.batch_size > t.n_train * t.train_fraction:
        raise SpecError(f"train.batch_size: expected at most the {int(t.n_train * t.train_fraction)} training "
                        f"samples a model sees, got {tr.batch_size}")
    _check_arch_fits_task(spec)


def _cell(spec: ZooSpec, values: dict) -> ZooSpec:
    """``spec`` with the dotted task/arch/train fields of ``values`` set: one cell of the grid."""
    parts = {s: copy.copy(getattr(spec, s)) for s in ("task", "arch", "train")}
    for key, value in values.items():
        section, _, name = key.partition(".")
        setattr(parts[section], name, value)
    return replace(spec, **parts)


def _validate_metrics(m: MetricsSpec) -> None:
    _choice("metrics.spectral_checkpoints", m.spectral_checkpoints, ("final", "all"))
    _choice("metrics.lmc", m.lmc, LMC_MODES)
    _choice("metrics.pairs", m.pairs, ("cell", "population"))
    for where, v in [("metrics.hessian_batches", m.hessian_batches), ("metrics.hessian_batch_size",
                     m.hessian_batch_size), ("metrics.hessian_max_iter", m.hessian_max_iter),
                     ("metrics.hessian_tol", m.hessian_tol), ("metrics.hessian_top_k", m.hessian_top_k),
                     ("metrics.probe_size", m.probe_size)]:
        _positive(where, v)
    if m.curve_points < 3:
        raise SpecError(f"metrics.curve_points must be >= 3 (endpoints and a midpoint), got {m.curve_points!r}")
    if m.bezier_steps < -1:
        raise SpecError(f"metrics.bezier_steps must be -1 (follow training), 0 (off) or > 0, got {m.bezier_steps!r}")
    if not math.isfinite(m.bezier_budget) or m.bezier_budget <= 0:
        raise SpecError(f"metrics.bezier_budget must be a finite fraction > 0 of the models' steps, "
                        f"got {m.bezier_budget!r}")
    if not math.isfinite(m.bezier_lr) or m.bezier_lr < 0:
        raise SpecError(f"metrics.bezier_lr must be finite and >= 0 (0: the cell's lr), got {m.bezier_lr!r}")
    if not m.thresholds:
        return
    from .metrics.phases import PhaseThresholds  # the rule's own fields are the allowed keys

    allowed = _field_types(PhaseThresholds)
    for key, value in m.thresholds.items():
        if key not in allowed:
            raise SpecError(f"metrics.thresholds.{key}: expected one of the phase thresholds "
                            f"{', '.join(allowed)}")
        _check_field(f"metrics.thresholds.{key}", value, allowed[key])


def _check_arch_fits_task(spec: ZooSpec) -> None:
    """The family's own rules (``Family.accepts`` the task, ``Family.check`` its fields, dropout),
    then the model built on the meta device takes the task's samples."""
    from .generators.architectures import FAMILIES, check_fits
    from .generators.tasks import task_kind, task_shape

    t, a = spec.task, spec.arch
    family = FAMILIES[a.family]
    config = {"task.name": t.name, "task.modulus": t.modulus, "task.input_dim": t.input_dim,
              "arch.family": a.family, **{f"arch.{k}": getattr(a, k) for k in family.fields}}
    shape = task_shape(config)
    task = (t.name, shape[0], task_kind(t.name), shape[2])
    reason = family.accepts(*task)
    if reason:
        takers = [f.name for f in FAMILIES.values() if f.accepts(*task) is None]
        raise SpecError(f"arch.family={a.family} {reason}; task {t.name} takes arch.family {', '.join(takers)}")
    problem = family.check({k: getattr(a, k) for k in family.fields}) if family.check else None
    if problem:
        raise SpecError(problem)
    if a.dropout > 0 and not family.takes_dropout:
        takes = [f.name for f in FAMILIES.values() if f.takes_dropout]
        raise SpecError(f"arch.dropout applies to arch.family {', '.join(takes)}, not {a.family}")
    try:  # the model built on the meta device: shapes checked, nothing allocated
        check_fits(config, *shape)
    except ValueError as e:
        used = ", ".join(f"arch.{k}={config[f'arch.{k}']}" for k in family.fields if k != "dropout")
        raise SpecError(f"arch.family={a.family} ({used}) cannot take the samples of task {t.name} "
                        f"(shape {'x'.join(map(str, shape[0]))}): {e}") from None


TRAINING_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc", "ggap")


def _check_refine_metric(spec: ZooSpec) -> None:
    """phase.refine_metric names a training column or a column of an enabled metric (by its
    prefix, e.g. ``hessian.``), so an adaptive build does not fail after its coarse grid."""
    from .metrics.registry import METRICS

    metric = spec.phase.refine_metric
    prefixes = {col.partition(".")[0] for m in METRICS.values() if m.enabled(spec.metrics)
                for col in (*m.columns, *m.pair_summaries)}
    if metric not in TRAINING_COLUMNS and metric.partition(".")[0] not in prefixes:
        raise SpecError(f"phase.refine_metric: expected a training column ({', '.join(TRAINING_COLUMNS)}) or a "
                        f"column of an enabled metric ({', '.join(sorted(p + '.*' for p in prefixes))}), "
                        f"got {_show(metric)}")


def validate(spec: ZooSpec) -> None:
    """Raise SpecError (one line) on the first invalid field or phase axis value, or on the first
    cell of the grid (every axis value applied) whose fields do not fit together."""
    _validate_fields(spec)
    _validate_metrics(spec.metrics)
    if spec.phase.sampler == "adaptive":
        _check_refine_metric(spec)
    seeds = spec.phase.seeds
    if not seeds or any(type(s) is not int or not 0 <= s <= MAX_SEED for s in seeds):
        raise SpecError(f"phase.seeds: expected a non-empty list of ints in [0, {MAX_SEED}], got {_show(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"phase.seeds: expected distinct seeds, got {_show(seeds)}")
    keys, names = set(), set()
    for axis in spec.phase.axes:
        section, _, name = axis.key.partition(".")
        if section not in ("task", "arch", "train") or name not in _field_types(SECTIONS[section]):
            raise SpecError(f"phase axis key {axis.key!r} is not a task/arch/train field "
                            "(e.g. arch.width, train.lr)")
        if axis.key in keys:
            raise SpecError(f"phase axis {axis.key!r} appears twice")
        if axis.name in names:
            raise SpecError(f"phase.axes: name {axis.name!r} appears twice; give each axis its own name")
        keys.add(axis.key)
        names.add(axis.name)
        if not isinstance(axis.values, list) or not axis.values:
            raise SpecError(f"phase axis {axis.key!r} has no values; give a non-empty list")
        try:  # each value is checked like the field it sets
            values = [_check_field(axis.key, v, _field_types(SECTIONS[section])[name]) for v in axis.values]
        except SpecError as e:
            raise SpecError(f"phase axis {e}") from None
        if len(set(map(repr, values))) != len(values):
            raise SpecError(f"phase axis {axis.key!r} has duplicate values: {_show(axis.values)}")
        axis.values = values
    cells = math.prod(len(axis.values) for axis in spec.phase.axes)
    if cells > MAX_CELLS:
        raise SpecError(f"phase.axes: expected at most {MAX_CELLS:,} grid cells, got {cells:,}")
    for values in itertools.product(*(axis.values for axis in spec.phase.axes)):
        _validate_cell(_cell(spec, {axis.key: v for axis, v in zip(spec.phase.axes, values)}))


# ---------------------------------------------------------------- presets and overrides

def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("zoo.presets").iterdir()
                  if p.name.endswith(".toml"))


def load_toml(path_or_name: str) -> dict:
    """Raw dict of a preset name or a TOML file path; a file that does not read is a SpecError naming it."""
    path = Path(path_or_name)
    if path.suffix == ".toml":
        try:
            data = path.read_bytes()
        except (OSError, ValueError) as e:  # missing, a folder, no permission, a NUL in the name
            raise SpecError(f"{path_or_name}: cannot read the spec file ({getattr(e, 'strerror', None) or e}); "
                            "give a .toml file or a preset name") from None
    elif path_or_name in preset_names():
        data = resources.files("zoo.presets").joinpath(f"{path_or_name}.toml").read_bytes()
    else:
        raise SpecError(f"unknown preset {path_or_name!r}; choose one of: {', '.join(preset_names())} "
                        "or give a path to a .toml file")
    try:
        return tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise SpecError(f"{path_or_name}: expected UTF-8 TOML text, got byte {data[e.start]:#04x} at offset "
                        f"{e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"malformed TOML in {path_or_name}: {e}") from None
    except RecursionError:
        raise SpecError(f"{path_or_name}: expected TOML, got arrays or tables nested too deeply") from None


def parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, lists, booleans, quoted strings); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides to a raw spec dict (validated afterwards)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, eq, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot:
            raise SpecError(f"--set {_show(item)}: expected section.key=value, e.g. train.steps=200")
        if section not in SECTIONS:
            raise SpecError(f"--set {_show(item)}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
        if name not in _allowed_keys(section):
            raise SpecError(f"--set {_show(item)}: unknown key {key.strip()}; allowed: "
                            + ", ".join(f"{section}.{k}" for k in _allowed_keys(section)))
        try:
            raw.setdefault(section, {})[name] = parse_value(value.strip())
        except RecursionError:
            raise SpecError(f"--set {key.strip()}: expected a TOML value, got arrays or tables nested too "
                            "deeply") from None
    return raw


def load_spec(preset: str = "default", overrides: list[str] | None = None) -> ZooSpec:
    return spec_from_dict(apply_overrides(load_toml(preset), overrides or []))
