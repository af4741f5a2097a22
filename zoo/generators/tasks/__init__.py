"""Training tasks: data + labels, made locally (embedded) or read from a data root."""

from __future__ import annotations

from pathlib import Path

from ...io import default_data_root
from . import embedded, mnist1d, vision
from .base import TaskData
from .vision import DatasetMissing

EMBEDDED = {
    "mnist1d": lambda n_train, n_test, seed, root, **kw: mnist1d.load(n_train, n_test, seed, root),
    "digits": lambda n_train, n_test, seed, root, **kw: embedded.digits(n_train, n_test, seed, **kw),
    "modular": lambda n_train, n_test, seed, root, **kw: embedded.modular(n_train, n_test, seed, **kw),
    "teacher_student": lambda n_train, n_test, seed, root, **kw: embedded.teacher_student(n_train, n_test, seed, **kw),
    "convection": lambda n_train, n_test, seed, root, **kw: embedded.convection(n_train, n_test, seed, **kw),
}
VISION = tuple(vision.READERS)
TASKS = (*EMBEDDED, *VISION)


# Sample shape, outputs and vocabulary of each task, known without loading it.
TASK_SHAPES = {
    "mnist1d": ((40,), 10, None), "digits": ((1, 8, 8), 10, None), "teacher_student": (None, 1, None),
    "convection": ((2,), 1, None), "mnist": ((1, 28, 28), 10, None), "fashion_mnist": ((1, 28, 28), 10, None),
    "cifar10": ((3, 32, 32), 10, None), "cifar100": ((3, 32, 32), 100, None), "svhn": ((3, 32, 32), 10, None),
    "tinyimagenet": ((3, 64, 64), 200, None),
}


# Kind of each task that is not classification (what its loss and metrics are), known without loading it.
TASK_KINDS = {"teacher_student": "regression", "convection": "pinn"}


def task_kind(name: str) -> str:
    """classification | regression | pinn: the ``TaskData.kind`` of the task ``name``."""
    return TASK_KINDS.get(name, "classification")


def task_shape(task: dict) -> tuple[tuple[int, ...], int, int | None]:
    """(sample shape, outputs, vocabulary) of the task of a flat config (``task.name`` ...)."""
    name = task["task.name"]
    if name == "modular":
        return (3,), task["task.modulus"], task["task.modulus"] + 1
    if name == "teacher_student":
        return (task["task.input_dim"],), 1, None
    return TASK_SHAPES[name]


def load_task(name: str, n_train: int, n_test: int, data_seed: int, data_root: Path | None = None,
              **options) -> TaskData:
    """Load a task by name; ``options`` are task-specific (modulus, beta, download, ...)."""
    root = Path(data_root or default_data_root())
    if name in EMBEDDED:
        return EMBEDDED[name](n_train, n_test, data_seed, root, **options)
    if name in VISION:
        return vision.load(name, n_train, n_test, data_seed, root, **options)
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")


TASK_OPTIONS = ("modulus", "operation", "input_dim", "beta", "download")  # task-section fields a loader takes


def load_task_section(task: dict, data_root: Path | None = None) -> TaskData:
    """The data of a spec's ``[task]`` section (as a dict: ``spec.to_dict()["task"]``)."""
    return load_task(task["name"], task["n_train"], task["n_test"], task["data_seed"], data_root,
                     **{k: task[k] for k in TASK_OPTIONS if k in task})


def task_record(data: TaskData) -> dict:
    """What a reader needs to rebuild any model of the task without loading its data (zoo.json "task")."""
    return {"name": data.name, "kind": data.kind, "input_shape": list(data.input_shape),
            "n_outputs": int(data.n_classes), "vocab_size": data.extras.get("vocab_size")}


__all__ = ["TASKS", "TASK_KINDS", "TASK_OPTIONS", "TASK_SHAPES", "DatasetMissing", "TaskData", "default_data_root",
           "load_task", "load_task_section", "task_kind", "task_record", "task_shape"]
