import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A shared data cache for the session (MNIST-1D is generated once, locally)."""
    root = Path(os.environ.get("ZOO_DATA") or tmp_path_factory.mktemp("data"))
    os.environ["ZOO_DATA"] = str(root)
    return root


@pytest.fixture(scope="session")
def mnist1d_small(data_root):
    from zoo.generators.tasks import load_task

    return load_task("mnist1d", 1000, 500, 42, data_root)
