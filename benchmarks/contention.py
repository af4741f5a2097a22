"""The default build on a shared machine: wall time quiet vs with one competing CPU-bound process,
for the build's worker/thread settings. Goal (issue 18): contended <= 2.5x quiet on 2 cores.

Each setting runs ``zoo build`` in a subprocess (OMP_NUM_THREADS and --jobs as given), rounds of
quiet, contended, quiet, contended ... (interleaved); the competitor is a Python busy loop started
before and killed after each contended build. Prints one JSON line per setting, last: ``ours_s`` is
the quiet build, ``baseline_s`` the contended one, so ``ratio`` (baseline_s / ours_s) is the slowdown.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import _harness as h
from default_build import QUICK

SETTINGS = {  # name -> (--jobs, OMP_NUM_THREADS)
    "default": (None, None),  # one single-threaded worker per core (the default since 2026-11-30)
    "jobs1": (1, None),  # one worker with every core's threads (the default before)
    "jobs1-threads1": (1, 1),
    "jobs2-threads1": (2, 1),
}
BUSY = [sys.executable, "-c", "while True: pass"]


def build_seconds(preset: str, overrides: list[str], jobs: int | None, threads: int | None, competing: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    competitor = subprocess.Popen(BUSY) if competing else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "zoo.cli", "build", "--preset", preset, "--out", str(Path(tmp) / "zoo"),
                   "--quiet", *[a for s in overrides for a in ("--set", s)], *(["--jobs", str(jobs)] if jobs else [])]
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            return time.perf_counter() - t0
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--preset", default="default")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--set", action="append", default=[], help="extra spec overrides (a smaller build)")
    args = h.start(ap)
    overrides = [*(QUICK if args.quick else []), *args.set]
    records = []
    for name in args.settings.split(","):
        jobs, threads = SETTINGS[name]
        quiet, busy = h.interleave(*[partial(build_seconds, args.preset, overrides, jobs, threads, competing)
                                     for competing in (False, True)], rounds=args.rounds, warmup=0)
        records.append(h.result(
            "contention", "the same build with one competing CPU-bound process", quiet, busy, agree=None,
            case=f"preset {args.preset} {' '.join(overrides)}, setting {name} "
                 f"(--jobs {jobs or 'default: one per core'}, "
                 f"OMP_NUM_THREADS {threads or 'unset'})",
            setting=name, slowdown_min=busy.min / quiet.min, slowdown_median=busy.median / quiet.median,
            goal="contended <= 2.5x quiet"))
    h.emit(records)


if __name__ == "__main__":
    main()
