"""The default build (`zoo build --phase grid`, 60 MNIST-1D MLPs), total wall time and per stage.

Stages are timed by wrapping the public functions the build calls (training, each metric family,
publishing) for the duration of this process, so the build code itself is untouched; ``jobs=1``
keeps every population in this process, where the wrappers see it. A stage called inside another
timed stage counts only in the outer one; ``other`` is the rest (planning, shards, waiting).
The CLI's default (one single-threaded worker per core) is timed by ``contention.py`` (its quiet side).
Each round builds into a fresh folder. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import _harness as h

from zoo.pipeline import build
from zoo.spec import load_spec

STAGES = {  # stage -> (module, function) the build looks up at call time
    "train": ("zoo.pipeline", "train_population"),
    "hessian": ("zoo.metrics.hessian", "hessian_columns"),
    "spectral": ("zoo.metrics.spectral", "spectral_tables"),
    "connectivity": ("zoo.metrics.connectivity", "linear_connectivity"),
    "bezier": ("zoo.metrics.connectivity", "bezier_connectivity"),
    "cka": ("zoo.metrics.similarity", "pair_cka"),
    "lmc": ("zoo.metrics.lmc", "lmc_pairs"),
    "publish": ("zoo.datasets.writer", "publish"),
}
QUICK = ["train.steps=50", "metrics.bezier_steps=10",
         "phase.axes=[{name='capacity', key='arch.width', values=[8, 16]}, "
         "{name='temperature', key='train.lr', values=[0.1]}]"]


class StageClock:
    """Seconds per stage of the current round, from wrappers around the stage functions."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.active = False

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            if self.active:  # nested in another stage: counted there
                return fn(*args, **kwargs)
            self.active = True
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0
                self.active = False
        return timed

    def install(self) -> None:
        for stage, (module, name) in STAGES.items():
            mod = importlib.import_module(module)
            setattr(mod, name, self.wrap(stage, getattr(mod, name)))


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--preset", default="default")
    args = h.start(ap)
    spec = load_spec(args.preset, QUICK if args.quick else [])
    clock = StageClock()
    clock.install()
    rounds: list[dict[str, float]] = []

    def one_build():
        clock.seconds.clear()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build(spec, Path(tmp) / "zoo", jobs=1, progress=False)
            total = time.perf_counter() - t0
        rounds.append({**clock.seconds, "other": total - sum(clock.seconds.values())})
        return total

    total = h.repeat(one_build, rounds=args.rounds, warmup=args.warmup)
    timed = rounds[args.warmup:]
    stages = {s: h.Side([r.get(s, 0.0) for r in timed]) for s in [*STAGES, "other"]}
    h.emit([h.result(
        "default_build", None, total, None, agree=None,
        case=f"preset {args.preset}{' (quick overrides)' if args.quick else ''}, {spec.n_models} models, jobs=1",
        stages={s: {"min": side.min, "median": side.median} for s, side in stages.items()},
        models=spec.n_models, overrides=QUICK if args.quick else [],
        note="jobs=1: one worker with every usable core's torch threads, whatever --threads says")])


if __name__ == "__main__":
    main()
