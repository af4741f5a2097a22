"""Training tasks: data + labels, made locally (embedded) or downloaded on request."""

from __future__ import annotations

import os
from pathlib import Path

from . import mnist1d
from .base import TaskData

LOADERS = {"mnist1d": mnist1d.load}


def default_data_root() -> Path:
    return Path(os.environ.get("ZOO_DATA", Path.home() / ".cache" / "zoo"))


def load_task(name: str, n_train: int, n_test: int, data_seed: int,
              data_root: Path | None = None) -> TaskData:
    return LOADERS[name](n_train, n_test, data_seed, Path(data_root or default_data_root()))


__all__ = ["TaskData", "load_task", "default_data_root"]
