"""`shift`: test accuracy under input shifts (additive noise, translations), without any training.

Out-of-distribution robustness by phase: the same test set is corrupted with Gaussian noise
(std = strength x the training inputs' std, one fixed noise draw shared by every model, so models
are compared on identical inputs) or translated along its last axis (signal samples or image
columns, zero-filled). Strength 0 is the clean test set: its accuracy is the published ``test_acc``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetError
from .base import Option, Study, axes_grid, by_phase, populations, save_figure, study_seed, task_data

KINDS = ("noise", "translate")


def shifted(x: torch.Tensor, kind: str, strength: float, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Raw task inputs x [N, ...] shifted: ``noise`` adds N(0, (strength * scale)^2) from ``seed``;
    ``translate`` moves the last axis by ``strength`` positions (zero-filled; negative: leftwards)."""
    if strength == 0:
        return x
    if kind == "noise":
        g = torch.Generator().manual_seed(seed % (2**63 - 1))
        return x + strength * scale * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
    s = int(strength)
    out = torch.zeros_like(x)
    if abs(s) < x.shape[-1]:
        if s > 0:
            out[..., s:] = x[..., :-s]
        else:
            out[..., :s] = x[..., -s:]
    return out


def run(zoo, options: dict) -> pd.DataFrame:
    data = task_data(zoo)
    x_raw = torch.as_tensor(data.x_test)
    if not x_raw.is_floating_point():
        raise DatasetError(f"shift needs real-valued inputs; {data.name} has token inputs")
    length = x_raw.shape[-1]
    if any(abs(t) >= length for t in options["translate"]):
        raise DatasetError(f"study.translate: shifts must be shorter than the inputs' last axis ({length})")
    scale = float(np.std(data.x_train))
    seed = study_seed("shift", options["seed"])
    grid = [("noise", float(s)) for s in options["noise"]] + [("translate", int(t)) for t in options["translate"]]
    tables = []
    for pop in populations(zoo, data):
        clean = pop.scores(pop.params, pop.buffers)["acc"]
        for kind, strength in grid:
            x = pop.adapt(shifted(x_raw, kind, strength, scale, seed))
            s = pop.scores(pop.params, pop.buffers, x, pop.y_test)
            tables.append(pd.DataFrame({
                "model_id": pop.model_ids, "cell_id": pop.rows["cell_id"].to_numpy(), "shift": kind,
                "strength": float(strength), "test_acc": s["acc"], "test_loss": s["loss"], "clean_acc": clean,
                "acc_drop": clean - s["acc"]}))
    return pd.concat(tables, ignore_index=True)


def plot(rows: pd.DataFrame, options: dict, path) -> None:
    fig, axes = axes_grid(len(KINDS))
    for ax, kind in zip(axes, KINDS, strict=True):
        for phase, group in by_phase(rows[rows["shift"] == kind]).items():
            curve = group.groupby("strength")["test_acc"].mean()
            ax.plot(curve.index, curve.to_numpy(), marker="o", label=phase)
        ax.set_xlabel("noise std / input std" if kind == "noise" else "translation (positions)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"shift: {kind}")
        ax.legend(fontsize=8, title="phase")
    save_figure(fig, path)


STUDY = Study(
    name="shift",
    summary="Test accuracy under input shifts (Gaussian noise, translations) without training.",
    row="(model, shift kind, strength)",
    options={
        "noise": Option([0.0, 0.25, 0.5, 1.0, 2.0], "Gaussian noise std in units of the training inputs' std",
                        type=list, item=float, low=0.0),
        "translate": Option([0, 1, 2, 4, 8], "translations along the inputs' last axis (positions, zero-filled)",
                            type=list, item=int),
        "seed": Option(0, "seed of the shared noise draw", type=int, low=0),
    },
    run=run,
    plot=plot,
    columns={
        "shift / strength": "noise (std in units of the training inputs' std) or translate (positions along "
                            "the last axis, zero-filled); strength 0 is the clean test set",
        "test_acc / test_loss": "accuracy and mean cross-entropy on the shifted test set",
        "clean_acc": "accuracy on the clean test set (equals models.parquet test_acc)",
        "acc_drop": "clean_acc - test_acc",
    },
)
