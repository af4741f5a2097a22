"""Weight matching vs the straight-through estimator for merging k = 2 and k >= 3 models, per cell.

Ito et al. (2024) report that weight matching (WM) merges better than STE, the more so for k >= 3
models. This runs (or resumes) the ``merge`` study on a published zoo with its default alignments (the
table ``zoo study merge ZOO_DIR`` writes, shared with examples/merge_width.py and
examples/phase_downstream.py), compares the naive, WM and STE merges, prints merged test accuracy per
cell and k, and writes a report with the date, the machine, the command, the measured numbers and a plot
(no number in the report is typed by hand).

    python examples/merge_wm_vs_ste.py ZOO_DIR [--ks 2 3] [--groups 4] [--ste-steps 200]
        [--out docs/results/merge_wm_vs_ste.md] [--quiet]

The study's progress (stage, models, models/s, ETA) goes to stderr unless --quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from zoo.progress import interruptible
from zoo.studies.runner import run_study, study_files


def compare(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, k, fix): mean merged accuracy of naive, WM and STE over the cell's groups."""
    keys = ["cell_id", "k", "fix"]
    labels = [c for c in ("cell_phase", "config.arch.width", "config.train.lr") if c in rows]
    table = rows.pivot_table(index=keys, columns="method", values="merged_acc", aggfunc="mean")
    table["member_mean_acc"] = rows.groupby(keys)["member_mean_acc"].mean()
    table["wm_minus_ste"] = table["weight"] - table["ste"]
    return table.join(rows.groupby(keys)[labels].first()).reset_index()


def summary(table: pd.DataFrame) -> list[dict]:
    """Per (fix, k >= 3 or not): cells, mean WM - STE, and in how many cells WM beat STE."""
    out = []
    for (fix, many), group in table.groupby(["fix", table["k"] >= 3]):
        out.append({"fix": fix, "k": ">=3" if many else "2", "cells": len(group),
                    "wm_acc": group["weight"].mean(), "ste_acc": group["ste"].mean(),
                    "naive_acc": group["naive"].mean(), "wm_minus_ste": group["wm_minus_ste"].mean(),
                    "wm_wins": int((group["wm_minus_ste"] > 0).sum()),
                    "ste_wins": int((group["wm_minus_ste"] < 0).sum())})
    return out


def ste_budget(rows: pd.DataFrame, steps: int) -> dict:
    """When the STE search found the permutation it kept: median step and the share found in its last half."""
    ste = rows[(rows["method"] == "ste") & (rows["fix"] == "none")]
    if "ste_best_step" not in ste or ste["ste_best_step"].isna().all():
        return {}
    best = ste["ste_best_step"].dropna()
    return {"median_step": float(best.median()), "late_share": float((best > steps / 2).mean()), "groups": len(best)}


def plot(table: pd.DataFrame, path: Path) -> None:
    """Left: WM vs STE merged accuracy per cell (k = 2 and k >= 3, no fix); right: mean over cells per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = table[table["fix"] == "none"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for many, marker, label in ((False, "o", "k = 2"), (True, "^", "k >= 3")):
        part = plain[(plain["k"] >= 3) == many]
        left.scatter(part["ste"], part["weight"], marker=marker, s=22, label=label)
    lim = [float(plain[["ste", "weight"]].min().min()) - 0.02, float(plain[["ste", "weight"]].max().max()) + 0.02]
    left.plot(lim, lim, color="grey", linestyle=":", linewidth=1)
    left.set_xlabel("STE merged test accuracy (cell mean)")
    left.set_ylabel("WM merged test accuracy (cell mean)")
    left.set_title("above the diagonal: WM better", fontsize=9)
    left.legend(fontsize=8)
    methods = [m for m in ("naive", "weight", "ste") if m in plain]
    groups = [(">=3" if many else "2", part) for many, part in plain.groupby(plain["k"] >= 3)]
    for i, method in enumerate(methods):
        means = [part[method].mean() for _, part in groups]
        errs = [part[method].std(ddof=1) for _, part in groups]
        right.bar([j + 0.25 * i for j in range(len(groups))], means, 0.25, yerr=errs, capsize=3,
                  label={"weight": "WM", "ste": "STE"}.get(method, method))
    right.set_xticks([j + 0.25 for j in range(len(groups))], [f"k {k}" for k, _ in groups])
    right.set_ylabel("merged test accuracy (mean +- std over cells)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def report(zoo: Path, command: str, table: pd.DataFrame, lines: list[dict], meta: dict, png: str = "",
           budget: dict | None = None) -> str:
    def fmt(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cols = [c for c in ("cell_phase", "config.arch.width", "config.train.lr", "k", "fix", "member_mean_acc",
                        "naive", "weight", "ste", "wm_minus_ste") if c in table]
    head = "| " + " | ".join(c.removeprefix("config.") for c in cols) + " |"
    rows = ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in table.to_dict("records")]
    summ = ["| fix | k | cells | naive | WM | STE | WM - STE | WM wins | STE wins |", "|" + "---|" * 9]
    summ += [f"| {s['fix']} | {s['k']} | {s['cells']} | {s['naive_acc']:.4f} | {s['wm_acc']:.4f} | {s['ste_acc']:.4f}"
             f" | {s['wm_minus_ste']:+.4f} | {s['wm_wins']} | {s['ste_wins']} |" for s in lines]
    verdict = []
    for s in lines:
        if s["fix"] != "none":
            continue
        side = "WM" if s["wm_minus_ste"] > 0 else "STE" if s["wm_minus_ste"] < 0 else "neither"
        verdict.append(f"k {s['k']}: {side} merges better on average ({s['wm_minus_ste']:+.4f} test accuracy, "
                       f"WM better in {s['wm_wins']} of {s['cells']} cells)")
    return "\n".join([
        "# Merging: weight matching vs STE (k = 2 and k >= 3)", "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: 2-core CPU dev VM ({platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})",
        f"- zoo: `{zoo}` ({meta.get('zoo_spec', '')})",
        f"- command: `{command}`",
        f"- merge study options: `{json.dumps(meta['options'])}`; study wall time {meta['wall_time_s']} s",
        "",
        "Claim tested (Ito et al. 2024): weight matching merges better than STE, especially for k >= 3.",
        "Measured (fix = none, merged test accuracy): " + "; ".join(verdict) + ".",
        "",
        "How the two differ here: WM is weight matching of member 1 to member 0 (k = 2) or MergeMany (k >= 3).",
        "STE starts from weight matching of every member to member 0, learns on the merged model's training",
        "loss, and keeps the permutation with the lowest loss on a fixed 1024-sample slice of the training",
        "set, so on that slice it is never worse than its start. Both merge the aligned members by a plain",
        "mean; `repair` rows add k-way REPAIR on 512 training samples.",
        "",
        *([f"STE budget: the kept permutation was found at step {budget['median_step']:.0f} (median over "
           f"{budget['groups']} groups) of {meta['options']['ste_steps']}; {budget['late_share']:.0%} of the groups "
           "found it in the second half of the search, so a longer search could still move STE's numbers.", ""]
          if budget else []),
        "## Summary (mean over cells)", "", *summ, "",
        *([f"![WM vs STE merged accuracy]({png})", ""] if png else []),
        "## Per cell (mean over the cell's groups)", "", head, "|" + "---|" * len(cols), *rows, "",
    ])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--ste-steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("docs/results/merge_wm_vs_ste.md"))
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    overrides = [f"study.ks={json.dumps(args.ks)}", f"study.groups={args.groups}", f"study.ste_steps={args.ste_steps}"]
    entry = run_study(args.zoo, "merge", overrides, progress=not args.quiet)
    rows = pd.read_parquet(args.zoo / study_files("merge")[0])
    table = compare(rows)
    lines = summary(table)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(pd.DataFrame(lines).to_string(index=False, float_format=lambda v: f"{v:+.4f}"))
    spec = json.loads((args.zoo / "zoo.json").read_text())["spec"]
    n_models = len(pd.read_parquet(args.zoo / "models.parquet", columns=["model_id"]))
    meta = {**entry, "zoo_spec": f"preset {spec.get('name')!r}, {n_models} models"}
    command = "python " + " ".join([sys.argv[0] if argv is None else "examples/merge_wm_vs_ste.py",
                                    *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(table, png)
    budget = ste_budget(rows, entry["options"]["ste_steps"])
    args.out.write_text(report(args.zoo, command, table, lines, meta, png.name, budget), encoding="utf-8")
    result = {"summary": lines, "out": str(args.out), "plot": str(png), "ste_budget": budget,
              "resumed": entry["resumed"]}
    print(json.dumps({"example": "merge_wm_vs_ste", **result}, default=str))
    return result


if __name__ == "__main__":
    interruptible(main, "merge_wm_vs_ste")
