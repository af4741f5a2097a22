"""Every benchmark in one command, recorded: ``python benchmarks/run.py [--quick]``.

Each script runs in its own process (imports, threads and allocator state cannot leak from one
benchmark into the next) with the same thread count, rounds and warm-up; its JSON lines get the
machine record, this run's bmm peak, the load average before and after, and are appended to
``benchmarks/results/<date>.jsonl``; the table in docs/benchmarks.md is regenerated from this run.
``--quick`` writes ``<date>-quick.jsonl`` and leaves the docs alone: its sizes only check the scripts.
``--gpu`` runs the GPU set (kernels, population trainer GPU vs CPU; see gpu.sh).

    python benchmarks/run.py                      # everything, 2 threads, 3 rounds (~20-30 min)
    python benchmarks/run.py --quick --only hessian_vs_pyhessian
    python benchmarks/run.py --table benchmarks/results/2026-12-01.jsonl   # docs table from a file
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent
CPU = {  # script -> extra arguments
    "population_vs_loop": [],
    "hessian_vs_pyhessian": [],
    "spectral_vs_weightwatcher": [],
    "matching_vs_rebasin": [],
    "connectivity": [],
    "merge_vs_loop": [],
    "studies": [],
    "default_build": [],
    "contention": ["--settings", "default,jobs1", "--set", "train.steps=500"],  # 12 builds: shortened
    "scaling": [],
    "kernels": [],
    "nuclear_norm": [],
}
GPU = {"kernels": [], "population_vs_loop": ["--device", "cuda"]}


def run_script(name: str, cmd: list[str]) -> tuple[list[dict], dict]:
    """Run one script; its JSON lines with a "benchmark" key, or one failure record."""
    before, t0 = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr goes straight through
    info = {"script": name, "script_wall_s": time.perf_counter() - t0, "load_before": before,
            "load_after": os.getloadavg()[0]}
    records = []
    for line in proc.stdout.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            print(line)
            continue
        if isinstance(rec, dict) and "benchmark" in rec:
            records.append(rec)
    if proc.returncode or not records:
        records = [{"benchmark": name, "baseline": None, "ours_s": None, "baseline_s": None, "ratio": None,
                    "agree": False, "device": None, "error": f"exit code {proc.returncode}, {len(records)} records"}]
    return records, info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes to check the scripts; not for results")
    ap.add_argument("--only", default="", help="comma-separated script names (default: all)")
    ap.add_argument("--gpu", action="store_true", help="the GPU set instead of the CPU set")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads of every benchmark")
    ap.add_argument("--results", type=Path, default=h.RESULTS)
    ap.add_argument("--doc", type=Path, default=h.DOC)
    ap.add_argument("--no-doc", action="store_true", help="do not regenerate the docs table")
    ap.add_argument("--table", type=Path, help="only regenerate the docs table from this results file")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and check each script parses")
    args = ap.parse_args()

    if args.table:
        records = h.latest_run(h.read_jsonl(args.table))
        h.update_doc(args.doc, records, "cuda" if records and records[0].get("gpu_run") else "cpu", str(args.table))
        print(h.render_table(records, str(args.table)))
        return 0
    if args.rounds < 3 and not args.quick:
        ap.error("recorded results need --rounds >= 3 (interleaved min and median)")
    plan = GPU if args.gpu else CPU
    if args.only:
        unknown = set(args.only.split(",")) - set(plan)
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(plan)}")
        plan = {k: v for k, v in plan.items() if k in args.only.split(",")}
    h.set_threads(args.threads)  # children inherit OMP_NUM_THREADS / MKL_NUM_THREADS
    common = ["--rounds", str(args.rounds), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    common += ["--quick"] if args.quick else []

    if args.dry_run:
        ok = True
        for name, extra in plan.items():
            cmd = [sys.executable, str(HERE / f"{name}.py"), *common, *extra]
            print(" ".join(cmd))
            check = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
            print(f"  parses and imports: {'ok' if check.returncode == 0 else 'FAILED'}")
            if check.returncode:
                print(check.stderr.strip().splitlines()[-1] if check.stderr.strip() else "", file=sys.stderr)
            ok &= check.returncode == 0
        return 0 if ok else 1

    device = "cuda" if args.gpu else "cpu"
    peak = h.bmm_peak_gflops(device)
    context = {"run_id": h.run_id(), "quick": args.quick, "gpu_run": args.gpu, "rounds_asked": args.rounds,
               "bmm_peak": peak, "machine": h.machine()}
    path = args.results / f"{h.today()}{'-quick' if args.quick else ''}{'-gpu' if args.gpu else ''}.jsonl"
    print(f"bmm peak {peak['gflops']:.1f} GFLOP/s on {device}; results -> {path}", flush=True)
    everything = []
    for name, extra in plan.items():
        cmd = [sys.executable, str(HERE / f"{name}.py"), *common, "--bmm-peak", str(peak["gflops"]), *extra]
        print("$", " ".join(cmd), flush=True)
        records, info = run_script(name, cmd)
        records = [{**r, **info, **context} for r in records]
        h.append_jsonl(path, records)
        for r in records:
            print(json.dumps(h.clean({k: v for k, v in r.items() if k != "machine"})), flush=True)
        everything += records

    source = os.path.relpath(path, h.ROOT)
    if not (args.quick or args.only or args.no_doc):
        h.update_doc(args.doc, everything, device, source)
        print(f"regenerated {os.path.relpath(args.doc, h.ROOT)}")
    print(h.render_table(everything, source))
    bad = [r["benchmark"] for r in everything if r.get("agree") is False]
    if bad:
        print(f"disagreement or failure in: {', '.join(bad)}", file=sys.stderr)
    return 1 if any("error" in r for r in everything) else 0


if __name__ == "__main__":
    sys.exit(main())
