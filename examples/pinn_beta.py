"""The PINN failure transition on 1-D convection (Krishnapriyan et al. 2021): the pinn-convection preset's
models at every transport speed beta of its load axis, test error (relative L2 against the exact solution
u = sin(x - beta t)) vs beta.

    python examples/pinn_beta.py [--preset pinn-convection] [--set KEY=VALUE ...] [--fail-at 0.1]
        [--out-md docs/results/pinn_beta.md] [--plot docs/results/pinn_beta.png] [--quiet]

The models are planned, grouped and trained exactly as `zoo build` would (same model ids, seeds,
populations, `zoo.pipeline.run_population`, no metrics beyond training), each population with the
task data of its own beta, as the build loads it. A beta "fails" where the median
relative L2 error over its models is at least --fail-at. Prints a table and one JSON line; progress (beta and
width of the population in training, models, models/s, ETA) and per-beta results go to stderr unless --quiet."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from zoo.generators.sampling import group_populations, plan_models
from zoo.generators.tasks import load_task_section
from zoo.pipeline import run_population
from zoo.progress import ProgressBar, interruptible
from zoo.shards import read_shard
from zoo.spec import load_spec


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def population_data(spec, pop):
    """The task data of one population: the spec's [task] section with the population's task.* values."""
    task = spec.to_dict()["task"]
    task.update({k[5:]: v for k, v in pop.shared.items() if k.startswith("task.")})
    return load_task_section(task)


def train_all(spec, quiet: bool) -> list[dict]:
    """One record per model: config, final and per-checkpoint train loss and test relative L2."""
    plans = plan_models(spec)
    pops = group_populations(plans, spec.build.max_population)
    records = []
    with tempfile.TemporaryDirectory(prefix="pinn_beta-") as tmp, \
            ProgressBar(Path(tmp) / "progress", len(plans), desc="pinn_beta", enabled=not quiet, weights={}) as bar:
        for i, pop in enumerate(pops):
            name = f"beta {pop.shared['task.beta']:g} width {pop.shared['arch.width']}"
            bar.desc = f"pinn_beta: {name}"  # the population's stage (train) follows
            data = population_data(spec, pop)
            assert data.extras["beta"] == pop.shared["task.beta"]
            shard = Path(tmp) / f"{pop.population_id}.npz"
            t0 = time.perf_counter()
            run_population(pop, data, shard, threads=None, metrics=None,
                           progress=None if quiet else Path(tmp) / "progress" / f"{pop.population_id}.json")
            bar.finish(len(pop.members))
            meta, arrays = read_shard(shard)
            steps = [int(s) for s in meta["checkpoint_steps"]]
            for j, mid in enumerate(meta["model_ids"]):
                plan = next(p for p in pop.members if p.model_id == mid)
                rel = arrays["metric/test_rel_l2"][:, j].astype(float)
                records.append({"model_id": mid, "seed": plan.seed, "width": plan.config["arch.width"],
                                "beta": plan.config["task.beta"], "rel_l2": float(rel[-1]),
                                "train_loss": float(arrays["metric/train_loss"][-1, j]),
                                "rel_l2_curve": [float(v) for v in rel], "steps": steps})
            if not quiet:
                bar.bar.write(f"[{i + 1}/{len(pops)}] {name}: rel L2 "
                              f"{[round(r['rel_l2'], 3) for r in records[-len(pop.members):]]} "
                              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return records


def summarize(records: list[dict], fail_at: float) -> dict:
    betas = sorted({r["beta"] for r in records})
    widths = sorted({r["width"] for r in records})
    per_beta, per_cell = [], []
    for b in betas:
        rel = np.array([r["rel_l2"] for r in records if r["beta"] == b])
        loss = np.array([r["train_loss"] for r in records if r["beta"] == b])
        per_beta.append({"beta": b, "n": len(rel), "median": float(np.median(rel)), "mean": float(rel.mean()),
                         "std": float(rel.std(ddof=1)) if len(rel) > 1 else math.nan, "min": float(rel.min()),
                         "max": float(rel.max()), "train_loss_median": float(np.median(loss)),
                         "fails": bool(np.median(rel) >= fail_at), "share_failed": float((rel >= fail_at).mean())})
        for w in widths:
            cell = np.array([r["rel_l2"] for r in records if r["beta"] == b and r["width"] == w])
            per_cell.append({"beta": b, "width": w, "mean": float(cell.mean()), "min": float(cell.min()),
                             "max": float(cell.max())})
    failing = [row["beta"] for row in per_beta if row["fails"]]
    first = failing[0] if failing else None
    last_ok = max((row["beta"] for row in per_beta if not row["fails"]), default=None)
    return {"betas": betas, "widths": widths, "per_beta": per_beta, "per_cell": per_cell,
            "first_failing_beta": first, "largest_learned_beta": last_ok,
            "monotone": bool(failing == [b for b in betas if first is not None and b >= first])}


def trend(result: dict) -> list[tuple[float, float, float]]:
    """(beta, median rel. L2 at the middle checkpoint, at the last) for every failing beta."""
    out = []
    for row in result["summary"]["per_beta"]:
        curves = np.array([r["rel_l2_curve"] for r in result["records"] if r["beta"] == row["beta"]])
        if row["fails"] and curves.shape[1] > 2:
            med = np.median(curves, axis=0)
            out.append((row["beta"], float(med[len(med) // 2]), float(med[-1])))
    return out


def git_hash() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, records = result["summary"], result["records"]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
    ax = axes[0]
    for k, w in enumerate(s["widths"]):
        cells = [c for c in s["per_cell"] if c["width"] == w]
        b = np.array([c["beta"] for c in cells]) * (1.03 ** (k - 1))
        mean = np.array([c["mean"] for c in cells])
        ax.errorbar(b, mean, [mean - [c["min"] for c in cells], np.array([c["max"] for c in cells]) - mean],
                    marker="o", capsize=3, label=f"width {w}")
    ax.axhline(result["fail_at"], color="grey", ls="--", lw=0.8, label=f"fail threshold {result['fail_at']:g}")
    ax.set_xlabel("beta (transport speed)")
    ax.set_ylabel("test relative L2 error (mean, min-max over seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax = axes[1]
    cmap = plt.get_cmap("viridis")
    for k, b in enumerate(s["betas"]):
        curves = [r for r in records if r["beta"] == b]
        if not curves or curves[0]["steps"] is None:
            continue
        med = np.median([r["rel_l2_curve"] for r in curves], axis=0)
        ax.plot(curves[0]["steps"], med, color=cmap(k / max(1, len(s["betas"]) - 1)), marker=".", label=f"beta {b:g}")
    ax.set_xlabel("training step")
    ax.set_ylabel("test relative L2 (median over models)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.suptitle(f"PINN on u_t + beta u_x = 0: {result['preset']}, {result['steps']} Adam steps", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict, command: str, plot_path: Path | None) -> str:
    s = result["summary"]
    lines = ["# PINN failure transition in beta (1-D convection)", "",
             f"- date: {result['date']}",
             "- machine: 2-core CPU dev VM "
             f"({platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; shared with other jobs); "
             f"load average before / after: {result['loadavg_before']} / {result['loadavg_after']}; "
             f"wall time {result['wall_s']:.0f} s",
             f"- command: `{command}`",
             f"- setup: preset `{result['preset']}`{' with ' + ' '.join(result['sets']) if result['sets'] else ''}: "
             f"tanh MLP PINN, depth {result['depth']}, widths {s['widths']}, seeds {result['seeds']}, "
             f"{result['steps']} Adam steps (lr {result['lr']:g}, batch {result['batch_size']}), "
             f"{result['n_train']} collocation points; test = {result['n_test_grid']} grid points with the exact "
             "solution u = sin(x - beta t)",
             f"- a beta fails where the median test relative L2 error over its {s['per_beta'][0]['n']} models is "
             f">= {result['fail_at']:g}",
             "", "| beta | models | rel. L2 median | mean +- std | min | max | share of models failing | "
             "train (residual) loss, median | fails |", "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in s["per_beta"]:
        lines.append(f"| {r['beta']:g} | {r['n']} | {r['median']:.3f} | {r['mean']:.3f} +- {r['std']:.3f} | "
                     f"{r['min']:.3f} | {r['max']:.3f} | {100 * r['share_failed']:.0f} % | "
                     f"{r['train_loss_median']:.2e} | {'yes' if r['fails'] else 'no'} |")
    lines += ["", "Per width (mean relative L2 over seeds):", "",
              "| beta | " + " | ".join(f"width {w}" for w in s["widths"]) + " |",
              "|---:|" + "---:|" * len(s["widths"])]
    for b in s["betas"]:
        cells = {c["width"]: c for c in s["per_cell"] if c["beta"] == b}
        lines.append(f"| {b:g} | " + " | ".join(f"{cells[w]['mean']:.3f}" for w in s["widths"]) + " |")
    if s["first_failing_beta"] is None:
        verdict = f"No beta fails (median relative L2 < {result['fail_at']:g} everywhere)."
    else:
        verdict = (f"The PINN learns the solution up to beta = {s['largest_learned_beta']:g} and fails from beta = "
                   f"{s['first_failing_beta']:g} on" + ("" if s["monotone"] else " (not monotonically: some larger "
                                                        "beta is learned again)") + ".")
    lines += ["", "## Reading", "", verdict, ""]
    for b, half, end in trend(result):
        state = "still falling: the budget, not only the PINN, limits it" if end < 0.8 * half else "plateaued"
        lines.append(f"- beta = {b:g}: median relative L2 {half:.3f} at mid-training, {end:.3f} at the end ({state})")
    lines += ["", "## `zoo build` and the beta axis", "",
              "Before commit 69e33b9, `zoo build` loaded the task once from the spec's [task] section and handed "
              "the same data to every population, so every beta cell trained on beta = task.beta (1.0 in the "
              "preset) and a `zoo build --preset pinn-convection` showed no transition (test relative L2 0.01-0.07 "
              "in every cell; its beta = 40 models were 1.39 away from sin(x - 40 t)). Since then the build, "
              "`zoo metrics` and the studies load each population's own task data (`zoo.pipeline.TaskCache`, "
              "`Zoo.by_task`); `tests/test_pinn_beta_example.py` checks that every beta cell of a built zoo is "
              "scored against its own solution. This example trains the models exactly as the build does "
              "(`zoo.pipeline.run_population`, same model ids and seeds) with each population's own task data: "
              "`zoo build --preset pinn-convection --set train.checkpoints=10 --set phase.seeds=[0,1,2]` with the "
              "measure step off and the width axis cut to 32 gave the same test relative L2, bit for bit, for "
              "the 18 width-32 models of this "
              "table (checked at 8e61a60)."]
    if plot_path is not None:
        lines += ["", f"![PINN test error vs beta]({plot_path.name})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="pinn-convection")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="spec override, as for zoo build")
    ap.add_argument("--fail-at", type=float, default=0.1, help="relative L2 error from which a model has failed")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--plot", type=Path, default=None, help="write the plot (PNG) here")
    ap.add_argument("--out-md", type=Path, default=None, help="write a markdown report here")
    args = ap.parse_args(argv)
    spec = load_spec(args.preset, args.sets)
    if spec.task.name != "convection" or not any(a.key == "task.beta" for a in spec.phase.axes):
        ap.error(f"{args.preset}: expected a convection preset with a task.beta axis")
    start, load_before = time.perf_counter(), loadavg()
    records = train_all(spec, args.quiet)
    side = max(2, int(round(math.sqrt(spec.task.n_test))))
    result = {"example": "pinn_beta", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "preset": args.preset, "sets": args.sets, "fail_at": args.fail_at, "steps": spec.train.steps,
              "lr": spec.train.lr, "batch_size": spec.train.batch_size, "depth": spec.arch.depth,
              "seeds": list(spec.phase.seeds), "n_train": spec.task.n_train, "n_test_grid": side * side,
              "summary": summarize(records, args.fail_at), "records": records,
              "loadavg_before": load_before, "loadavg_after": loadavg(), "git": git_hash(),
              "wall_s": round(time.perf_counter() - start, 1)}
    if not args.quiet:
        for r in result["summary"]["per_beta"]:
            print(f"beta {r['beta']:5g}: rel L2 median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f})"
                  f"{'  FAILS' if r['fails'] else ''}", file=sys.stderr)
    if args.plot is not None:
        plot(result, args.plot)
    if args.out_md is not None:
        command = "OMP_NUM_THREADS=1 python examples/pinn_beta.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(report(result, command, args.plot))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    interruptible(main, "pinn_beta")
