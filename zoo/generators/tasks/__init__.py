"""Training tasks: data + labels, made locally (embedded) or read from a data root."""

from __future__ import annotations

import os
from pathlib import Path

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


def default_data_root() -> Path:
    return Path(os.environ.get("ZOO_DATA", Path.home() / ".cache" / "zoo"))


def load_task(name: str, n_train: int, n_test: int, data_seed: int, data_root: Path | None = None,
              **options) -> TaskData:
    """Load a task by name; ``options`` are task-specific (modulus, beta, download, ...)."""
    root = Path(data_root or default_data_root())
    if name in EMBEDDED:
        return EMBEDDED[name](n_train, n_test, data_seed, root, **options)
    if name in VISION:
        return vision.load(name, n_train, n_test, data_seed, root, **options)
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")


__all__ = ["TASKS", "DatasetMissing", "TaskData", "default_data_root", "load_task"]
