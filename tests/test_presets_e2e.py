"""Every task kind and family, end to end as a new user runs it: build, info, verify, plot,
metrics all, export, and rebuilding a model from the published zoo (reduced with --set)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from zoo.cli import main
from zoo.datasets import load, verify

SMALL = ["train.steps=30", "train.checkpoints=2", "phase.seeds=[0,1]", "metrics.hessian_max_iter=5",
         "metrics.hessian_batches=1"]
CASES = {  # preset -> (task kind, overrides making it small)
    "smoke": ("classification", []),
    "teacher-student": ("regression", ["task.n_train=400", "task.n_test=200",
                                       "phase.axes=[{key='arch.width',values=[4,16]},"
                                       "{key='task.train_fraction',values=[0.3,1.0]}]"]),
    "pinn-convection": ("pinn", ["task.n_train=256", "task.n_test=256", "train.batch_size=64",
                                 "phase.axes=[{key='arch.width',values=[8,16]},{key='task.beta',values=[1.0,30.0]}]"]),
    "gpt-modular": ("classification", ["task.modulus=11", "task.n_train=60", "task.n_test=60",
                                       "train.batch_size=16",
                                       "phase.axes=[{key='arch.width',values=[8,16]},"
                                       "{key='task.train_fraction',values=[0.5,1.0]}]"]),
    "vit-digits": ("classification", ["task.n_train=200", "task.n_test=100", "train.batch_size=32",
                                      "phase.axes=[{key='arch.width',values=[8]},{key='train.lr',values=[0.001,0.003]}]"]),
    "cnn-smoke": ("classification", ["train.steps=20"]),
    "mixer-digits": ("classification", ["task.n_train=200", "task.n_test=100", "train.batch_size=32",
                                        "phase.axes=[{key='arch.width',values=[8]},{key='train.lr',values=[0.003,0.01]}]"]),
}


def zoo_cmd(capsys, *args) -> str:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("preset", sorted(CASES))
def test_preset_end_to_end(preset, tmp_path, capsys, data_root):
    kind, sets = CASES[preset]
    root = tmp_path / "zoo"
    zoo_cmd(capsys, "build", "--preset", preset, "--out", str(root), "--quiet",
            *[a for s in [*SMALL, *sets] for a in ("--set", s)])
    info = zoo_cmd(capsys, "info", str(root))
    assert ("test acc" if kind == "classification" else "test loss") in info
    assert ("phase coverage" in info) == (kind != "classification") or "cells" in info
    assert verify(root) == []
    plots = zoo_cmd(capsys, "plot", str(root)).split()
    assert any(p.endswith("test_acc.png" if kind == "classification" else "test_loss.png") for p in plots)
    zoo_cmd(capsys, "metrics", "all", str(root), "--quiet")
    assert verify(root) == []
    zoo_cmd(capsys, "export", str(root), "--format", "npz", "--out", str(tmp_path / "npz"))
    assert list((tmp_path / "npz").glob("*/metrics.csv"))  # one folder per architecture

    zoo = load(root)
    models = pd.read_parquet(root / "models.parquet")
    assert {"train_acc", "test_acc"} <= set(models) or kind != "classification"
    assert zoo.task["kind"] == kind
    data = zoo.task_data()
    mid = models["model_id"].iloc[-1]
    net = zoo.model(mid)
    adapt = zoo.input_adapter(models.loc[models["model_id"] == mid, "arch_id"].iloc[0])
    with torch.no_grad():
        out = net(torch.from_numpy(adapt(data.x_test[:8])))
    assert torch.isfinite(out).all() and out.shape[0] == 8
    if kind == "classification":  # the rebuilt model reproduces its stored accuracy
        x, y = torch.from_numpy(adapt(data.x_test)), torch.from_numpy(data.y_test)
        with torch.no_grad():
            logits = net(x)
        acc = (logits.reshape(len(y), -1, logits.shape[-1])[:, -1].argmax(-1) == y).float().mean().item() \
            if logits.dim() == 3 else (logits.argmax(-1) == y).float().mean().item()
        stored = float(models.loc[models["model_id"] == mid, "test_acc"].iloc[0])
        assert np.isclose(acc, stored, atol=1e-6)
