"""What a zoo is: the spec dataclasses, TOML presets, overrides and validation.

A spec has sections (task, arch, train, phase, metrics, build). Every field is checked on load;
problems raise ``SpecError`` with one line naming the field and the allowed values, which the
CLI prints before exiting with code 2.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import SpecError  # re-exported: callers import it from here

TASKS = ("mnist1d", "digits", "modular", "teacher_student", "convection",
         "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "tinyimagenet")
CLASSIFICATION_TASKS = tuple(t for t in TASKS if t not in ("teacher_student", "convection"))
FAMILIES = ("mlp", "pinn", "cnn", "cnn_s", "cnn_l", "resnet18", "resnet50", "vit", "gpt")
OPERATIONS = ("add", "sub", "mul", "div")
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "leaky_relu")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "onecycle")
INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "uniform", "normal")
SAMPLERS = ("grid", "adaptive")
LMC_MODES = ("none", "weight", "all")  # aligned barriers in the build: off, weight matching, every alignment
# Fields that may differ between the models of one population (held as per-model tensors).
PER_MODEL_KEYS = ("train.lr", "train.momentum", "train.weight_decay", "task.label_noise",
                  "task.train_fraction", "task.augment")
# Fields added after zoos were published, with the value that reproduces the older models: ids and
# fingerprints leave them out at that value, so those models keep their ids and random streams.
NEUTRAL = {"arch.dropout": 0.0}


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
    dropout: float = 0.0  # after each hidden activation (mlp, cnn, cnn_s, cnn_l; the Model Zoos' dropout axis)
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

def _check_type(where: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (int, float) and isinstance(value, bool) or not isinstance(value, expected):
        raise SpecError(f"{where}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _field_types(cls) -> dict[str, type]:
    hints = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}
    return {f.name: hints[str(f.type)] for f in fields(cls)}


def _build_section(name: str, raw: Any):
    cls = SECTIONS[name]
    if not isinstance(raw, dict):
        raise SpecError(f"[{name}] must be a table, got {type(raw).__name__}")
    types = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in types:
            raise SpecError(f"unknown key {name}.{key}; allowed: {', '.join(types)}")
        if name == "phase" and key == "axes":
            kwargs[key] = _build_axes(value)
            continue
        kwargs[key] = _check_type(f"{name}.{key}", value, types[key])
    return cls(**kwargs)


def _build_axes(raw: Any) -> list[Axis]:
    if not isinstance(raw, list):
        raise SpecError("phase.axes must be a list of tables with key and values")
    axes = []
    for i, a in enumerate(raw):
        if not isinstance(a, dict) or set(a) - {"key", "values", "name"} or "key" not in a or "values" not in a:
            raise SpecError(f"phase.axes[{i}] needs exactly: key, values (and optional name)")
        axes.append(Axis(key=str(a["key"]), values=a["values"], name=str(a.get("name", ""))))
    return axes


def spec_from_dict(raw: dict) -> ZooSpec:
    """Build and validate a ZooSpec from a TOML-like dict."""
    raw = copy.deepcopy(raw)
    unknown = set(raw) - set(SECTIONS) - {"name", "description"}
    if unknown:
        raise SpecError(f"unknown section {sorted(unknown)[0]!r}; allowed: name, description, "
                        + ", ".join(SECTIONS))
    spec = ZooSpec(name=str(raw.pop("name", "custom")), description=str(raw.pop("description", "")))
    for section, value in raw.items():
        setattr(spec, section, _build_section(section, value))
    validate(spec)
    return spec


def _choice(where: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise SpecError(f"{where}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(where: str, value: Any) -> None:
    if value <= 0:
        raise SpecError(f"{where} must be > 0, got {value!r}")


def _validate_values(spec: ZooSpec) -> None:
    t, a, tr, b = spec.task, spec.arch, spec.train, spec.build
    _choice("task.name", t.name, TASKS)
    _choice("arch.family", a.family, FAMILIES)
    _choice("arch.activation", a.activation, ACTIVATIONS)
    _choice("task.operation", t.operation, OPERATIONS)
    _choice("arch.init", a.init, INITS)
    if tr.epochs < 0:
        raise SpecError(f"train.epochs must be >= 0, got {tr.epochs!r}")
    _choice("train.optimizer", tr.optimizer, OPTIMIZERS)
    _choice("train.schedule", tr.schedule, SCHEDULES)
    _choice("phase.sampler", spec.phase.sampler, SAMPLERS)
    _validate_metrics(spec.metrics)
    if spec.phase.budget < 0 or spec.phase.coarse_stride < 1:
        raise SpecError(f"phase.budget must be >= 0 and phase.coarse_stride >= 1, got "
                        f"{spec.phase.budget!r}, {spec.phase.coarse_stride!r}")
    for where, v in [("task.n_train", t.n_train), ("task.n_test", t.n_test), ("arch.width", a.width),
                     ("arch.depth", a.depth), ("train.steps", tr.steps),
                     ("train.batch_size", tr.batch_size), ("train.lr", tr.lr),
                     ("train.checkpoints", tr.checkpoints), ("build.max_population", b.max_population)]:
        _positive(where, v)
    if not 0 < t.train_fraction <= 1:
        raise SpecError(f"task.train_fraction must be in (0, 1], got {t.train_fraction!r}")
    if not 0 <= t.label_noise <= 1:
        raise SpecError(f"task.label_noise must be in [0, 1], got {t.label_noise!r}")
    if not 0 <= a.dropout < 1:
        raise SpecError(f"arch.dropout must be in [0, 1), got {a.dropout!r}")
    if not 0 <= tr.momentum < 1:
        raise SpecError(f"train.momentum must be in [0, 1), got {tr.momentum!r}")
    if tr.weight_decay < 0:
        raise SpecError(f"train.weight_decay must be >= 0, got {tr.weight_decay!r}")
    if tr.checkpoints > tr.steps:
        raise SpecError(f"train.checkpoints ({tr.checkpoints}) cannot exceed train.steps ({tr.steps})")
    limits = {"mnist1d": 5000, "digits": 1797, "modular": t.modulus * t.modulus}
    if t.name in limits and t.n_train + t.n_test > limits[t.name]:
        raise SpecError(f"task.n_train + task.n_test must be <= {limits[t.name]} for {t.name}")
    if t.label_noise > 0 and t.name not in CLASSIFICATION_TASKS:
        raise SpecError(f"task.label_noise applies to classification tasks only, not {t.name}")
    for where, v in [("task.modulus", t.modulus), ("task.input_dim", t.input_dim), ("arch.heads", a.heads),
                     ("arch.patch_size", a.patch_size)]:
        _positive(where, v)
    _check_arch_fits_task(spec)
    if tr.batch_size > t.n_train * t.train_fraction:
        raise SpecError(f"train.batch_size ({tr.batch_size}) exceeds the training samples a model "
                        f"sees ({int(t.n_train * t.train_fraction)})")
    if len(b.split) != 3 or any(not isinstance(x, (int, float)) or x < 0 for x in b.split) \
            or abs(sum(b.split) - 1) > 1e-6:
        raise SpecError(f"build.split must be three non-negative fractions summing to 1, got {b.split!r}")


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

    allowed = [f.name for f in fields(PhaseThresholds)]
    for key in m.thresholds:
        if key not in allowed:
            raise SpecError(f"metrics.thresholds.{key} is not a phase threshold; allowed: {', '.join(allowed)}")


def _check_arch_fits_task(spec: ZooSpec) -> None:
    t, a = spec.task, spec.arch
    image = t.name in ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "tinyimagenet")
    if a.family == "gpt" and t.name != "modular":
        raise SpecError(f"arch.family=gpt needs a token task (task.name=modular), not {t.name}")
    if t.name == "modular" and a.family not in ("gpt", "mlp"):
        raise SpecError(f"task modular takes arch.family gpt or mlp, not {a.family}")
    if a.family in ("cnn_s", "cnn_l", "resnet18", "resnet50", "vit") and not image:
        raise SpecError(f"arch.family={a.family} needs an image task (digits, mnist, cifar10, ...), not {t.name}")
    if a.family in ("vit", "gpt") and a.width % a.heads:
        raise SpecError(f"arch.width ({a.width}) must be divisible by arch.heads ({a.heads})")
    if t.name == "convection" and a.family not in ("pinn", "mlp"):
        raise SpecError(f"task convection takes arch.family pinn or mlp, not {a.family}")
    if a.dropout > 0:
        from .generators.architectures import FAMILIES as BUILDERS  # each family declares its fields

        takes = [f for f in FAMILIES if "dropout" in BUILDERS[f][2]]
        if a.family not in takes:
            raise SpecError(f"arch.dropout applies to arch.family {', '.join(takes)}, not {a.family}")


def validate(spec: ZooSpec) -> None:
    """Raise SpecError (one line) on the first invalid field, including every axis value."""
    _validate_values(spec)
    seeds = spec.phase.seeds
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise SpecError(f"phase.seeds must be a non-empty list of non-negative ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"phase.seeds has duplicates: {seeds!r}")
    keys = set()
    for axis in spec.phase.axes:
        section, _, name = axis.key.partition(".")
        if section not in ("task", "arch", "train") or name not in _field_types(SECTIONS[section]):
            raise SpecError(f"phase axis key {axis.key!r} is not a task/arch/train field "
                            "(e.g. arch.width, train.lr)")
        if axis.key in keys:
            raise SpecError(f"phase axis {axis.key!r} appears twice")
        keys.add(axis.key)
        if not isinstance(axis.values, list) or not axis.values:
            raise SpecError(f"phase axis {axis.key!r} has no values; give a non-empty list")
        if len(set(map(repr, axis.values))) != len(axis.values):
            raise SpecError(f"phase axis {axis.key!r} has duplicate values: {axis.values!r}")
        expected = _field_types(SECTIONS[section])[name]
        for v in axis.values:  # each value must make a valid spec on its own
            trial = copy.deepcopy(spec)
            trial.phase.axes = []
            setattr(getattr(trial, section), name, _check_type(f"phase axis {axis.key}", v, expected))
            _validate_values(trial)
        axis.values = [float(v) if expected is float else v for v in axis.values]


# ---------------------------------------------------------------- presets and overrides

def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("zoo.presets").iterdir()
                  if p.name.endswith(".toml"))


def load_toml(path_or_name: str) -> dict:
    """Raw dict of a preset name or a TOML file path."""
    path = Path(path_or_name)
    if path.suffix == ".toml" and path.exists():
        text = path.read_text()
    elif path_or_name in preset_names():
        text = resources.files("zoo.presets").joinpath(f"{path_or_name}.toml").read_text()
    else:
        raise SpecError(f"unknown preset {path_or_name!r}; choose one of: {', '.join(preset_names())} "
                        "or give a path to a .toml file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"malformed TOML in {path_or_name}: {e}") from None


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
            raise SpecError(f"--set {item!r}: expected section.key=value, e.g. train.steps=200")
        if section not in SECTIONS:
            raise SpecError(f"--set {item!r}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
        if name not in _field_types(SECTIONS[section]):
            raise SpecError(f"--set {item!r}: unknown key {key.strip()}; allowed: "
                            + ", ".join(f"{section}.{k}" for k in _field_types(SECTIONS[section])))
        raw.setdefault(section, {})[name] = parse_value(value.strip())
    return raw


def load_spec(preset: str = "default", overrides: list[str] | None = None) -> ZooSpec:
    return spec_from_dict(apply_overrides(load_toml(preset), overrides or []))
