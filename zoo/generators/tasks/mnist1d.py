"""MNIST-1D (Greydanus 2020): 40-sample 1-D signals of 10 digit templates, made locally.

The ``mnist1d`` package generates the data procedurally (no download); we cache the arrays as
an .npz under the data root because generation takes about a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...io import atomic_path
from .base import Task, TaskData, fixed


def load(n_train: int, n_test: int, data_seed: int, data_root: Path, **_) -> TaskData:
    cache = Path(data_root) / f"mnist1d-seed{data_seed}.npz"
    if not cache.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = data_seed
        d = make_dataset(args)  # 4000 train / 1000 test by the package's defaults
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=d["x"].astype(np.float32), y=d["y"].astype(np.int64),
                     x_test=d["x_test"].astype(np.float32), y_test=d["y_test"].astype(np.int64))
    with np.load(cache) as d:
        return TaskData(
            name="mnist1d",
            x_train=d["x"][:n_train], y_train=d["y"][:n_train],
            x_test=d["x_test"][:n_test], y_test=d["y_test"][:n_test],
            n_classes=10,
        )


TASK = Task("mnist1d", "classification", load=load, shape=fixed((40,), 10),
            samples=lambda config: 5000)  # the package's 4000 train + 1000 test
