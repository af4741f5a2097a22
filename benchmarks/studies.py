"""All five studies (`zoo study NAME`) on the default zoo: wall time per study and in total.

Issue 16's goal: ensemble, merge, prune, finetune and shift together within 5 minutes on 2 CPU
cores. The default zoo is built once, untimed (or given with ``--zoo``); every round runs the five
studies, in the order above with their default options, on a fresh copy of it (the copy is untimed),
through ``run_study`` as the CLI does; no warm-up round (see main). Each study's time per model is
also in its Parquet metadata. There is no baseline: ``ours_s`` is the total of the five, ``goal_s``
the issue's 300 s, and "ratio" is null (nothing to divide by). Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import _harness as h
import pandas as pd

from zoo.pipeline import build
from zoo.spec import load_spec
from zoo.studies import STUDIES
from zoo.studies.runner import run_study

QUICK = ["train.steps=50", "metrics.bezier_steps=10",
         "phase.axes=[{name='capacity', key='arch.width', values=[8, 16]}, "
         "{name='temperature', key='train.lr', values=[0.1]}]"]
QUICK_STUDY = {"merge": ["study.ste_steps=5"], "prune": ["study.finetune_steps=5"], "finetune": ["study.steps=5"]}


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--zoo", type=Path, help="a built default zoo to copy (default: build one, untimed)")
    args = h.start(ap)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.zoo
        if source is None:
            source = Path(tmp) / "zoo"
            spec = load_spec("default", QUICK if args.quick else [])
            build(spec, source, jobs=1, progress=False)
        per_study: dict[str, list[float]] = {name: [] for name in STUDIES}
        work = Path(tmp) / "work"

        def fresh_copy():
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(source, work)

        def all_studies():
            for name in STUDIES:
                t0 = time.perf_counter()
                run_study(work, name, QUICK_STUDY.get(name, []) if args.quick else [], progress=False)
                per_study[name].append(time.perf_counter() - t0)

        # no warm-up round: each round is minutes of work, and the imports a first round would pay
        # are paid by the build (or the check of --zoo) before timing starts
        total = h.repeat(all_studies, rounds=args.rounds, warmup=0, setup=[fresh_copy])
        n_models = len(pd.read_parquet(source / "models.parquet"))
    timed = {name: h.Side(times) for name, times in per_study.items()}
    h.emit([h.result(
        "studies", None, total, None, agree=None,
        case=f"five studies, default options, on the default zoo ({n_models} models)"
             f"{' (quick overrides)' if args.quick else ''}",
        goal_s=300.0, within_goal=total.min <= 300.0, models=n_models,
        stages={name: {"min": side.min, "median": side.median} for name, side in timed.items()})])


if __name__ == "__main__":
    main()
