"""Does the loss-landscape phase predict downstream behaviour (Yang et al. 2021; the reference phase zoo)?

Runs (or resumes) all five studies on a published zoo with their default options (what ``zoo study NAME
ZOO_DIR`` writes) and tests, per phase of the cell (``cell_phase`` of models.parquet), the claims the
taxonomy makes about what phases are for:

- C1 ensembling gains less where the members are functionally similar (high CKA; IV-B vs IV-A);
- C2 merging works only in well-connected phases (IV: mc ~ 0), not where a barrier separates the
  models (I, III);
- C3 flat, low-loss phases (III, IV) tolerate pruning better than sharp, high-loss ones (I, II);
- C4 models of the low-loss phases (III, IV) transfer best to a related task (gain over scratch);
- C5 models of the low-loss phases (III, IV) are the most robust to input shifts.

Each claim gets a number per phase, a test (Spearman correlation or Mann-Whitney U over cells, one
value per cell so seeds are not counted as independent), a verdict, and beside it the Spearman
correlation of the same outcome with the cell's test accuracy: phases are largely a function of width
and learning rate, so a phase effect that is only an accuracy effect is reported as such. Phases absent
from the zoo make a claim "not testable", never "reproduced". Writes a report (date, machine, command,
numbers, plot); no number in it is typed by hand.

    python examples/phase_downstream.py ZOO_DIR [--set STUDY:study.key=value ...]
        [--out docs/results/phase_downstream.md] [--quiet]

Each study's progress (study i of 5, then its stage, models, models/s, ETA) goes to stderr unless --quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from zoo.progress import interruptible
from zoo.studies.runner import read_metadata, run_study, study_files

STUDIES = ("ensemble", "merge", "prune", "finetune", "shift")
PHASES = ("I", "II", "III", "IV-A", "IV-B")
LOW_LOSS, HIGH_LOSS = ("III", "IV-A", "IV-B"), ("I", "II")
ALPHA = 0.05


# ---------------------------------------------------------------- per-cell outcomes

def cell_outcomes(tables: dict[str, pd.DataFrame], models: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its phase, accuracy, connectivity, CKA and each study's outcome (cell means)."""
    ok = models[models["status"] == "ok"]
    cells = ok.groupby("cell_id").agg(phase=("cell_phase", "first"), test_acc=("test_acc", "mean"),
                                      mc=("connectivity.mc", "mean"), cka=("similarity.cka", "mean"),
                                      sharpness=("hessian.trace", "median"))
    cells["phase"] = cells["phase"].fillna("unknown").astype(str)
    ens = tables["ensemble"]
    ens = ens[ens["kind"] == "cell"]
    cells["ensemble_gain"] = ens.groupby("cell_id")["gain"].mean()
    cells["ensemble_members_cka"] = ens.groupby("cell_id")["members_cka"].mean()
    merge = tables["merge"]
    plain = merge[(merge["fix"] == "none") & (merge["k"] == 2)]
    for method, name in (("weight", "merge_wm_gap"), ("naive", "merge_naive_gap")):
        cells[name] = plain[plain["method"] == method].groupby("cell_id")["acc_gap"].mean()
    cells["merge_wm_barrier"] = plain[plain["method"] == "weight"].groupby("cell_id")["barrier_mid.test.loss"].mean()
    prune = tables["prune"]
    top = prune["sparsity"].max()
    crit = prune.groupby("model_id")[["critical_sparsity", "cell_id"]].first()
    crit["critical_sparsity"] = crit["critical_sparsity"].fillna(np.nextafter(top, 1))  # never fell: above the grid
    cells["prune_critical_sparsity"] = crit.groupby("cell_id")["critical_sparsity"].mean()
    s90 = prune[np.isclose(prune["sparsity"], _nearest(prune["sparsity"], 0.9))]
    cells["prune_retained_at_0.9"] = s90.groupby("cell_id")["retained"].mean()
    ft = tables["finetune"]
    cells["finetune_gain"] = ft.groupby("cell_id")["gain"].mean()
    cells["finetune_acc"] = ft.groupby("cell_id")["finetuned_acc"].mean()
    shift = tables["shift"]
    for kind, target, name in (("noise", 1.0, "shift_noise_retained"), ("translate", 4, "shift_translate_retained")):
        part = shift[shift["shift"] == kind]
        if len(part):
            part = part[np.isclose(part["strength"], _nearest(part["strength"], target))]
            cells[name] = (part["test_acc"] / part["clean_acc"]).groupby(part["cell_id"]).mean()
    return cells


def _nearest(values: pd.Series, target: float) -> float:
    v = np.unique(values.to_numpy(float))
    return float(v[np.argmin(np.abs(v - target))])


# ---------------------------------------------------------------- claims

def _spearman(x: pd.Series, y: pd.Series) -> tuple[float, float, int]:
    ok = x.notna() & y.notna()
    if ok.sum() < 4 or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return np.nan, np.nan, int(ok.sum())
    r = stats.spearmanr(x[ok], y[ok])
    return float(r.statistic), float(r.pvalue), int(ok.sum())


def _groups_test(cells: pd.DataFrame, col: str, better: tuple, worse: tuple) -> dict:
    """Mann-Whitney U (one-sided: ``better`` phases' cells above ``worse`` phases') on one value per cell."""
    a = cells.loc[cells["phase"].isin(better), col].dropna()
    b = cells.loc[cells["phase"].isin(worse), col].dropna()
    out = {"better": "+".join(p for p in better if p in set(cells["phase"])) or "-", "worse": "+".join(
        p for p in worse if p in set(cells["phase"])) or "-", "n_better": len(a), "n_worse": len(b),
        "mean_better": float(a.mean()) if len(a) else np.nan, "mean_worse": float(b.mean()) if len(b) else np.nan}
    out["p"] = float(stats.mannwhitneyu(a, b, alternative="greater").pvalue) if len(a) and len(b) else np.nan
    return out


def claims(cells: pd.DataFrame, mc_tolerance: float | None = None) -> list[dict]:
    """The five claims' tests and verdicts; ``mc_tolerance``: the zoo's |mc| bound for "connected"."""
    present = set(cells["phase"])
    out = []

    # C1: ensembling gains less where CKA is high
    rho, p, n = _spearman(cells["ensemble_members_cka"], cells["ensemble_gain"])
    acc_rho, _, _ = _spearman(cells["test_acc"], cells["ensemble_gain"])
    ok = np.isfinite(rho) and rho < 0 and p < ALPHA
    out.append({"claim": "C1 ensembling gains less where CKA is high", "outcome": "ensemble_gain",
                "test": f"Spearman rho(members' CKA, gain) = {rho:+.3f} (p = {p:.3g}, {n} cells)",
                "verdict": "reproduced" if ok else "not reproduced",
                "note": "IV-B (the high-CKA phase) is absent: the IV-A vs IV-B contrast is not testable"
                        if "IV-B" not in present else "", "acc_rho": acc_rho})

    # C2: merging works only in well-connected phases (IV)
    four = tuple(p for p in ("IV-A", "IV-B") if p in present)
    rest = tuple(p for p in ("I", "II", "III") if p in present)
    g = _groups_test(cells, "merge_wm_gap", four, rest) if four else None
    rho_mc, p_mc, n_mc = _spearman(cells["mc"], cells["merge_wm_gap"])
    acc_rho, _, _ = _spearman(cells["test_acc"], cells["merge_wm_gap"])
    if g is None:
        verdict, test = "not testable", "no phase IV cells"
    else:
        best = cells.groupby("phase")["merge_wm_gap"].mean().idxmax()
        verdict = "reproduced" if best in four and g["p"] < ALPHA else "not reproduced"
        test = (f"WM merge gap, phase {g['better']} {g['mean_better']:+.4f} ({g['n_better']} cells) vs "
                f"{g['worse']} {g['mean_worse']:+.4f} ({g['n_worse']} cells), Mann-Whitney p = {g['p']:.3g}; "
                f"best phase {best}; rho(mc, gap) = {rho_mc:+.3f} (p = {p_mc:.3g}, {n_mc} cells)")
    note = ""
    if four:
        mc = cells.loc[cells["phase"].isin(four), "mc"].mean()
        note = (f"phase IV cells' mean mc {mc:+.3f}" + (f" (the zoo's |mc| tolerance for 'connected' is "
                                                          f"{mc_tolerance:.3f}: these cells have a bump, not mc ~ 0)"
                                                          if mc_tolerance is not None and abs(mc) > mc_tolerance
                                                          else ""))
    out.append({"claim": "C2 merging works only in well-connected phases (IV)", "outcome": "merge_wm_gap",
                "test": test, "verdict": verdict, "note": note, "acc_rho": acc_rho})

    # C3 - C5: low-loss (flat) phases do better
    for name, col, what in (("C3 flat, low-loss phases tolerate pruning better", "prune_critical_sparsity",
                             "critical sparsity"),
                            ("C4 low-loss phases transfer best to a related task", "finetune_gain",
                             "fine-tuned minus scratch accuracy"),
                            ("C5 low-loss phases are the most robust to input shifts", "shift_noise_retained",
                             "accuracy retained under noise (std 1)")):
        acc_rho, _, _ = _spearman(cells["test_acc"], cells[col]) if col in cells else (np.nan, 0, 0)
        lo, hi = tuple(p for p in LOW_LOSS if p in present), tuple(p for p in HIGH_LOSS if p in present)
        if col not in cells or not lo or not hi:
            out.append({"claim": name, "outcome": col, "test": "phases missing", "verdict": "not testable",
                        "note": "", "acc_rho": acc_rho})
            continue
        g = _groups_test(cells, col, lo, hi)
        ok = g["mean_better"] > g["mean_worse"] and g["p"] < ALPHA
        out.append({"claim": name, "outcome": col, "verdict": "reproduced" if ok else "not reproduced",
                    "test": f"{what}: {g['better']} {g['mean_better']:+.4f} ({g['n_better']} cells) vs "
                            f"{g['worse']} {g['mean_worse']:+.4f} ({g['n_worse']} cells), "
                            f"Mann-Whitney p = {g['p']:.3g}",
                    "note": "", "acc_rho": acc_rho})
    return out


# ---------------------------------------------------------------- report

def per_phase(cells: pd.DataFrame) -> pd.DataFrame:
    cols = ["test_acc", "mc", "cka", "ensemble_gain", "ensemble_members_cka", "merge_naive_gap", "merge_wm_gap",
            "merge_wm_barrier", "prune_critical_sparsity", "prune_retained_at_0.9", "finetune_gain", "finetune_acc",
            "shift_noise_retained", "shift_translate_retained"]
    cols = [c for c in cols if c in cells]
    table = cells.groupby("phase")[cols].mean()
    table.insert(0, "cells", cells.groupby("phase").size())
    order = [p for p in (*PHASES, "unknown") if p in table.index]
    return table.loc[order]


def plot(cells: pd.DataFrame, tables: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {p: f"C{i}" for i, p in enumerate((*PHASES, "unknown"))}
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    (a, b, c), (d, e, f) = axes
    for phase, g in cells.groupby("phase"):
        a.scatter(g["ensemble_members_cka"], g["ensemble_gain"], color=colours[phase], label=phase, s=20)
        f.scatter(g["test_acc"], g["merge_wm_gap"], color=colours[phase], label=phase, s=20)
    a.set_xlabel("members' logit CKA (cell mean)")
    a.set_ylabel("ensemble gain over mean member")
    a.set_title("C1 ensembling vs CKA")
    a.legend(fontsize=7, title="phase")
    order = [p for p in (*PHASES, "unknown") if p in set(cells["phase"])]
    for ax, col, title in ((b, "merge_wm_gap", "C2 WM merge (k = 2) - endpoints"),
                           (d, "finetune_gain", "C4 fine-tuned - scratch accuracy"),
                           (e, "shift_noise_retained", "C5 accuracy retained, noise std 1")):
        if col not in cells:
            ax.set_visible(False)
            continue
        for i, phase in enumerate(order):
            v = cells.loc[cells["phase"] == phase, col].dropna()
            ax.scatter(np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), v, color=colours[phase], s=18)
            ax.errorbar(i + 0.3, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else 0, color="k", marker="_",
                        capsize=3)
        ax.axhline(0 if col.endswith(("gap", "gain")) else 1, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("phase (one point per cell; bar: mean +- std)")
        ax.set_title(title)
    prune = tables["prune"].join(cells["phase"].rename("phase_of_cell"), on="cell_id")
    for phase, g in prune.groupby("phase_of_cell"):
        curve = g.groupby("sparsity")["retained"].mean()
        c.plot(curve.index, curve.to_numpy(), marker="o", color=colours.get(phase, "k"), label=phase)
    c.axhline(0.9, color="grey", linestyle=":")
    c.set_xlabel("sparsity")
    c.set_ylabel("accuracy retained (no fine-tune)")
    c.set_title("C3 pruning by phase")
    c.legend(fontsize=7, title="phase")
    f.set_xlabel("cell test accuracy")
    f.set_ylabel("WM merge gap (k = 2)")
    f.set_title("the accuracy confound: merge gap vs accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def report(zoo: Path, command: str, cells: pd.DataFrame, table: pd.DataFrame, results: list[dict], meta: dict,
           png: str) -> str:
    counts = ", ".join(f"{p}: {n}" for p, n in table["cells"].items())
    missing = [p for p in PHASES if p not in table.index]
    head = "| phase | " + " | ".join(table.columns) + " |"
    rows = [head, "|" + "---|" * (len(table.columns) + 1)]
    rows += [f"| {p} | " + " | ".join(str(int(v)) if c == "cells" else f"{v:+.4f}" if np.isfinite(v) else "–"
                                      for c, v in r.items()) + " |" for p, r in table.iterrows()]
    verdicts = ["| claim | test (one value per cell) | verdict | rho(outcome, cell test acc) | note |",
                "|---|---|---|---|---|"]
    verdicts += [f"| {r['claim']} | {r['test']} | **{r['verdict']}** | {r['acc_rho']:+.3f} | {r['note']} |"
                 for r in results]
    reproduced = [r["claim"].split()[0] for r in results if r["verdict"] == "reproduced"]
    not_rep = [r["claim"].split()[0] for r in results if r["verdict"] == "not reproduced"]
    untestable = [r["claim"].split()[0] for r in results if r["verdict"] == "not testable"]
    return "\n".join([
        "# Does the phase predict downstream behaviour? (Yang et al. 2021; the reference phase zoo)", "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: 2-core CPU dev VM ({platform.platform()}, {os.cpu_count()} CPUs, python "
        f"{platform.python_version()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})",
        f"- zoo: `{zoo}` ({meta['zoo_spec']})",
        f"- command: `{command}`",
        "- studies (options; study wall time): " + "; ".join(
            f"{n} `{json.dumps(m['options'])}` {m['wall_time_s']} s" for n, m in meta["studies"].items()),
        f"- cells per phase (`cell_phase`): {counts}" + (f"; absent: {', '.join(missing)}" if missing else ""),
        "",
        f"Summary: reproduced {', '.join(reproduced) or 'none'}; not reproduced {', '.join(not_rep) or 'none'}; "
        f"not testable {', '.join(untestable) or 'none'} (significance level {ALPHA}, one-sided where a direction "
        "is claimed). The last column is the Spearman correlation of the same outcome with the cells' test "
        "accuracy: where it is as strong as the phase contrast, the phase adds little beyond how well the cell "
        "trained.", "",
        *verdicts, "",
        "## Outcomes per phase (mean over the phase's cells)", "",
        "`mc` Bezier mode connectivity (< 0: a barrier), `cka` same-cell logit CKA (models.parquet); "
        "`ensemble_gain` accuracy of the logit-averaged ensemble of k seeds of a cell minus its mean member "
        "(k = 2..n), `ensemble_members_cka` their CKA on the test set; `merge_*_gap` merged (k = 2) minus mean "
        "endpoint test accuracy, naive or weight-matched (WM), `merge_wm_barrier` the WM midpoint's test-loss "
        "barrier; `prune_critical_sparsity` first sparsity whose accuracy falls below 90 % of dense (above the "
        "grid if never), `prune_retained_at_0.9` accuracy / dense at 90 % sparsity; `finetune_gain` fine-tuned "
        "minus from-scratch target accuracy (target: MNIST-1D regenerated with a changed template shift and "
        "noise), `finetune_acc` the fine-tuned accuracy; `shift_*_retained` accuracy under Gaussian noise of std "
        "1 (input std units) / a translation of 4 samples, over clean accuracy.", "",
        *rows, "",
        f"![downstream behaviour by phase]({png})", ""])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--set", action="append", default=[],
                    help="a study option, STUDY:study.key=value (repeatable), e.g. merge:study.ste_steps=50")
    ap.add_argument("--out", type=Path, default=Path("docs/results/phase_downstream.md"))
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    overrides: dict[str, list[str]] = {s: [] for s in STUDIES}
    for item in args.set:
        name, colon, rest = item.partition(":")
        if not colon or name not in overrides:
            ap.error(f"--set {item!r}: expected STUDY:study.key=value with STUDY one of {', '.join(STUDIES)}")
        overrides[name].append(rest)
    entries = {}
    for i, name in enumerate(STUDIES):  # each study shows its own bar (models); resumed ones return at once
        if not args.quiet:
            print(f"phase_downstream: study {i + 1}/{len(STUDIES)}: {name}", file=sys.stderr, flush=True)
        entries[name] = run_study(args.zoo, name, overrides[name], progress=not args.quiet)
    tables = {name: pd.read_parquet(args.zoo / study_files(name)[0]) for name in STUDIES}
    models = pd.read_parquet(args.zoo / "models.parquet")
    cells = cell_outcomes(tables, models)
    table = per_phase(cells)
    manifest = json.loads((args.zoo / "zoo.json").read_text())
    results = claims(cells, manifest.get("phase_thresholds", {}).get("mc_abs_max"))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(float_format=lambda v: f"{v:+.4f}"))
        for r in results:
            print(f"{r['claim']}: {r['verdict']} -- {r['test']}")
    spec = manifest["spec"]
    meta = {"zoo_spec": f"preset {spec.get('name')!r}, {len(models)} models",
            "studies": {n: read_metadata(args.zoo / study_files(n)[0]) for n in STUDIES}}
    command = "python " + " ".join([sys.argv[0] if argv is None else "examples/phase_downstream.py",
                                    *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(cells, tables, png)
    args.out.write_text(report(args.zoo, command, cells, table, results, meta, png.name), encoding="utf-8")
    result = {"phases": {p: int(n) for p, n in table["cells"].items()},
              "claims": {r["claim"].split()[0]: r["verdict"] for r in results},
              "per_phase": {p: {c: (float(v) if np.isfinite(v) else None) for c, v in r.items()}
                            for p, r in table.iterrows()},
              "out": str(args.out), "plot": str(png), "resumed": all(e["resumed"] for e in entries.values())}
    print(json.dumps({"example": "phase_downstream", **result}))
    return result


if __name__ == "__main__":
    interruptible(main, "phase_downstream")
