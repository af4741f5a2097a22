"""Phase diagram of a published zoo with pandas only: each cell's phase, accuracy and the signals behind it.

Yang et al. (2021) and the reference phase zoo draw load (here width) against temperature (learning rate)
and label every cell I, II, III, IV-A or IV-B from four signals: training loss, sharpness (Hessian trace),
mode connectivity (Bezier mc) and CKA. This reads ``models.parquet`` (``cell_phase`` and the signals are
columns there), draws the phase map beside the mean test accuracy, and writes a report of the coverage
(phase x cells x models, checked against ``zoo.json``'s ``phase_coverage``), where the best test accuracy
lies, and the cell medians of every signal. No number in the report is typed by hand.

    python examples/phase_diagram.py --zoo zoo-out --out phase.png [--out-md report.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

PHASES = ("I", "II", "III", "IV-A", "IV-B")
COLOURS = ("#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#2ca02c")  # one per phase, in PHASES order
SIGNALS = {"train_loss": "training loss", "hessian.trace": "Hessian trace (sharpness)",
           "connectivity.mc": "Bezier mc (connectivity)", "similarity.cka": "CKA of logits (similarity)"}


def cell_table(models: pd.DataFrame, capacity: str, temperature: str) -> pd.DataFrame:
    """One row per cell: its axes, phase, model count, mean test accuracy and median signals."""
    ok = models[models["status"] == "ok"]
    signals = {s: (s, "median") for s in SIGNALS if s in ok}
    return ok.groupby("cell_id").agg(
        capacity=(capacity, "first"), temperature=(temperature, "first"), phase=("cell_phase", "first"),
        models=("model_id", "size"), test_acc=("test_acc", "mean"), **signals).reset_index()


def coverage(cells: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{phase: {cells, models}} over the five phases (zero where absent)."""
    counts = cells.groupby("phase").agg(cells=("cell_id", "size"), models=("models", "sum"))
    return {p: {"cells": int(counts.loc[p, "cells"]) if p in counts.index else 0,
                "models": int(counts.loc[p, "models"]) if p in counts.index else 0} for p in PHASES}


def grid(cells: pd.DataFrame, value: str) -> pd.DataFrame:
    return cells.pivot(index="capacity", columns="temperature", values=value).sort_index().sort_index(axis=1)


def plot(cells: pd.DataFrame, out: Path, capacity: str, temperature: str) -> None:
    phases = grid(cells, "phase")
    codes = phases.map(lambda p: PHASES.index(p) if p in PHASES else float("nan")).to_numpy(float)
    acc = grid(cells, "test_acc")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].imshow(codes, origin="lower", aspect="auto", cmap=ListedColormap(COLOURS), vmin=-0.5, vmax=4.5)
    im = axes[1].imshow(acc.to_numpy(float), origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=axes[1], label="mean test accuracy of the cell")
    for ax, title in zip(axes, ("cell phase", "mean test accuracy (cell phase written in)"), strict=True):
        ax.set_xticks(range(len(phases.columns)), [f"{v:g}" for v in phases.columns])
        ax.set_yticks(range(len(phases.index)), [f"{v:g}" for v in phases.index])
        ax.set_xlabel(f"temperature ({temperature})")
        ax.set_ylabel(f"load ({capacity}; narrow = high load)")
        ax.set_title(title)
        for i, row in enumerate(phases.to_numpy()):
            for j, phase in enumerate(row):
                ax.text(j, i, phase if isinstance(phase, str) else "n/a", ha="center", va="center",
                        color="white", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def markdown_grid(table: pd.DataFrame, fmt) -> list[str]:
    head = "| width \\ lr | " + " | ".join(f"{c:g}" for c in table.columns) + " |"
    lines = [head, "|---" * (len(table.columns) + 1) + "|"]
    for idx, row in table.iterrows():
        lines.append(f"| {idx:g} | " + " | ".join(fmt(v) for v in row) + " |")
    return lines


def report(zoo: Path, cells: pd.DataFrame, cover: dict, manifest: dict, png: Path, argv: list[str]) -> str:
    best = cells.loc[cells["test_acc"].idxmax()]
    present = [p for p in PHASES if cover[p]["cells"]]
    lines = [
        "# Phase diagram of a zoo (measured)", "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} cores",
        f"- zoo: `{zoo}` (preset {manifest.get('spec', {}).get('name', '?')!r}, built {manifest.get('created', '?')} "
        f"at {str(manifest.get('git_hash', '?'))[:10]})",
        f"- command: `python examples/phase_diagram.py {' '.join(argv)}`",
        f"- plot: `{png.name}`", "",
        f"Phases present: {', '.join(present)} ({len(present)} of 5). Best cell mean test accuracy "
        f"{best['test_acc']:.3f} at width {best['capacity']:g}, lr {best['temperature']:g}, phase {best['phase']}.", "",
        "## Coverage (phase x cells x models; equal to zoo.json's `phase_coverage`)", "",
        "| phase | cells | models | mean test accuracy |", "|---|---:|---:|---:|"]
    for p in PHASES:
        acc = cells.loc[cells["phase"] == p, "test_acc"]
        lines.append(f"| {p} | {cover[p]['cells']} | {cover[p]['models']} | "
                     f"{acc.mean():.3f} |" if len(acc) else f"| {p} | 0 | 0 | - |")
    lines += ["", "## Cell phase", "", *markdown_grid(grid(cells, "phase"), str),
              "", "## Mean test accuracy", "", *markdown_grid(grid(cells, "test_acc"), lambda v: f"{v:.3f}")]
    for signal, name in SIGNALS.items():
        if signal in cells:
            lines += ["", f"## {name} (cell median)", "",
                      *markdown_grid(grid(cells, signal), lambda v: f"{v:.3g}")]
    thresholds = manifest.get("phase_thresholds")
    if thresholds:
        lines += ["", f"Thresholds (`zoo.json` `phase_thresholds`): `{json.dumps(thresholds)}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, help="a published zoo folder")
    p.add_argument("--out", default="phase_diagram.png")
    p.add_argument("--out-md", help="write the report here (markdown)")
    p.add_argument("--capacity", default="config.arch.width", help="models.parquet column for the y axis")
    p.add_argument("--temperature", default="config.train.lr", help="column for the x axis")
    args = p.parse_args(argv)

    zoo = Path(args.zoo)
    models = pd.read_parquet(zoo / "models.parquet")
    manifest = json.loads((zoo / "zoo.json").read_text())
    cells = cell_table(models, args.capacity, args.temperature)
    cover = coverage(cells)
    recorded = manifest.get("phase_coverage", {}).get("phases", {})
    mismatch = {ph: (cover[ph], recorded.get(ph)) for ph in PHASES if recorded and recorded.get(ph) != cover[ph]}
    if mismatch:
        raise SystemExit(f"phase coverage differs from zoo.json: {mismatch}")
    out = Path(args.out)
    plot(cells, out, args.capacity, args.temperature)
    text = report(zoo, cells, cover, manifest, out, argv)
    if args.out_md:
        Path(args.out_md).write_text(text)
    print(text)
    best = cells.loc[cells["test_acc"].idxmax()]
    return {"plot": out, "cells": cells, "coverage": cover, "best_phase": best["phase"], "report": text}


if __name__ == "__main__":
    main()
