"""Grokking as a phase transition in training time (Power et al. 2022): a reduced `gpt-modular` zoo (GPT
decoders on a + b mod p) trained long enough, with and without weight decay; train accuracy reaches ~1 long
before test accuracy jumps. Reads the per-checkpoint accuracies of the published zoo
(checkpoints/*.parquet) and reports, per model, the first step with train acc >= --train-at and the first
with test acc >= --test-at.

    python examples/grokking.py --out /tmp/grok-zoo [--set KEY=VALUE ...] [--plot P.png] [--out-md R.md]
    python examples/grokking.py --zoo DIR   # analyse an already published zoo

The default --set list is the run of docs/results/grokking.md (modulus 31, half of all pairs for
training, width 64, Adam lr 3e-3, batch 128, 8,000 steps, weight decay 0 vs 3e-3, 3 seeds, training metrics
only). Prints a table and one JSON line; the build's progress (stage, models, models/s, ETA) and the findings
go to stderr unless --quiet."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zoo.progress import interruptible

DEFAULT_SETS = ["task.modulus=31", "task.n_train=480", "task.n_test=481", "arch.width=64", "train.lr=0.003",
                "train.batch_size=128", "train.steps=8000", "train.checkpoints=80", "phase.seeds=[0,1,2]",
                "phase.axes=[{name='regularization',key='train.weight_decay',values=[0.0,0.003]}]",
                "metrics.hessian=false", "metrics.spectral=false", "metrics.connectivity=false", "metrics.cka=false",
                "metrics.lmc='none'"]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def first_step(steps: np.ndarray, values: np.ndarray, at: float) -> int | None:
    """The first checkpoint step where ``values`` reaches ``at`` (None if never)."""
    hit = np.flatnonzero(values >= at)
    return int(steps[hit[0]]) if len(hit) else None


def analyse(zoo: Path, train_at: float, test_at: float) -> list[dict]:
    """One record per model: its config, the first steps of train acc >= train_at and test acc >= test_at."""
    models = pd.read_parquet(zoo / "models.parquet")
    ckpt = pd.read_parquet(zoo / "checkpoints", columns=["model_id", "step", "train_acc", "test_acc", "train_loss",
                                                   "test_loss"]).sort_values(["model_id", "step"])
    records = []
    for _, m in models.sort_values(["config.train.weight_decay", "seed"]).iterrows():
        c = ckpt[ckpt["model_id"] == m["model_id"]]
        steps, tr, te = c["step"].to_numpy(), c["train_acc"].to_numpy(), c["test_acc"].to_numpy()
        s_train, s_test = first_step(steps, tr, train_at), first_step(steps, te, test_at)
        # test accuracy while train accuracy was already fit: the plateau before the jump
        plateau = te[(steps >= s_train) & (steps < s_test)] if s_train is not None and s_test is not None else \
            te[steps >= s_train] if s_train is not None else np.array([])
        records.append({"model_id": m["model_id"], "seed": int(m["seed"]),
                        "weight_decay": float(m["config.train.weight_decay"]), "width": int(m["config.arch.width"]),
                        "train_fraction": float(m["config.task.train_fraction"]),
                        "step_train": s_train, "step_test": s_test,
                        "delay": s_test - s_train if s_train is not None and s_test is not None else None,
                        "ratio": s_test / s_train if s_train and s_test is not None else None,
                        "plateau_test_acc": float(np.median(plateau)) if len(plateau) else None,
                        "final_train_acc": float(tr[-1]), "final_test_acc": float(te[-1]),
                        "max_test_acc": float(te.max()),
                        # after the jump: how often test acc stays above the threshold, and its worst dip
                        "after_jump_share": float((te[steps >= s_test] >= test_at).mean()) if s_test is not None
                        else None,
                        "after_jump_min": float(te[steps >= s_test].min()) if s_test is not None else None,
                        # of those dips, how many come with a train-accuracy dip (a loss spike, not memorization)
                        "dips": int(((steps >= s_test) & (te < test_at)).sum()) if s_test is not None else 0,
                        "dips_with_train_dip": int(((steps >= s_test) & (te < test_at) & (tr < train_at)).sum())
                        if s_test is not None else 0,
                        "steps": steps.tolist(), "train_acc": tr.tolist(), "test_acc": te.tolist()})
    return records


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wds = sorted({r["weight_decay"] for r in result["records"]})
    fig, axes = plt.subplots(1, len(wds), figsize=(4.8 * len(wds), 3.6), squeeze=False)
    for ax, wd in zip(axes[0], wds):
        for k, r in enumerate(r for r in result["records"] if r["weight_decay"] == wd):
            steps = np.maximum(r["steps"], 1)
            ax.plot(steps, r["train_acc"], color=f"C{k}", ls="--", lw=1)
            ax.plot(steps, r["test_acc"], color=f"C{k}", lw=1.5, label=f"seed {r['seed']} test (-- train)")
            for s, marker in ((r["step_train"], "v"), (r["step_test"], "^")):
                if s is not None:
                    ax.plot([max(s, 1)], [result["train_at"] if marker == "v" else result["test_at"]], marker,
                            color=f"C{k}", ms=6)
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"weight decay {wd:g}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Grokking: GPT on a + b mod {result['modulus']}, width {result['width']}; v: train acc >= "
                 f"{result['train_at']:g}, ^: test acc >= {result['test_at']:g}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _s(v) -> str:
    return "never" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.1f}"


def report(result: dict, command: str, plot_path: Path | None) -> str:
    recs = result["records"]
    lines = ["# Grokking on modular arithmetic (gpt-modular, reduced)", "",
             f"- date: {result['date']}",
             "- machine: 2-core CPU dev VM "
             f"({platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; shared with other jobs); "
             f"load average before / after: {result['loadavg_before']} / {result['loadavg_after']}; "
             f"wall time {result['wall_s']:.0f} s",
             f"- command: `{command}`",
             f"- zoo: preset `gpt-modular` with `--set` {' '.join(result['sets'])}" if result["sets"] else
             "- zoo: an existing zoo",
             f"- task: a + b mod {result['modulus']}, {result['n_train']} training pairs of {result['n_pairs']} "
             f"({100 * result['n_train'] / result['n_pairs']:.0f} %), the other {result['n_test']} for test; "
             f"GPT depth {result['depth']}, width {result['width']}, Adam lr {result['lr']:g} (weight decay as L2 in "
             f"the gradient), batch {result['batch_size']}, {result['steps']:,} steps, accuracies every "
             f"{result['every']} steps (checkpoints/*.parquet)",
             "", f"Per model: first checkpoint with train acc >= {result['train_at']:g} and with test acc >= "
             f"{result['test_at']:g}; plateau = median test acc between the two (after the train fit when the "
             "test threshold is never reached).", "",
             "| weight decay | seed | train acc >= thr at step | test acc >= thr at step | delay (steps) | "
             "ratio | test acc on the plateau | final train / test acc | best test acc | after the jump: "
             "checkpoints >= thr, lowest test acc |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        plateau = "n/a" if r["plateau_test_acc"] is None else f"{r['plateau_test_acc']:.3f}"
        lines.append(f"| {r['weight_decay']:g} | {r['seed']} | {_s(r['step_train'])} | {_s(r['step_test'])} | "
                     f"{_s(r['delay'])} | {_s(r['ratio'])} | {plateau} | {r['final_train_acc']:.3f} / "
                     f"{r['final_test_acc']:.3f} | {r['max_test_acc']:.3f} | {after(r)} |")
    lines += ["", "## Reading", ""] + [f"- {line}" for line in findings(result)]
    if plot_path is not None:
        lines += ["", f"![Grokking curves]({plot_path.name})"]
    return "\n".join(lines) + "\n"


def after(r: dict) -> str:
    if r.get("after_jump_share") is None:
        return "n/a"
    return f"{100 * r['after_jump_share']:.0f} %, {r['after_jump_min']:.3f}"


def findings(result: dict) -> list[str]:
    out = []
    for wd in sorted({r["weight_decay"] for r in result["records"]}):
        rs = [r for r in result["records"] if r["weight_decay"] == wd]
        grokked = [r for r in rs if r["step_test"] is not None]
        fit = [r for r in rs if r["step_train"] is not None]
        median_fit = _s(int(np.median([r["step_train"] for r in fit]))) if fit else "never"
        text = (f"weight decay {wd:g}: {len(fit)}/{len(rs)} models fit the training set (train acc >= "
                f"{result['train_at']:g}, median step {median_fit}); "
                f"{len(grokked)}/{len(rs)} reach test acc >= {result['test_at']:g} within {result['steps']:,} steps")
        if grokked:
            delays = [r["delay"] for r in grokked]
            ratios = [r["ratio"] for r in grokked if r["ratio"] is not None]
            text += f", {min(delays):,} to {max(delays):,} steps after the train fit"
            if ratios:
                text += f" ({min(ratios):.1f}x to {max(ratios):.1f}x the fit step)"
        plateaus = [r["plateau_test_acc"] for r in rs if r["plateau_test_acc"] is not None]
        if plateaus:
            text += f"; test acc on the plateau {min(plateaus):.2f}-{max(plateaus):.2f}"
        dips = [r for r in grokked if r.get("after_jump_min") is not None and r["after_jump_min"] < result["test_at"]]
        if dips:
            n, with_train = sum(r["dips"] for r in dips), sum(r["dips_with_train_dip"] for r in dips)
            text += (f"; after the jump {len(dips)}/{len(grokked)} models dip below the threshold again at {n} "
                     f"checkpoints (lowest test acc {min(r['after_jump_min'] for r in dips):.2f}), {with_train} of "
                     f"them with train acc < {result['train_at']:g} too: loss spikes of the optimizer, not a "
                     "return to memorization")
        out.append(text + ".")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--out", type=Path, help="build the reduced gpt-modular zoo here (resumes if present)")
    src.add_argument("--zoo", type=Path, help="analyse this published zoo instead of building one")
    ap.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                    help="replaces the default overrides (see the module docstring)")
    ap.add_argument("--train-at", type=float, default=0.99)
    ap.add_argument("--test-at", type=float, default=0.9)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--plot", type=Path, default=None, help="write the plot (PNG) here")
    ap.add_argument("--out-md", type=Path, default=None, help="write a markdown report here")
    args = ap.parse_args(argv)
    start, load_before = time.perf_counter(), loadavg()
    sets = DEFAULT_SETS if args.sets is None else args.sets
    if args.out is not None:
        from zoo.cli import main as zoo_main

        code = zoo_main(["build", "--preset", "gpt-modular", "--out", str(args.out),
                         *(["--quiet"] if args.quiet else []), *[a for s in sets for a in ("--set", s)]])
        if code != 0:
            raise SystemExit(code)
        zoo = args.out
    else:
        zoo, sets = args.zoo, []
    spec = json.loads((zoo / "zoo.json").read_text())["spec"]
    p = spec["task"]["modulus"]
    records = analyse(zoo, args.train_at, args.test_at)
    steps = records[0]["steps"]
    result = {"example": "grokking", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "zoo": str(zoo), "sets": sets, "modulus": p, "n_pairs": p * p, "n_train": spec["task"]["n_train"],
              "n_test": spec["task"]["n_test"], "width": records[0]["width"], "depth": spec["arch"]["depth"],
              "lr": spec["train"]["lr"], "batch_size": spec["train"]["batch_size"], "steps": spec["train"]["steps"],
              "every": steps[1] - steps[0] if len(steps) > 1 else None, "train_at": args.train_at,
              "test_at": args.test_at, "records": records, "loadavg_before": load_before, "loadavg_after": loadavg(),
              "wall_s": round(time.perf_counter() - start, 1)}
    if not args.quiet:
        for line in findings(result):
            print(line, file=sys.stderr)
    if args.plot is not None:
        plot(result, args.plot)
    if args.out_md is not None:
        command = "OMP_NUM_THREADS=1 python examples/grokking.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(report(result, command, args.plot))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    interruptible(main, "grokking")
