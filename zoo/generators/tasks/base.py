"""What a task is (``Task``: one record per task, declared in the task's file and listed in
``tasks/__init__.py``) and the in-memory form every task hands to the trainer (``TaskData``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Shape = tuple[tuple[int, ...] | None, int, int | None]  # (sample shape, outputs, vocabulary)


@dataclass(frozen=True)
class Task:
    """One task: everything the spec, the cost model, the builder and a reader ask of it.

    ``load(n_train, n_test, data_seed, data_root, **options)`` makes or reads its data;
    ``shape(config)`` gives (sample shape, outputs, vocabulary) from a flat config (``task.*``
    keys) without loading anything; ``samples(config)`` the most ``n_train + n_test`` it has
    (None: no limit, or only its files know); ``options`` the ``[task]`` fields its loader takes.
    """

    name: str
    kind: str  # classification | regression | pinn: its loss and metrics
    load: Callable[..., TaskData]
    shape: Callable[[dict], Shape]
    samples: Callable[[dict], int] | None = None
    options: tuple[str, ...] = ()


def fixed(sample_shape: tuple[int, ...], outputs: int, vocab: int | None = None) -> Callable[[dict], Shape]:
    """``Task.shape`` of a task whose shape does not depend on its options."""
    return lambda config: (sample_shape, outputs, vocab)


@dataclass
class TaskData:
    name: str
    x_train: np.ndarray  # [N, ...] float32
    y_train: np.ndarray  # [N] int64 class labels
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int  # classes, or output dimension for regression / PDE tasks
    kind: str = "classification"  # classification | regression | pinn
    extras: dict = field(default_factory=dict)  # task-specific arrays (e.g. PDE boundary points)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])
