"""Barriers before and after permutation alignment as width grows (Entezari et al. 2022; Ainsworth et
al. 2023; Jordan et al. 2023): MNIST-1D MLPs (depth 2) at several widths, several seeds each, same
hyperparameters; all pairs per width, every alignment of ``zoo.metrics.lmc`` (none, weight matching,
activation matching, weight matching + REPAIR).

    python examples/lmc_width.py [--widths 8 32 128 512] [--steps 2000] [--seeds 4] [--quiet]
        [--out-md docs/results/lmc_width.md] [--plot docs/results/lmc_width.png]

Per width it reports the mean, the sample standard deviation and a 95 % confidence interval (Student t,
n_pairs - 1 degrees of freedom) over the seed pairs of the ``max`` barrier. With s seeds there are
s (s - 1) / 2 pairs; pairs sharing a model are not independent, so the interval is optimistic (the
per-seed spread of the train loss is printed too). Prints a table and one JSON line; progress (stage,
models, models/s, ETA) on stderr unless --quiet."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from zoo.functional import from_flat
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import load_task
from zoo.generators.tasks.objectives import Classification
from zoo.metrics.lmc import ALIGNMENTS, lmc_pairs
from zoo.progress import ProgressBar, interruptible

SHORT = {"none": "naive", "weight": "matched", "activation": "activation", "weight+repair": "repair"}
COLUMNS = (("barrier_max.test.err", "barrier_test_err"), ("barrier_max.train.loss", "barrier_train_loss"))


def t_quantile(n: int) -> float:
    """Two-sided 95 % Student-t quantile with n - 1 degrees of freedom (nan for n < 2)."""
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def summarize(values) -> dict:
    """mean, sample std (ddof 1), 95 % CI half-width and n of a 1-D sample."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    return {"mean": float(v.mean()), "std": std, "ci95": t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan,
            "n": n}


def width_row(width: int, res, table) -> dict:
    """One width's numbers: model-level train loss / test error, pair-level barriers per alignment."""
    train_loss = res.metrics["train_loss"][-1].astype(float)
    test_err = 1 - res.metrics["test_acc"][-1].astype(float)
    row = {"width": width, "n_models": len(train_loss), "n_pairs": int((table["alignment"] == "none").sum()),
           "train_loss": float(train_loss.mean()), "train_loss_std": float(train_loss.std(ddof=1)),
           "test_err": float(test_err.mean()), "test_err_std": float(test_err.std(ddof=1))}
    naive = table[table["alignment"] == "none"].sort_values("pair_index")
    for alignment, short in SHORT.items():
        sub = table[table["alignment"] == alignment].sort_values("pair_index")
        if sub.empty:
            continue
        for col, key in COLUMNS:
            s = summarize(sub[col])
            row[f"{short}_{key}"] = s["mean"]
            row[f"{short}_{key}_std"] = s["std"]
            row[f"{short}_{key}_ci95"] = s["ci95"]
            row[f"{short}_{key}_pairs"] = [float(x) for x in sub[col]]
        row[f"{short}_l2"] = float(sub["l2"].mean())
        if short != "naive":  # per pair: the share of the raw test-error barrier that alignment removes
            ratio = 1 - sub["barrier_max.test.err"].to_numpy() / np.maximum(naive["barrier_max.test.err"].to_numpy(),
                                                                            1e-12)
            s = summarize(ratio)
            row[f"{short}_removed_test_err"], row[f"{short}_removed_test_err_std"] = s["mean"], s["std"]
    return row


def fmt(row: dict, key: str) -> str:
    """'mean +- ci95' of a pair-level quantity."""
    return f"{row[key]:.3f} +- {row[key + '_ci95']:.3f}"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    widths = [r["width"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for ax, (_, key), label in zip(axes, COLUMNS, ("test-error barrier", "train-loss barrier")):
        for i, (short, name, c) in enumerate((("naive", "raw pair", "C0"), ("matched", "weight matching", "C3"),
                                              ("activation", "activation matching", "C2"),
                                              ("repair", "weight matching + REPAIR", "C1"))):
            if f"{short}_{key}" not in rows[0]:
                continue
            x = [w * (1.04 ** (i - 1.5)) for w in widths]  # small offsets so error bars do not overlap
            ax.errorbar(x, [r[f"{short}_{key}"] for r in rows], [r[f"{short}_{key}_ci95"] for r in rows],
                        marker="o", capsize=3, color=c, label=name)
            for xi, r in zip(x, rows):  # the individual pairs, faint
                ax.scatter([xi] * len(r[f"{short}_{key}_pairs"]), r[f"{short}_{key}_pairs"], s=6, color=c,
                           alpha=0.3, linewidths=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.set_xlabel("width (hidden units per layer)")
        ax.set_ylabel(f"{label} (mean, 95% CI over pairs)")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"LMC barrier vs width: MNIST-1D MLPs, {result['seeds']} seeds ({result['pairs_per_width']} pairs) "
                 f"per width, {result['steps']} SGD steps", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict, command: str, plot_path: Path | None) -> str:
    rows = result["rows"]
    lines = ["# LMC barrier after weight matching vs width", "",
             f"- date: {result['date']}",
             "- machine: 2-core CPU dev VM "
             f"({platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; shared with other jobs); "
             f"load average before / after: {result['loadavg_before']} / {result['loadavg_after']}; "
             f"wall time {result['wall_s']:.0f} s",
             f"- command: `{command}`",
             f"- setup: MNIST-1D (4,000 train / 1,000 test), MLP depth 2, SGD lr 0.05, batch 64, "
             f"{result['steps']} steps; {result['seeds']} seeds per width (seeds 0..{result['seeds'] - 1}), all "
             f"{result['pairs_per_width']} pairs per width; barrier = `max` barrier on 11 interpolation points "
             "(`zoo.metrics.lmc.lmc_pairs`)",
             "- statistics: mean +- 95 % confidence interval over pairs (Student t, n_pairs - 1 d.o.f.); std = sample "
             "standard deviation over pairs. Pairs that share a seed are correlated, so the intervals are "
             "somewhat optimistic; the per-pair values are in the JSON line the script prints and as dots in the plot.",
             "", "## Test-error barrier (fraction of test points)", "",
             "| width | train loss (mean +- std over seeds) | test error | raw pair | weight matching | "
             "activation matching | weight matching + REPAIR | share removed by weight matching "
             "(mean +- std over pairs) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['width']} | {r['train_loss']:.3f} +- {r['train_loss_std']:.3f} | "
                     f"{r['test_err']:.3f} +- {r['test_err_std']:.3f} | {fmt(r, 'naive_barrier_test_err')} | "
                     f"{fmt(r, 'matched_barrier_test_err')} | {fmt(r, 'activation_barrier_test_err')} | "
                     f"{fmt(r, 'repair_barrier_test_err')} | {100 * r['matched_removed_test_err']:.0f} % +- "
                     f"{100 * r['matched_removed_test_err_std']:.0f} % |")
    lines += ["", "## Train-loss barrier", "",
              "| width | raw pair | std | weight matching | std | activation matching | weight matching + REPAIR |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['width']} | {fmt(r, 'naive_barrier_train_loss')} | "
                     f"{r['naive_barrier_train_loss_std']:.3f} | "
                     f"{fmt(r, 'matched_barrier_train_loss')} | {r['matched_barrier_train_loss_std']:.3f} | "
                     f"{fmt(r, 'activation_barrier_train_loss')} | {fmt(r, 'repair_barrier_train_loss')} |")
    lines += ["", "## Reading", ""] + [f"- {line}" for line in findings(result)]
    if plot_path is not None:
        lines += ["", f"![LMC barrier vs width]({plot_path.name})"]
    return "\n".join(lines) + "\n"


def findings(result: dict) -> list[str]:
    """What the numbers say, computed from them (so the report cannot drift from the table)."""
    rows = result["rows"]
    lo, hi = rows[0], rows[-1]
    key = "barrier_test_err"

    def interval(r, short):
        return r[f"{short}_{key}"] - r[f"{short}_{key}_ci95"], r[f"{short}_{key}"] + r[f"{short}_{key}_ci95"]

    separated = interval(hi, "matched")[1] < interval(hi, "naive")[0]
    out = [f"At the widest width ({hi['width']}) weight matching lowers the test-error barrier from "
           f"{fmt(hi, 'naive_' + key)} to {fmt(hi, 'matched_' + key)} (95 % intervals "
           f"{'disjoint' if separated else 'overlapping'}); it removes {100 * hi['matched_removed_test_err']:.0f} % of "
           f"the raw barrier there against {100 * lo['matched_removed_test_err']:.0f} % at width {lo['width']}."]
    matched = [r[f"matched_{key}"] for r in rows]
    peak = int(np.argmax(matched))
    falls = all(a >= b for a, b in zip(matched[peak:], matched[peak + 1:]))
    out.append(f"The matched test-error barrier peaks at width {rows[peak]['width']} ({matched[peak]:.3f}) and "
               + ("falls monotonically from there to " if falls else "does not fall monotonically to ")
               + f"{matched[-1]:.3f} at width {hi['width']}"
               + (f" (its 95 % interval lies below the peak's: "
                  f"{'yes' if interval(hi, 'matched')[1] < interval(rows[peak], 'matched')[0] else 'no'})."
                  if peak < len(rows) - 1 else "."))
    if peak > 0:
        narrow = ", ".join(str(r["width"]) for r in rows[:peak])
        losses = ", ".join(f"{r['train_loss']:.2f}" for r in rows[:peak])
        out.append(f"Narrower nets ({narrow}) underfit (train loss {losses}): their raw barrier is "
                   "smaller too, so the matched barrier is not monotone over the whole range.")
    return out


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 32, 128, 512])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=4, help="models per width (all pairs are measured)")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--plot", type=Path, default=None, help="write the plot (PNG) here")
    ap.add_argument("--out-md", type=Path, default=None, help="write a markdown report here")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error("--seeds must be >= 2 (barriers are measured between pairs)")
    start = time.perf_counter()
    load_before = loadavg()
    data = load_task("mnist1d", args.n_train, args.n_test, 42)
    splits = {"train": (torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)),
              "test": (torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))}
    probe = splits["train"][0][:512]
    pairs = torch.tensor([(i, j) for i in range(args.seeds) for j in range(i + 1, args.seeds)])
    rows = []
    with ProgressBar(None, len(args.widths) * args.seeds, desc="lmc_width", enabled=not args.quiet) as bar:
        bar.write(f"{'width':>5} {'train loss':>10} | test-error barrier (mean +- 95% CI over pairs): naive  matched  "
                  "activation  repair")
        for width in args.widths:
            build = lambda w=width: build_model("mlp", in_dim=40, out_dim=10, width=w, depth=2)  # noqa: E731
            members = [Member(f"w{width}-{s}", seed=s, lr=0.05) for s in range(args.seeds)]
            with bar.track(args.seeds) as unit:  # train (per step), then measure the pairs
                res = train_population(build, members, data, TrainConfig(
                    steps=args.steps, batch_size=64, checkpoint_steps=[args.steps],
                    on_step=lambda k: unit.report("train", k, args.steps)))
                unit.report("measure", 0, 1)
                params, buffers = from_flat(torch.from_numpy(res.weights[-1]), res.layout)
                table, _ = lmc_pairs(build(), Classification(), params, buffers, pairs, splits, probe,
                                     alignments=ALIGNMENTS, n_points=11, layerwise=False)
            r = width_row(width, res, table)
            rows.append(r)
            bar.write(f"{width:5d} {r['train_loss']:10.3f} | " + "  ".join(
                fmt(r, f"{s}_barrier_test_err") for s in ("naive", "matched", "activation", "repair")))
    result = {"example": "lmc_width", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "steps": args.steps, "seeds": args.seeds, "pairs_per_width": len(pairs),
              "loadavg_before": load_before, "loadavg_after": loadavg(),
              "wall_s": round(time.perf_counter() - start, 1), "rows": rows}
    if args.plot is not None:
        plot(result, args.plot)
    if args.out_md is not None:
        command = "OMP_NUM_THREADS=1 python examples/lmc_width.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(report(result, command, args.plot))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    interruptible(main, "lmc_width")
