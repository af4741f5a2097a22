"""Ainsworth et al. (2023): the weight-matched merge of two wide models is close to its endpoints; of two narrow
models it collapses. Merged-minus-endpoint test accuracy vs width, with error bars over pairs.

Runs (or resumes) the ``merge`` study on a published zoo with its default options (the table ``zoo study merge
ZOO_DIR`` writes, shared with examples/merge_wm_vs_ste.py and examples/phase_downstream.py), keeps the k = 2
merges of the well-trained cells (by default the learning rate whose cells have the best mean test accuracy over
all widths; ``--lrs`` to choose) and reports, per width, the weight-matched (WM) merge's test accuracy minus the
mean accuracy of its two endpoints, mean +- standard deviation over the pairs (all seed pairs of the cell), beside
the naive average and WM + REPAIR. A least-squares slope of the gap on log2(width) over the pairs says whether
the gap closes as width grows. Writes a report (date, machine, command, numbers, plot); no number in it is typed
by hand.

    python examples/merge_width.py ZOO_DIR [--lrs 0.03] [--set study.key=value ...]
        [--out docs/results/merge_width.md] [--quiet]

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

import numpy as np
import pandas as pd

from zoo.progress import interruptible
from zoo.studies.runner import run_study, study_files

WIDTH, LR = "config.arch.width", "config.train.lr"


def well_trained_lr(models: pd.DataFrame) -> float:
    """The learning rate whose cells have the highest mean test accuracy over all widths."""
    ok = models[models["status"] == "ok"]
    return float(ok.groupby(LR)["test_acc"].mean().idxmax())


def pairs_table(rows: pd.DataFrame, lrs: list[float]) -> pd.DataFrame:
    """One row per k = 2 pair of the chosen cells: width, lr, endpoint accuracy and the gap of each merge."""
    two = rows[(rows["k"] == 2) & np.isclose(rows[LR].to_numpy(float)[:, None], lrs).any(1)].copy()
    two["pair"] = two["models"].map(lambda m: "|".join(m))
    two["variant"] = np.where(two["fix"] == "none", two["method"], two["method"] + "+" + two["fix"])
    gap = two.pivot_table(index=["pair", WIDTH, LR, "cell_id"], columns="variant", values="acc_gap")
    out = gap.reset_index()
    keep = two.drop_duplicates("pair").set_index("pair")
    out["endpoint_acc"] = out["pair"].map(keep["member_mean_acc"])
    wm = two[(two["method"] == "weight") & (two["fix"] == "none")].set_index("pair")
    out["wm_merged_acc"] = out["pair"].map(wm["merged_acc"])
    out["wm_barrier_test_loss"] = out["pair"].map(wm["barrier_mid.test.loss"])
    return out


def by_width(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per width: pairs, endpoint and WM-merged accuracy, the gaps (mean, std, sem), relative accuracy."""
    out = []
    for width, g in pairs.groupby(WIDTH):
        n = len(g)
        row = {"width": int(width), "pairs": n, "endpoint_acc": g["endpoint_acc"].mean(),
               "wm_merged_acc": g["wm_merged_acc"].mean(), "wm_gap": g["weight"].mean(),
               "wm_gap_std": g["weight"].std(ddof=1) if n > 1 else np.nan,
               "wm_relative": (g["wm_merged_acc"] / g["endpoint_acc"]).mean(),
               "naive_gap": g["naive"].mean() if "naive" in g else np.nan,
               "wm_repair_gap": g["weight+repair"].mean() if "weight+repair" in g else np.nan,
               "wm_barrier_test_loss": g["wm_barrier_test_loss"].mean()}
        row["wm_gap_sem"] = row["wm_gap_std"] / np.sqrt(n)
        out.append(row)
    return pd.DataFrame(out)


def slope(pairs: pd.DataFrame) -> dict:
    """OLS slope of the WM gap on log2(width) over all pairs, with its standard error."""
    x, y = np.log2(pairs[WIDTH].to_numpy(float)), pairs["weight"].to_numpy(float)
    if len(np.unique(x)) < 2:
        return {"slope": np.nan, "slope_se": np.nan, "n": len(x)}
    xc = x - x.mean()
    b = float((xc * (y - y.mean())).sum() / (xc ** 2).sum())
    resid = y - y.mean() - b * xc
    se = float(np.sqrt((resid ** 2).sum() / max(len(x) - 2, 1) / (xc ** 2).sum()))
    return {"slope": b, "slope_se": se, "n": len(x)}


CLOSE = 0.01  # "close to its endpoints": the widest merge within this much test accuracy of them


def verdict(table: pd.DataFrame, fit: dict) -> dict:
    """Two parts of the claim: the gap narrows with width (slope > 2 SE), and the widest merge is close to its
    endpoints (|gap| <= CLOSE)."""
    narrow, wide = table.iloc[0], table.iloc[-1]
    narrows = bool(np.isfinite(fit["slope"]) and fit["slope"] > 2 * fit["slope_se"]
                   and abs(wide["wm_gap"]) < abs(narrow["wm_gap"]))
    close = bool(abs(wide["wm_gap"]) <= CLOSE)
    word = "reproduced" if narrows and close else "partly reproduced" if narrows or close else "not reproduced"
    return {"narrow_width": int(narrow["width"]), "narrow_gap": float(narrow["wm_gap"]),
            "narrow_relative": float(narrow["wm_relative"]), "wide_width": int(wide["width"]),
            "wide_gap": float(wide["wm_gap"]), "wide_relative": float(wide["wm_relative"]),
            "gap_narrows_with_width": narrows, "wide_close_to_endpoints": close, "verdict": word}


def per_lr(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean WM gap (k = 2, no fix) per width and learning rate: does the trend hold at every lr?"""
    wm = rows[(rows["k"] == 2) & (rows["method"] == "weight") & (rows["fix"] == "none")]
    return wm.pivot_table(index=WIDTH, columns=LR, values="acc_gap", aggfunc="mean")


def plot(table: pd.DataFrame, pairs: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.9))
    w = table["width"].to_numpy()
    left.scatter(pairs[WIDTH], pairs["weight"], s=10, color="C0", alpha=0.4, label="WM, one pair")
    left.errorbar(w, table["wm_gap"], yerr=table["wm_gap_std"], marker="o", color="C0", capsize=3,
                  label="WM, mean +- std over pairs")
    if table["wm_repair_gap"].notna().any():
        left.plot(w, table["wm_repair_gap"], marker="s", color="C2", label="WM + REPAIR, mean")
    if table["naive_gap"].notna().any():
        left.plot(w, table["naive_gap"], marker="x", linestyle=":", color="C3", label="naive average, mean")
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_xscale("log", base=2)
    left.set_xticks(w, [str(v) for v in w])
    left.set_xlabel("hidden width")
    left.set_ylabel("merged acc - mean endpoint acc (test)")
    left.set_title(title, fontsize=9)
    left.legend(fontsize=7)
    right.errorbar(w, table["endpoint_acc"], marker="o", color="k", label="endpoints (mean)")
    right.errorbar(w, table["wm_merged_acc"], marker="o", color="C0", label="WM merge (mean)")
    right.set_xscale("log", base=2)
    right.set_xticks(w, [str(v) for v in w])
    right.set_xlabel("hidden width")
    right.set_ylabel("test accuracy")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def report(zoo: Path, command: str, lrs: list[float], chosen: str, table: pd.DataFrame, fit: dict, v: dict,
           meta: dict, png: str, lr_table: pd.DataFrame) -> str:
    cols = ["width", "pairs", "endpoint_acc", "wm_merged_acc", "wm_gap", "wm_gap_std", "wm_gap_sem", "wm_relative",
            "naive_gap", "wm_repair_gap", "wm_barrier_test_loss"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table.to_dict("records"):
        lines.append("| " + " | ".join(str(r[c]) if c in ("width", "pairs") else f"{r[c]:.4f}"
                                       if c.endswith(("_std", "_sem")) or "gap" not in c else f"{r[c]:+.4f}"
                                       for c in cols) + " |")
    said = (f"{v['verdict']}: the gap {'narrows' if v['gap_narrows_with_width'] else 'does not narrow'} with width "
            f"beyond noise (criterion: slope > 2 SE), and the widest merge is "
            f"{'' if v['wide_close_to_endpoints'] else 'not '}within {CLOSE} test accuracy of its endpoints")
    lr_lines = ["| width | " + " | ".join(f"lr {c:g}" for c in lr_table.columns) + " |",
                "|" + "---|" * (len(lr_table.columns) + 1)]
    lr_lines += [f"| {int(w)} | " + " | ".join(f"{x:+.4f}" for x in r) + " |" for w, r in lr_table.iterrows()]
    return "\n".join([
        "# Merging two models vs width: weight matching closes the gap for wide models (Ainsworth et al. 2023)", "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: 2-core CPU dev VM ({platform.platform()}, {os.cpu_count()} CPUs, python "
        f"{platform.python_version()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})",
        f"- zoo: `{zoo}` ({meta['zoo_spec']})",
        f"- command: `{command}`",
        f"- merge study options: `{json.dumps(meta['options'])}`; study wall time {meta['wall_time_s']} s"
        + (" (resumed: computed by an earlier run)" if meta["resumed"] else ""),
        f"- cells: learning rate {', '.join(f'{x:g}' for x in lrs)} ({chosen}), every width; k = 2, all seed pairs "
        "of each cell",
        "",
        "Claim tested: the weight-matched (WM) midpoint of two independently trained wide networks is about as "
        "accurate as its endpoints, while for narrow networks it collapses.",
        f"Measured: at width {v['narrow_width']} the WM merge is {v['narrow_gap']:+.4f} test accuracy from its "
        f"endpoints ({v['narrow_relative']:.1%} of their accuracy), at width {v['wide_width']} {v['wide_gap']:+.4f} "
        f"({v['wide_relative']:.1%}); slope of the gap on log2(width) {fit['slope']:+.4f} +- {fit['slope_se']:.4f} "
        f"(OLS over {fit['n']} pairs). Verdict: {said}.",
        "",
        "Columns: `wm_gap` = WM-merged accuracy minus the mean accuracy of the two endpoints (0: merging loses "
        "nothing), mean over pairs, `wm_gap_std` its standard deviation and `wm_gap_sem` std / sqrt(pairs) (the "
        "pairs of a cell share models, so the sem is optimistic); `wm_relative` = merged / endpoint accuracy; "
        "`naive_gap` the plain average without alignment; `wm_repair_gap` WM followed by REPAIR; "
        "`wm_barrier_test_loss` the midpoint's test loss minus the endpoints' mean.",
        "",
        *lines, "",
        f"![WM merge gap vs width]({png})", "",
        "## Every learning rate (mean WM gap over the cell's pairs, k = 2, no fix)", "",
        "The same gap at each learning rate of the zoo, to show whether the width trend depends on the chosen "
        "cells (poorly trained cells have endpoints near chance, so their gap is small for another reason).", "",
        *lr_lines, ""])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--lrs", type=float, nargs="+", help="learning rates of the cells (default: the well-trained one)")
    ap.add_argument("--set", action="append", default=[], help="merge study option study.key=value (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/merge_width.md"))
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    entry = run_study(args.zoo, "merge", args.set, progress=not args.quiet)
    rows = pd.read_parquet(args.zoo / study_files("merge")[0])
    models = pd.read_parquet(args.zoo / "models.parquet")
    lrs, chosen = (args.lrs, "given") if args.lrs else ([well_trained_lr(models)], "the best mean test accuracy")
    pairs = pairs_table(rows, lrs)
    if pairs.empty or "weight" not in pairs:
        raise SystemExit(f"no k = 2 weight-matching merges at lr {lrs} in {args.zoo}")
    table = by_width(pairs)
    fit = slope(pairs)
    v = verdict(table, fit)
    with pd.option_context("display.width", 200):
        print(table.to_string(index=False, float_format=lambda x: f"{x:+.4f}"))
    spec = json.loads((args.zoo / "zoo.json").read_text())["spec"]
    meta = {**entry, "zoo_spec": f"preset {spec.get('name')!r}, {len(models)} models"}
    command = "python " + " ".join([sys.argv[0] if argv is None else "examples/merge_width.py",
                                    *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(table, pairs, png, f"k = 2 merges, lr {', '.join(f'{x:g}' for x in lrs)}")
    args.out.write_text(report(args.zoo, command, lrs, chosen, table, fit, v, meta, png.name, per_lr(rows)),
                        encoding="utf-8")
    result = {"lrs": lrs, **fit, **v, "widths": table["width"].tolist(), "wm_gap": table["wm_gap"].tolist(),
              "wm_gap_std": table["wm_gap_std"].tolist(), "out": str(args.out), "plot": str(png),
              "resumed": entry["resumed"]}
    print(json.dumps({"example": "merge_width", **result}, default=float))
    return result


if __name__ == "__main__":
    interruptible(main, "merge_width")
