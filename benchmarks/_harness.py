"""Shared benchmark plumbing, so every benchmark is timed and recorded the same fair way.

On 2 shared cores one busy neighbour can slow small torch ops many times over, so a single timing
of each side proves nothing: ``interleave`` runs the sides alternately (ABAB...) after a warm-up of
each, and reports the min (the least disturbed run) and the median of every side. ``machine``
records what the numbers were measured on, ``bmm_peak_gflops`` what the machine can do at best,
and the JSONL/docs helpers keep the published table tied to a results file.

Imported by the scripts next to it (``import _harness``) and by tests/test_benchmark_harness.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
ANCHORS = ("torch", "numpy", "pyhessian", "weightwatcher", "rebasin", "triton", "zoo")


# ---------------------------------------------------------------- timing

@dataclass
class Side:
    """The timings of one side of a comparison and the value its last call returned."""

    times: list[float] = field(default_factory=list)
    value: Any = None

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def interleave(*fns: Callable[[], Any], rounds: int = 3, warmup: int = 1,
               setup: Sequence[Callable[[], Any] | None] | None = None,
               sync: Callable[[], Any] | None = None, clock: Callable[[], float] = time.perf_counter) -> list[Side]:
    """Time ``fns`` alternately: ``warmup`` untimed calls of each, then ``rounds`` rounds A B A B ...

    Interleaving spreads a neighbour's burst of load over both sides instead of one. ``setup[i]``
    (untimed) runs before every call of side i, e.g. to restore state the call consumes; ``sync``
    (e.g. torch.cuda.synchronize) runs before reading the clock."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    setup = list(setup or [None] * len(fns))
    sides = [Side() for _ in fns]
    for r in range(warmup + rounds):
        for fn, prep, side in zip(fns, setup, sides, strict=True):
            if prep is not None:
                prep()
            if sync:
                sync()
            t0 = clock()
            side.value = fn()
            if sync:
                sync()
            elapsed = clock() - t0
            if r >= warmup:
                side.times.append(elapsed)
    return sides


def repeat(fn: Callable[[], Any], rounds: int = 3, warmup: int = 1, **kwargs) -> Side:
    """One side alone (no baseline to interleave with), timed like ``interleave``."""
    return interleave(fn, rounds=rounds, warmup=warmup, **kwargs)[0]


# ---------------------------------------------------------------- agreement

def _flat(values) -> list[float]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, int | float):
        return [float(values)]
    if isinstance(values, dict):
        values = list(values.values())
    out: list[float] = []
    for v in values:
        out.extend(_flat(v))
    return out


def within(values, tol: float) -> bool:
    """True iff every value is finite and |value| <= tol. NaN (an uncomputed metric) and an empty
    comparison are disagreement: a check that compared nothing must not pass."""
    flat = _flat(values)
    return bool(flat) and all(math.isfinite(v) and abs(v) <= tol for v in flat)


def all_finite(values) -> bool:
    flat = _flat(values)
    return bool(flat) and all(math.isfinite(v) for v in flat)


# ---------------------------------------------------------------- records

def result(benchmark: str, baseline: str | None, ours: Side, base: Side | None, agree: bool | None,
           device: str = "cpu", **extra) -> dict:
    """The one-line record every benchmark prints: mins as ``ours_s``/``baseline_s`` (ratio =
    baseline / ours), medians beside them; ``agree`` is false if either side's time is not finite."""
    rec = {"benchmark": benchmark, "baseline": baseline, "ours_s": ours.min, "baseline_s": None, "ratio": None,
           "agree": agree, "device": device, "ours_median_s": ours.median, "baseline_median_s": None,
           "ratio_median": None, "rounds": len(ours.times)}
    if base is not None:
        rec.update(baseline_s=base.min, baseline_median_s=base.median,
                   ratio=base.min / ours.min, ratio_median=base.median / ours.median)
        if agree is not None:
            rec["agree"] = bool(agree) and all_finite([ours.min, base.min])
    rec.update(extra)
    return rec


def clean(obj):
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    elif hasattr(obj, "tolist"):
        return clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def emit(records: list[dict]) -> None:
    """Print the records, one JSON line each; the script's headline record is the last one."""
    for rec in records:
        print(json.dumps(clean(rec)), flush=True)


def append_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for rec in records:
            f.write(json.dumps(clean(rec)) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def latest_run(records: list[dict]) -> list[dict]:
    """The records of the last run in a results file (a file holds every run of its day)."""
    if not records:
        return []
    last = records[-1].get("run_id")
    return [r for r in records if r.get("run_id") == last]


# ---------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    out = {}
    for name in ANCHORS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True)
    except OSError:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def machine() -> dict:
    """What a number was measured on: CPU, cores, threads, load, versions, commit, GPU if any."""
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "loadavg": list(os.getloadavg()), "python": platform.python_version(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "versions": versions(), "git": git_commit()}


def set_threads(threads: int) -> None:
    """Pin the thread count for this process and its children. OMP/MKL read the environment only
    at start-up, so run.py sets it before any child imports torch; set_num_threads covers this one."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def bmm_peak_gflops(device: str = "cpu", dtype: str = "float32", reps: int = 5) -> dict:
    """This machine's best float32 ``torch.bmm`` rate over a few square shapes: the roof that
    "% of peak" refers to, measured in the same run (datasheet numbers say nothing of 2 shared cores)."""
    import torch

    dt_ = getattr(torch, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else None
    shapes = [(64, 256), (16, 512), (8, 1024)] if device == "cpu" else [(64, 1024), (16, 4096)]
    best, at = 0.0, None
    for b, n in shapes:
        x = torch.randn(b, n, n, device=device, dtype=dt_)
        y = torch.randn(b, n, n, device=device, dtype=dt_)
        side = repeat(lambda x=x, y=y: torch.bmm(x, y), rounds=reps, warmup=1, sync=sync)
        rate = 2.0 * b * n ** 3 / side.min / 1e9
        if rate > best:
            best, at = rate, [b, n, n]
    return {"gflops": best, "shape": at, "dtype": dtype, "device": device}


def pct_of_peak(flop: float, seconds: float, peak_gflops: float | None) -> float | None:
    if not peak_gflops or not seconds:
        return None
    return 100.0 * flop / seconds / 1e9 / peak_gflops


# ---------------------------------------------------------------- command line of each script

def add_common(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every benchmark script takes (run.py passes them all)."""
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the script, proves nothing")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per side (interleaved), min 3 for results")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls of each side first")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads")
    ap.add_argument("--bmm-peak", type=float, default=None,
                    help="this machine's bmm GFLOP/s (run.py measures it once); measured here if absent")
    return ap


def start(ap: argparse.ArgumentParser) -> argparse.Namespace:
    args = ap.parse_args()
    set_threads(args.threads)
    return args


def peak(args, device: str = "cpu") -> float:
    if args.bmm_peak is None:
        args.bmm_peak = bmm_peak_gflops(device)["gflops"]
    return args.bmm_peak


# ---------------------------------------------------------------- the docs table

BEGIN, END = "<!-- benchmarks:{key}:begin -->", "<!-- benchmarks:{key}:end -->"


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _time(lo, med) -> str:
    if lo is None:
        return "–"
    return f"{lo:.3g}" if med is None else f"{lo:.3g} ({med:.3g})"


def render_table(records: list[dict], source: str = "") -> str:
    """Markdown for one run: the machine, then one row per record (a row per stage where a record
    has ``stages``). Times are min (median) seconds over the interleaved rounds."""
    if not records:
        return "_No run recorded yet._"
    m = records[0].get("machine", {})
    v = m.get("versions", {})
    peak_ = records[0].get("bmm_peak", {})
    head = [f"Run `{records[0].get('run_id', '?')}`" + (f" from `{source}`" if source else "")
            + (" (**--quick: sizes too small to mean anything**)" if records[0].get("quick") else "") + ": "
            f"{m.get('cpu', '?')}, {m.get('cores_available', m.get('cores', '?'))} cores, "
            f"{m.get('torch_threads', '?')} torch threads (OMP_NUM_THREADS={m.get('omp_num_threads')}), "
            f"bmm peak {_num(peak_.get('gflops'))} GFLOP/s ({peak_.get('device', '?')}), "
            f"torch {v.get('torch')}, pyhessian {v.get('pyhessian')}, weightwatcher {v.get('weightwatcher')}, "
            f"rebasin {v.get('rebasin')}, commit {m.get('git')}.", "",
            "| benchmark | case | ours s, min (median) | baseline s, min (median) | ratio | % bmm peak | agree "
            "| load before → after |",
            "|---|---|---:|---:|---:|---:|:-:|---|"]
    rows = []
    for r in records:
        load = f"{_num(r.get('load_before'))} → {_num(r.get('load_after'))}"
        if "error" in r:
            rows.append(f"| {r['benchmark']} | failed: {r['error'][:80]} | | | | | **no** | {load} |")
            continue
        rows.append(f"| {r['benchmark']} | {r.get('case', '')} | {_time(r.get('ours_s'), r.get('ours_median_s'))} "
                    f"| {_time(r.get('baseline_s'), r.get('baseline_median_s'))} | {_num(r.get('ratio'))} "
                    f"| {_num(r.get('pct_bmm_peak'))} | {_num(r.get('agree'))} | {load} |")
        for stage, t in (r.get("stages") or {}).items():
            rows.append(f"| {r['benchmark']} | stage: {stage} | {_time(t['min'], t['median'])} | | | | | |")
    return "\n".join(head + rows)


def update_doc(doc: Path, records: list[dict], key: str = "cpu", source: str = "") -> None:
    """Replace the table between this key's markers in ``doc``; text outside them is kept."""
    text = doc.read_text()
    begin, end = BEGIN.format(key=key), END.format(key=key)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{doc} has no {begin} ... {end} markers")
    block = f"{begin}\n{render_table(records, source)}\n{end}"
    doc.write_text(pattern.sub(lambda _: block, text))


def today() -> str:
    return dt.date.today().isoformat()


def run_id() -> str:
    return dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
