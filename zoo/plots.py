"""Phase diagrams: capacity x temperature heat maps of a zoo's metrics, one PNG each.

Cells are averaged over seeds (the phase label takes the cell's label). Axis values are shown as
they are, in grid order, so geometric grids read as log axes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics.phases import PHASES

PANELS = {  # file stem -> (column, colour-bar label, transform, threshold of the phase rule drawn as a contour)
    "test_acc": ("test_acc", "test accuracy", None, None),
    "test_loss": ("test_loss", "log10 test loss", "log10", None),
    "train_loss": ("train_loss", "log10 train loss", "log10", "loss_max"),
    "hessian_trace": ("hessian.trace", "log10 Hessian trace", "log10", "log10_sharpness_min"),
    "mc": ("connectivity.mc", "mode connectivity mc (< 0: barrier)", None, "mc_abs_max"),
    "cka": ("similarity.cka", "CKA of logits (same-cell pairs)", None, "cka_high"),
}
PHASE_MEANINGS = {  # legend text: the signature each label stands for (metrics/phases.py)
    "I": "I: high loss, sharp, barrier", "II": "II: high loss, sharp, mc > 0",
    "III": "III: low loss, flat, barrier", "IV-A": "IV-A: low loss, flat, connected, low CKA",
    "IV-B": "IV-B: low loss, flat, connected, high CKA", "unknown": "unknown: a signal is missing",
}


ALL = "(all models)"  # the y axis of a zoo with one varying axis: one row of cells


def _axes(models: pd.DataFrame, x: str | None, y: str | None) -> tuple[str, str]:
    """Capacity and temperature columns, or the two config columns with the most values; a zoo
    with a single varying axis gets one row (``ALL``)."""
    varying = sorted((c for c in models if c.startswith("config.") and models[c].nunique() > 1),
                     key=lambda c: -models[c].nunique())
    x = x or ("config.arch.width" if "config.arch.width" in varying else varying[0] if varying else None)
    y = y or next((c for c in ["config.train.lr", "config.train.batch_size", *varying] if c in varying and c != x),
                  None)
    if x is None:
        raise ValueError("phase diagrams need a config column that varies across the zoo")
    return x, y or ALL


def _grid(models: pd.DataFrame, x: str, y: str, column: str, how: str = "mean") -> pd.DataFrame:
    if how == "mode":
        return models.pivot_table(index=y, columns=x, values=column,
                                  aggfunc=lambda s: s.mode().iloc[0] if len(s.mode()) else "unknown")
    return models.pivot_table(index=y, columns=x, values=column, aggfunc="mean")


def _decorate(ax, grid: pd.DataFrame, x: str, y: str, title: str) -> None:
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" if y != ALL else "" for v in grid.index])
    ax.set_xlabel(x.removeprefix("config."))
    ax.set_ylabel(y.removeprefix("config."))
    ax.set_title(title)


def _levels(key: str, thresholds: dict, transform: str | None) -> list[float]:
    """Where a phase rule cuts the panel's colour scale (in the panel's units)."""
    value = thresholds.get(key)
    if value is None or not np.isfinite(value):
        return []
    if key == "mc_abs_max":
        return [-value, value]
    if transform == "log10" and key != "log10_sharpness_min":
        return [float(np.log10(value))] if value > 0 else []
    return [float(value)]


def _mark_missing(ax, values: np.ndarray) -> bool:
    """Hatch cells without a finite value, so a blank is never mistaken for a low value."""
    missing = np.argwhere(~np.isfinite(values))
    for r, c in missing:
        ax.add_patch(_hatch((c - 0.5, r - 0.5)))
    return len(missing) > 0


def _hatch(xy):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, 1, 1, fill=False, hatch="xx", edgecolor="#888888", linewidth=0)


def phase_diagrams(models: pd.DataFrame, out_dir: str | Path, x: str | None = None,
                   y: str | None = None, thresholds: dict | None = None) -> list[Path]:
    """Write one PNG per available metric and one of the phase label; returns the paths.

    ``thresholds`` (zoo.json's ``phase_thresholds``) draws each phase rule's cut as a contour on
    its signal's map, so a reader sees why a cell got its label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from .io import atomic_path

    x, y = _axes(models, x, y)
    if y == ALL:
        models = models.assign(**{ALL: 0})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (column, label, transform, rule) in PANELS.items():
        if column not in models or not np.isfinite(models[column].to_numpy(dtype=float)).any():
            continue
        if stem == "test_loss" and "test_acc" in models:
            continue  # classification: accuracy is the headline panel
        frame = models[[x, y]].assign(v=models[column].astype(float))
        if transform == "log10":
            frame["v"] = np.log10(frame["v"].where(frame["v"] > 0))
        grid = _grid(frame, x, y, "v")
        values = grid.to_numpy(dtype=float)
        fig, ax = plt.subplots(figsize=(5.4, 4))
        im = ax.imshow(values, origin="lower", cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=ax, label=label)
        levels = _levels(rule, thresholds or {}, transform) if rule else []
        if levels and min(values.shape) > 1 and np.isfinite(values).all():
            ax.contour(values, levels=sorted(levels), colors="white", linewidths=1.5, linestyles="--")
            label += "  (dashed: phase rule)"
        if _mark_missing(ax, values):
            label += "  (hatched: no value)"
        _decorate(ax, grid, x, y, label)
        written.append(_save(fig, out_dir / f"{stem}.png", atomic_path))
    label = "cell_phase" if "cell_phase" in models else "phase" if "phase" in models else None
    if label:
        names = [*PHASES, "unknown"]
        grid = _grid(models, x, y, label, how="mode")
        codes = grid.apply(lambda col: col.map(lambda v: names.index(v) if v in names else len(names) - 1))
        colors = ["#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#2ca02c", "#cccccc"]
        fig, ax = plt.subplots(figsize=(7.5, 4))
        ax.imshow(codes.to_numpy(dtype=float), origin="lower", cmap=ListedColormap(colors), vmin=-0.5,
                  vmax=len(names) - 0.5, aspect="auto")
        _mark_missing(ax, np.where(grid.isna().to_numpy(), np.nan, 0.0))  # cells without models
        ax.legend(handles=[Patch(color=c, label=PHASE_MEANINGS[n]) for c, n in zip(colors, names, strict=True)],
                  bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7, title="phase (Yang et al. 2021)")
        _decorate(ax, grid, x, y, "phase of each cell")
        written.append(_save(fig, out_dir / "phase.png", atomic_path))
    return written


def _save(fig, path: Path, atomic_path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def cmd_plot(args) -> int:
    """`zoo plot DIR`: phase diagrams under DIR/plots/; zoo.json records the plots' checksums.

    The zoo is checked against zoo.json first, so a damaged file is refused, never re-hashed."""
    from .datasets.manifest import all_or_nothing, record, require_intact
    from .datasets.reader import read_table

    root = Path(args.dir)
    manifest = require_intact(root)  # DatasetError -> one line, exit 2
    models = read_table(root, "models.parquet")
    try:
        with all_or_nothing(root):
            paths = phase_diagrams(models, root / "plots", thresholds=manifest.get("phase_thresholds"))
            record(root, manifest, written=paths, event={"command": "plot"})
    except ValueError as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


__all__ = ["PANELS", "cmd_plot", "phase_diagrams"]
