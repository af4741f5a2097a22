"""Training tasks: data + labels, made locally (embedded) or read from a data root."""

from __future__ import annotations

from pathlib import Path

from ...io import default_data_root
from . import embedded, mnist1d, vision
from .base import Task, TaskData
from .vision import DatasetMissing

# The registered tasks: each task's file declares its Task record; one line here per file.
REGISTRY: dict[str, Task] = {t.name: t for t in (mnist1d.TASK, *embedded.TASKS, *vision.TASKS)}
TASKS = tuple(REGISTRY)
TASK_OPTIONS = tuple(dict.fromkeys(o for t in REGISTRY.values() for o in t.options))  # task fields loaders take


def get_task(name: str) -> Task:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


def task_kind(name: str) -> str:
    """classification | regression | pinn: the ``TaskData.kind`` of the task ``name``."""
    return get_task(name).kind


def task_shape(config: dict) -> tuple[tuple[int, ...], int, int | None]:
    """(sample shape, outputs, vocabulary) of the task of a flat config (``task.name`` ...)."""
    return get_task(config["task.name"]).shape(config)


def load_task(name: str, n_train: int, n_test: int, data_seed: int, data_root: Path | None = None,
              **options) -> TaskData:
    """Load a task by name; ``options`` are task-specific (modulus, beta, download, ...)."""
    return get_task(name).load(n_train, n_test, data_seed, Path(data_root or default_data_root()), **options)


def load_task_section(task: dict, data_root: Path | None = None) -> TaskData:
    """The data of a spec's ``[task]`` section (as a dict: ``spec.to_dict()["task"]``)."""
    options = get_task(task["name"]).options
    return load_task(task["name"], task["n_train"], task["n_test"], task["data_seed"], data_root,
                     **{k: task[k] for k in options if k in task})


def model_task(task_section: dict, config: dict) -> dict:
    """The ``[task]`` section one model was trained on: the spec's, with the model's own
    ``task.*`` values (phase axes such as ``task.beta``, ``task.n_train`` or ``task.modulus``)."""
    return {**task_section, **{k[5:]: v for k, v in config.items() if k.startswith("task.")}}


def task_record(data: TaskData) -> dict:
    """What a reader needs to rebuild any model of the task without loading its data (zoo.json "task")."""
    return {"name": data.name, "kind": data.kind, "input_shape": list(data.input_shape),
            "n_outputs": int(data.n_classes), "vocab_size": data.extras.get("vocab_size")}


__all__ = ["REGISTRY", "TASKS", "TASK_OPTIONS", "DatasetMissing", "Task", "TaskData", "default_data_root", "get_task",
           "load_task", "load_task_section", "model_task", "task_kind", "task_record", "task_shape"]
