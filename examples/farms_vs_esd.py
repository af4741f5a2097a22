"""FARMS vs plain ESD alpha at controlled aspect ratio q = n / m (Hu et al., ICML 2025).

Why: the plain power-law alpha of a layer's ESD depends on the layer's shape, not only on how heavy its
tail is; FARMS fits the pooled ESD of fixed square windows instead, which should remove that bias. This
script measures both with ``zoo.metrics.spectral`` on matrices whose tail is fixed while q varies:

- ``student_t``: i.i.d. Student-t entries with ``--df`` degrees of freedom (the heavy-tailed random
  matrix model of the HT-SR papers; the tail exponent of the entries is fixed, q varies);
- ``gaussian``: Gaussian entries (no power-law tail at all: a control, alpha is not meaningful there);
- ``planted``: W = U diag(sqrt(lambda)) V^T with lambda drawn from a Pareto law of exponent
  ``--planted-alpha`` and Haar U, V: the ESD *is* the planted sample whatever q, so plain alpha has no
  aspect-ratio bias to remove (a control for what windowing costs);
- ``trained``: the first layer [m, q m] of one-hidden-layer MLPs (hidden width m) trained with SGD on
  a synthetic task whose signal lives in a fixed 32-dimensional subspace of the q m-dimensional input,
  one learning rate for every q (so the first layer's pre-activations move ~q times faster at large q:
  shape and training differ together);
- ``trained_fanin``: the same with the first layer's learning rate divided by q (pre-activation steps
  matched across q, so only the shape differs).

Every matrix has its smaller side m; FARMS windows are min(farms_window, m) wide, so m must exceed
``--farms-window`` (100) or a square matrix is a single window and FARMS returns plain alpha. Per
setting it reports mean +- std over seeds per q, the spread (max - min over q of the per-q means) of
both (and of the per-q medians, which one failed fit cannot move), and whether FARMS's spread is at
most half of plain alpha's (the bar of issue 15).

    python examples/farms_vs_esd.py --out-md docs/results/farms_vs_esd.md --plot docs/results/farms_vs_esd.png

Progress (setting and q, matrices, matrices/s, ETA) goes to stderr unless --quiet.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoo.metrics.spectral import spectral_tables
from zoo.progress import ProgressBar, interruptible, track

SETTINGS = ("student_t", "gaussian", "planted", "trained", "trained_fanin")


def fit_alphas(mats: torch.Tensor, window: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(plain alpha, FARMS alpha) of stacked matrices [S, rows, cols], one spectral_tables call."""
    s, rows, cols = mats.shape
    layer = nn.Sequential(nn.Linear(cols, rows))
    table, _ = spectral_tables(layer, {"0.weight": mats.double()}, [str(i) for i in range(s)], 0,
                               mp_fit=False, farms_window=window, farms_grid=grid)
    return table["alpha"].to_numpy(), table["farms_alpha"].to_numpy()


def random_matrices(setting: str, n: int, m: int, seeds: int, seed: int, args) -> torch.Tensor:
    rng = np.random.default_rng([seed, n, m, SETTINGS.index(setting)])
    if setting == "student_t":
        w = rng.standard_t(args.df, size=(seeds, n, m))
    elif setting == "gaussian":
        w = rng.standard_normal((seeds, n, m))
    elif setting == "planted":
        lam = (1 - rng.random((seeds, m))) ** (-1 / (args.planted_alpha - 1))  # density ~ lambda^-alpha
        u = np.linalg.qr(rng.standard_normal((seeds, n, m)))[0]
        v = np.linalg.qr(rng.standard_normal((seeds, m, m)))[0]
        w = (u * np.sqrt(lam)[:, None, :]) @ v.transpose(0, 2, 1)
    else:
        raise ValueError(setting)
    return torch.from_numpy(w)


def task(d: int, seed: int, n: int = 4096, classes: int = 10, z: int = 32):
    """Gaussian classes in a fixed z-dimensional latent, embedded isometrically (per-coordinate scale
    ~1) into R^d plus isotropic noise: the same problem whatever d."""
    g = torch.Generator().manual_seed(10_000)
    means = torch.randn(classes, z, generator=g)
    g = torch.Generator().manual_seed(seed)
    embed = torch.linalg.qr(torch.randn(d, z, generator=g))[0] * np.sqrt(d / z)
    y = torch.randint(0, classes, (n,), generator=g)
    x = (means[y] + 1.5 * torch.randn(n, z, generator=g)) @ embed.T + 0.5 * torch.randn(n, d, generator=g)
    return x, y


def trained_matrices(m: int, q: int, seeds: int, seed: int, args, fanin: bool = False, on_step=None):
    """First-layer weights [seeds, m, q m] of MLPs q m -> m -> 10 trained with SGD (first-layer lr / q
    if ``fanin``) and their held-out accuracies."""
    d, weights, accs = q * m, [], []
    for s in range(seeds):
        x, y = task(d, seed * 1000 + s)
        fit = len(x) * 3 // 4
        torch.manual_seed(seed * 1000 + s)
        net = nn.Sequential(nn.Linear(d, m), nn.ReLU(), nn.Linear(m, 10))
        first = args.lr / q if fanin else args.lr
        opt = torch.optim.SGD([{"params": net[0].parameters(), "lr": first},
                               {"params": net[2].parameters()}], lr=args.lr, momentum=0.9)
        for k in range(args.train_steps):
            i = torch.randint(0, fit, (128,))
            loss = nn.functional.cross_entropy(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if on_step:
                on_step(s * args.train_steps + k + 1)
        with torch.no_grad():
            accs.append(float((net(x[fit:]).argmax(1) == y[fit:]).float().mean()))
        weights.append(net[0].weight.detach())
    return torch.stack(weights), accs


def spread(values: list[float]) -> float:
    return float(np.nanmax(values) - np.nanmin(values))


def run_setting(setting: str, args) -> dict:
    rows, trained = [], setting.startswith("trained")
    for q in args.ratios:
        n = q * args.m
        accs = None
        with track(args.train_seeds if trained else args.seeds) as unit:  # progress: this q's matrices
            unit.report(f"{setting} q={q}")
            if trained:
                mats, accs = trained_matrices(args.m, q, args.train_seeds, args.seed, args, setting == "trained_fanin",
                                              partial(unit.report, f"{setting} q={q}",
                                                      total=args.train_seeds * args.train_steps))
            else:
                mats = random_matrices(setting, n, args.m, args.seeds, args.seed, args)
            alpha, farms = fit_alphas(mats, args.farms_window, args.farms_grid)
        row = {"q": q, "shape": "x".join(map(str, mats.shape[1:])), "n_matrices": len(alpha),
               "alpha_mean": float(np.nanmean(alpha)), "alpha_std": float(np.nanstd(alpha)),
               "farms_mean": float(np.nanmean(farms)), "farms_std": float(np.nanstd(farms)),
               "alpha_median": float(np.nanmedian(alpha)), "farms_median": float(np.nanmedian(farms))}
        if accs is not None:
            row["test_acc_mean"] = float(np.mean(accs))
        rows.append(row)
    a = spread([r["alpha_mean"] for r in rows])
    f = spread([r["farms_mean"] for r in rows])
    return {"rows": rows, "alpha_spread": a, "farms_spread": f,
            "alpha_std_over_q": float(np.std([r["alpha_mean"] for r in rows])),
            "farms_std_over_q": float(np.std([r["farms_mean"] for r in rows])),
            "spread_ratio": f / a if a > 0 else float("inf"), "meets_bar": bool(f <= 0.5 * a),
            "median_spread_ratio": spread([r["farms_median"] for r in rows]) / max(
                spread([r["alpha_median"] for r in rows]), 1e-12)}


def single_window_check(args, sides=(16, 40, 64, 100)) -> dict:
    """Square matrices with side <= farms_window are one FARMS window: FARMS alpha == plain alpha.
    A non-square one (m < n <= window) is not: its windows are m x m squares at several offsets."""
    square = max(float(np.nanmax(np.abs(np.subtract(*fit_alphas(
        random_matrices("student_t", s, s, 4, args.seed, args), args.farms_window, args.farms_grid)))))
        for s in sides if s <= args.farms_window)
    a, f = fit_alphas(random_matrices("student_t", 80, 40, 4, args.seed, args), args.farms_window, args.farms_grid)
    return {"square_max_abs_diff": square, "nonsquare_80x40_max_abs_diff": float(np.nanmax(np.abs(a - f)))}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["settings"])
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        res = result["settings"][name]
        q = [r["q"] for r in res["rows"]]
        for key, label, c in (("alpha", "plain ESD alpha", "C0"), ("farms", "FARMS alpha", "C3")):
            ax.errorbar(q, [r[f"{key}_mean"] for r in res["rows"]], [r[f"{key}_std"] for r in res["rows"]],
                        marker="o", capsize=3, color=c, label=f"{label} (spread {res[f'{key}_spread']:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(q, [str(v) for v in q])
        ax.set_xlabel("aspect ratio q = n / m")
        ax.set_ylabel("alpha (mean +- std over seeds)")
        ax.set_title(f"{name}: spread ratio {res['spread_ratio']:.2f}", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"FARMS vs plain ESD alpha, m = {result['m']}, window {result['farms_window']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


SETTING_NOTES = {
    "student_t": "i.i.d. Student-t entries (df = {df}): a heavy tail fixed by the entries, the FARMS paper's case",
    "gaussian": "i.i.d. Gaussian entries: no power-law tail, alpha is not meaningful (control)",
    "planted": "U diag(sqrt(lambda)) V^T, lambda ~ Pareto(alpha = {planted_alpha}): the ESD is the planted "
               "sample at every q, plain alpha has no aspect-ratio bias (control)",
    "trained": "first layer [m, q m] of MLPs q m -> m -> 10, SGD lr {lr} for every q, {steps} steps",
    "trained_fanin": "the same with the first layer's lr divided by q (matched pre-activation steps)",
}


def report(result: dict, command: str, plot_path: Path | None) -> str:
    settings = result["settings"]
    met = [n for n, r in settings.items() if r["meets_bar"]]
    missed = [n for n, r in settings.items() if not r["meets_bar"]]
    lines = ["# FARMS vs plain ESD alpha under controlled aspect ratio", "",
             f"- date: {result['date']}",
             "- machine: 2-core CPU dev VM "
             f"({platform.platform()}, python {platform.python_version()}, OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; shared with other jobs); wall time "
             f"{result['wall_s']:.0f} s",
             f"- command: `{command}`",
             f"- m = {result['m']} (smaller side of every matrix, > the FARMS window), q in {result['ratios']}, "
             f"{result['seeds']} seeds per q for random matrices, {result['train_seeds']} trained MLPs per q; "
             f"FARMS window {result['farms_window']} on a {result['farms_grid']} x {result['farms_grid']} grid",
             "", "Settings:", ""]
    lines += [f"- `{n}`: " + SETTING_NOTES[n].format(**result["options"]) for n in settings]
    lines += ["", "Bar (issue 15): FARMS's spread across aspect ratios (max - min over q of the per-q mean) "
              "is at most half of plain alpha's. The last column is the same ratio for per-q medians.", "",
              f"Bar met in: {', '.join(met) or 'none'}; not met in: {', '.join(missed) or 'none'}.", "",
              "| setting | plain spread | FARMS spread | ratio | bar met | ratio of median spreads |",
              "|---|---|---|---|---|---|"]
    for name, res in settings.items():
        lines.append(f"| {name} | {res['alpha_spread']:.3f} | {res['farms_spread']:.3f} | "
                     f"{res['spread_ratio']:.3f} | {'yes' if res['meets_bar'] else 'no'} | "
                     f"{res['median_spread_ratio']:.3f} |")
    if plot_path is not None:
        lines += ["", f"![FARMS vs plain alpha]({plot_path.name})"]
    for name, res in settings.items():
        extra = " | test acc" if name.startswith("trained") else ""
        lines += ["", f"## {name}", "",
                  f"| q | shape | plain alpha | FARMS alpha | plain median | FARMS median{extra} |",
                  "|---|---|---|---|---|---|" + ("---|" if extra else "")]
        for r in res["rows"]:
            acc = f" | {r['test_acc_mean']:.3f}" if extra else ""
            lines.append(f"| {r['q']} | {r['shape']} | {r['alpha_mean']:.3f} +- {r['alpha_std']:.3f} | "
                         f"{r['farms_mean']:.3f} +- {r['farms_std']:.3f} | {r['alpha_median']:.3f} | "
                         f"{r['farms_median']:.3f}{acc} |")
    sw = result["single_window"]
    lines += ["", "## One window", "",
              f"Square Student-t matrices of side 16, 40, 64, 100 (<= window): max |FARMS - plain| = "
              f"{sw['square_max_abs_diff']:.3g}. A 80 x 40 matrix (both sides <= window, not square): "
              f"{sw['nonsquare_80x40_max_abs_diff']:.3g} (its windows are 40 x 40 squares at 9 offsets)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=256, help="smaller side of every matrix (> farms window)")
    p.add_argument("--ratios", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--seeds", type=int, default=8, help="random matrices per (setting, q)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--df", type=float, default=3.0, help="Student-t degrees of freedom (entry tail exponent)")
    p.add_argument("--planted-alpha", type=float, default=2.5, help="planted ESD power-law exponent")
    p.add_argument("--train-seeds", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--farms-window", type=int, default=100)
    p.add_argument("--farms-grid", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None, help="write the plot (PNG) here")
    p.add_argument("--out-md", type=Path, default=None, help="write a markdown report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    matrices = len(args.ratios) * sum(args.train_seeds if s.startswith("trained") else args.seeds
                                      for s in args.settings)
    with ProgressBar(None, matrices, desc="farms_vs_esd", enabled=not args.quiet, unit="matrix", weights={}) as bar:
        settings = {s: run_setting(s, args) for s in args.settings}
        bar.stage("one-window check")
        single_window = single_window_check(args)
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "m": args.m, "ratios": args.ratios, "seeds": args.seeds, "train_seeds": args.train_seeds,
              "farms_window": args.farms_window, "farms_grid": args.farms_grid,
              "options": {"df": args.df, "planted_alpha": args.planted_alpha, "lr": args.lr,
                          "steps": args.train_steps},
              "settings": settings, "single_window": single_window}
    result["wall_s"] = time.time() - start
    if args.plot is not None:
        plot(result, args.plot)
    if args.out_md is not None:
        command = "OMP_NUM_THREADS=1 python examples/farms_vs_esd.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(report(result, command, args.plot))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    interruptible(main, "farms_vs_esd")
