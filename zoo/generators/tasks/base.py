"""The in-memory form every task hands to the trainer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TaskData:
    name: str
    x_train: np.ndarray  # [N, ...] float32
    y_train: np.ndarray  # [N] int64 class labels
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])
