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

PANELS = {  # file stem -> (column, title, transform)
    "test_acc": ("test_acc", "test accuracy", None),
    "hessian_trace": ("hessian.trace", "log10 Hessian trace", "log10"),
    "mc": ("connectivity.mc", "mode connectivity mc (< 0: barrier)", None),
    "cka": ("similarity.cka", "CKA of logits (same-cell pairs)", None),
}


def _axes(models: pd.DataFrame, x: str | None, y: str | None) -> tuple[str, str]:
    """Capacity and temperature columns, or the two config columns with the most values."""
    varying = sorted((c for c in models if c.startswith("config.") and models[c].nunique() > 1),
                     key=lambda c: -models[c].nunique())
    x = x or ("config.arch.width" if "config.arch.width" in varying else varying[0] if varying else None)
    y = y or next((c for c in ["config.train.lr", "config.train.batch_size", *varying] if c in varying and c != x),
                  None)
    if x is None or y is None:
        raise ValueError("phase diagrams need two config columns that vary across the zoo")
    return x, y


def _grid(models: pd.DataFrame, x: str, y: str, column: str, how: str = "mean") -> pd.DataFrame:
    if how == "mode":
        return models.pivot_table(index=y, columns=x, values=column,
                                  aggfunc=lambda s: s.mode().iloc[0] if len(s.mode()) else "unknown")
    return models.pivot_table(index=y, columns=x, values=column, aggfunc="mean")


def _decorate(ax, grid: pd.DataFrame, x: str, y: str, title: str) -> None:
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
    ax.set_xlabel(x.removeprefix("config."))
    ax.set_ylabel(y.removeprefix("config."))
    ax.set_title(title)


def phase_diagrams(models: pd.DataFrame, out_dir: str | Path, x: str | None = None,
                   y: str | None = None) -> list[Path]:
    """Write one PNG per available metric and one of the phase label; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from .io import atomic_path

    x, y = _axes(models, x, y)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (column, title, transform) in PANELS.items():
        if column not in models or not np.isfinite(models[column].to_numpy(dtype=float)).any():
            continue
        frame = models[[x, y]].assign(v=models[column].astype(float))
        if transform == "log10":
            frame["v"] = np.log10(frame["v"].where(frame["v"] > 0))
        grid = _grid(frame, x, y, "v")
        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow(grid.to_numpy(dtype=float), origin="lower", cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=ax)
        _decorate(ax, grid, x, y, title)
        written.append(_save(fig, out_dir / f"{stem}.png", atomic_path))
    label = "cell_phase" if "cell_phase" in models else "phase" if "phase" in models else None
    if label:
        names = [*PHASES, "unknown"]
        grid = _grid(models, x, y, label, how="mode")
        codes = grid.apply(lambda col: col.map(lambda v: names.index(v) if v in names else len(names) - 1))
        colors = ["#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#2ca02c", "#cccccc"]
        fig, ax = plt.subplots(figsize=(5.8, 4))
        ax.imshow(codes.to_numpy(dtype=float), origin="lower", cmap=ListedColormap(colors), vmin=-0.5,
                  vmax=len(names) - 0.5, aspect="auto")
        ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(colors, names, strict=True)],
                  bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
        _decorate(ax, grid, x, y, "phase (Yang et al. 2021)")
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
    from .datasets.manifest import record, require_intact
    from .datasets.reader import read_table

    root = Path(args.dir)
    manifest = require_intact(root)  # DatasetError -> one line, exit 2
    models = read_table(root, "models.parquet")
    try:
        paths = phase_diagrams(models, root / "plots")
    except ValueError as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    record(root, manifest, written=paths, event={"command": "plot"})
    for p in paths:
        print(p)
    return 0


__all__ = ["PANELS", "cmd_plot", "phase_diagrams"]
