"""How a build scales on this machine: build time vs number of models and vs width (default
preset's task, architecture and metrics, 600 training steps, one width and k learning rates x 3
seeds), each with the fitted exponent of time ~ x^b, and the peak memory (RSS) of training one
population vs its size, each size in a fresh process whose high-water mark is reset after setup
(imports alone peak near 1 GB, above what a small population adds).

Prints one JSON line per point, then a fit line per curve; the last line is the models curve's fit.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness as h
import numpy as np

from zoo.pipeline import build
from zoo.spec import load_spec


def spec_for(width: int, n_lrs: int, steps: int, extra: list[str]):
    lrs = ", ".join(f"{lr:.3g}" for lr in np.geomspace(0.003, 0.3, n_lrs))
    return load_spec("default", [f"train.steps={steps}", *extra,
                                 f"phase.axes=[{{name='capacity', key='arch.width', values=[{width}]}}, "
                                 f"{{name='temperature', key='train.lr', values=[{lrs}]}}]"])


def build_point(spec, args) -> h.Side:
    def once():
        with tempfile.TemporaryDirectory() as tmp:
            build(spec, Path(tmp) / "zoo", jobs=1, progress=False)
    return h.repeat(once, rounds=args.rounds, warmup=args.warmup)


def fit(xs, sides: list[h.Side]) -> float:
    """Exponent b of t = a x^b, least squares in log-log over the min times."""
    return float(np.polyfit(np.log(xs), np.log([s.min for s in sides]), 1)[0])


def curve(name: str, xs, widths, specs, args) -> list[dict]:
    sides = [build_point(s, args) for s in specs]
    out = [h.result("scaling", None, side, None, agree=None, case=f"{s.n_models} models, width {w}",
                    models=s.n_models, width=w, steps=s.train.steps, seconds_per_model=side.min / s.n_models)
           for w, s, side in zip(widths, specs, sides)]
    b = fit(xs, sides)
    out.append({"benchmark": "scaling", "baseline": None, "ours_s": None, "baseline_s": None, "ratio": None,
                "agree": None, "device": "cpu", "case": f"fit: build time ~ {name}^{b:.2f}", "exponent": b,
                "x": list(xs), "min_s": [s.min for s in sides]})
    return out


def rss_mib() -> dict[str, float]:
    """Current and peak resident memory of this process (Linux /proc)."""
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def rss_child(m: int, steps: int) -> None:
    """Train one population of ``m`` width-64 MLPs; print RSS after setup and the peak during training (MiB)."""
    from zoo.generators.architectures import build_model
    from zoo.generators.population import Member, TrainConfig, train_population
    from zoo.generators.tasks import load_task

    data = load_task("mnist1d", 4000, 1000, 42)
    before = rss_mib()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    t0 = time.perf_counter()
    train_population(lambda: build_model("mlp", in_dim=40, out_dim=10, width=64, depth=2),
                     [Member(f"m{i}", seed=i, lr=0.01) for i in range(m)], data,
                     TrainConfig(steps=steps, batch_size=64, checkpoint_steps=[steps]))
    seconds = time.perf_counter() - t0
    peak = rss_mib()["VmHWM"]
    print(json.dumps({"rss_setup_mib": before, "rss_peak_mib": peak, "seconds": seconds}))


def rss_curve(sizes, steps: int, args) -> list[dict]:
    out, growth = [], []
    for m in sizes:
        proc = subprocess.run([sys.executable, __file__, "--rss-child", str(m), "--rss-steps", str(steps),
                               "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        growth.append(max(r["rss_peak_mib"] - r["rss_setup_mib"], 1e-3))
        out.append({"benchmark": "scaling_rss", "baseline": None, "ours_s": r["seconds"], "baseline_s": None,
                    "ratio": None, "agree": None, "device": "cpu",
                    "case": f"{m} MLPs width 64: peak RSS {r['rss_peak_mib']:.0f} MiB "
                            f"(+{growth[-1]:.0f} over setup)", "models": m, "rounds": 1, **r})
    b = float(np.polyfit(np.log(sizes), np.log(growth), 1)[0])
    out.append({"benchmark": "scaling_rss", "baseline": None, "ours_s": None, "baseline_s": None, "ratio": None,
                "agree": None, "device": "cpu", "case": f"fit: RSS growth ~ models^{b:.2f}", "exponent": b,
                "x": list(sizes), "rss_growth_mib": growth})
    return out


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rss-steps", type=int, default=20, help=argparse.SUPPRESS)
    args = h.start(ap)
    if args.rss_child:
        rss_child(args.rss_child, args.rss_steps)
        return
    if args.quick:
        steps, extra, n_lrs, widths, width, sizes = 50, ["metrics.bezier_steps=10"], (1, 2), (8, 16), 16, (4, 16)
    else:  # the default preset's metrics, as built
        steps, extra, n_lrs, widths, width, sizes = 600, [], (2, 4, 8, 16, 32), (16, 32, 64, 128, 256), 32, \
            (16, 64, 256, 1024)
    k = 1 if args.quick else 6
    by_width = curve("width", widths, widths, [spec_for(w, k, steps, extra) for w in widths], args)
    by_models = curve("models", [3 * k for k in n_lrs], [width] * len(n_lrs),
                      [spec_for(width, k, steps, extra) for k in n_lrs], args)
    h.emit(rss_curve(sizes, 20 if not args.quick else 5, args) + by_width + by_models)


if __name__ == "__main__":
    main()
