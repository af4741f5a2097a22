"""The in-memory form every task hands to the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
