"""Build scaling on this machine: the same zoo (default preset, 600 steps, metrics off so the
training path is what is measured) with 1 and 2 workers on loky and on a Dask LocalCluster;
models/s and parallel efficiency against 1 loky worker. Prints one JSON line per run and a
final summary line."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from zoo.generators.build import build
from zoo.spec import load_spec

OVERRIDES = ["train.steps=600", "metrics.hessian=false", "metrics.spectral=false", "metrics.connectivity=false",
             "metrics.cka=false", "metrics.lmc=none", "build.max_population=18"]


def run(backend: str, jobs: int, root: Path) -> tuple[float, object]:
    spec = load_spec("default", OVERRIDES)
    out = root / f"{backend}-{jobs}"
    t = time.perf_counter()
    if backend == "dask":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True) as cluster, Client(cluster):
            build(spec, out, jobs=jobs, progress=False, backend="dask")
    else:
        build(spec, out, jobs=jobs, progress=False)
    seconds = time.perf_counter() - t
    import pandas as pd

    models = pd.read_parquet(out / "models.parquet")[["model_id", "train_loss", "test_loss", "test_acc"]]
    shutil.rmtree(out)
    return seconds, models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    n = load_spec("default").n_models
    rows, tables = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("loky", "dask"):
            for jobs in args.jobs:
                s, models = run(backend, jobs, Path(tmp))
                tables.append(models)
                rows.append({"backend": backend, "jobs": jobs, "seconds": round(s, 2),
                             "models_per_s": round(n / s, 2)})
                print(json.dumps(rows[-1]))
    base = rows[0]["seconds"]
    for r in rows:
        r["efficiency"] = round(base / (r["seconds"] * r["jobs"]), 2)
    best = min(rows, key=lambda r: r["seconds"])
    print(json.dumps({"benchmark": "scaling", "baseline": "1 loky worker", "ours_s": best["seconds"],
                      "baseline_s": base, "ratio": round(base / best["seconds"], 2),
                      "agree": all(t.equals(tables[0]) for t in tables),
                      "device": "cpu", "models": n, "runs": rows}))


if __name__ == "__main__":
    main()
