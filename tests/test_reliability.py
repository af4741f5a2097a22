"""Faults survived: killed workers, killed builds, a full disk, two builds on one folder, Dask."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoo import pipeline as build_mod
from zoo.generators.claims import Claims
from zoo.io import atomic_path, sha256_file
from zoo.pipeline import BuildError, build
from zoo.spec import load_spec

ZOO = [sys.executable, "-m", "zoo.cli"]
SMALL = ["--preset", "smoke", "--set", "build.max_population=1", "--set", "train.steps=300", "--quiet"]


MEASURED = ("hessian.", "spectral.", "connectivity.", "similarity.")


def published_hashes(out: Path) -> dict:
    """sha256 of every published data file (zoo.json's timestamp and wall times aside)."""
    import pandas as pd

    files = {str(p.relative_to(out)): sha256_file(p) for p in sorted((out / "checkpoints").glob("*.parquet"))}
    files["layout.parquet"] = sha256_file(out / "layout.parquet")
    models = pd.read_parquet(out / "models.parquet").drop(columns=["wall_time_s"])
    for c in models.columns[models.columns.str.startswith(MEASURED)]:  # thread-count rounding: 4 digits
        models[c] = models[c].map(lambda v: float(f"{v:.4g}"))
    files["models"] = models.to_json()
    import h5py

    with h5py.File(out / "zoo.h5") as f:
        files["h5"] = {k: f[f"checkpoints/{k}"][:].tobytes() for k in f["checkpoints"]}
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("ref") / "zoo"
    assert subprocess.run([*ZOO, "build", "--out", str(out), *SMALL]).returncode == 0
    return published_hashes(out)


def test_build_killed_at_several_points_resumes_to_the_same_dataset(tmp_path, reference):
    out = tmp_path / "zoo"
    shards = out / ".zoo" / "shards"
    for wanted in (1, 3, 6):  # kill after this many finished populations
        proc = subprocess.Popen([*ZOO, "build", "--out", str(out), *SMALL],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and len(list(shards.glob("*.npz"))) < wanted and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run([*ZOO, "build", "--out", str(out), *SMALL]).returncode == 0
    assert published_hashes(out) == reference


def test_worker_killed_mid_population_is_retried(tmp_path, reference, monkeypatch):
    """The first task to start SIGKILLs its own loky worker; the build retries and completes."""
    flag = tmp_path / "killed-once"
    original = build_mod.run_population

    def dying(pop, data, shard, threads, device="cpu", precision="fp32", **kw):
        if not flag.exists():
            flag.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(pop, data, shard, threads, device, precision, **kw)

    monkeypatch.setattr(build_mod, "run_population", dying)
    spec = load_spec("smoke", ["build.max_population=1", "train.steps=300"])
    out = build(spec, tmp_path / "zoo", jobs=2, progress=False)
    assert flag.exists()
    assert published_hashes(out) == reference


def test_disk_full_during_a_shard_write_leaves_no_partial_shard(tmp_path, monkeypatch, data_root):
    spec = load_spec("smoke", ["build.max_population=1", "train.steps=20"])
    out = tmp_path / "zoo"
    calls = {"n": 0}
    original = build_mod.write_shard

    def full_disk(path, pop, result, *measured):
        calls["n"] += 1
        if calls["n"] == 3:
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, pop, result, *measured)

    monkeypatch.setattr(build_mod, "write_shard", full_disk)
    with pytest.raises(BuildError, match="No space left"):
        build(spec, out, jobs=1, progress=False)  # in this process, where the patch is
    shards = sorted((out / ".zoo" / "shards").iterdir())
    assert len(shards) == 2 and all(p.suffix == ".npz" for p in shards)  # no temp file, no partial shard
    before = {p: sha256_file(p) for p in shards}
    monkeypatch.setattr(build_mod, "write_shard", original)
    build(spec, out, jobs=1, progress=False)
    assert all(sha256_file(p) == h for p, h in before.items())  # earlier shards untouched and reused


def test_two_builds_on_one_folder_share_the_work(tmp_path, reference):
    out = tmp_path / "zoo"
    procs = [subprocess.Popen([*ZOO, "build", "--out", str(out), *SMALL], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.wait() for p in procs]
    assert results == [0, 0], [p.stderr.read() for p in procs]
    shards = list((out / ".zoo" / "shards").glob("*.npz"))
    assert len(shards) == 8  # every population trained exactly once
    assert published_hashes(out) == reference


def test_stale_claims_expire(tmp_path):
    a = Claims(tmp_path, ttl=0.5)
    assert a.acquire("p1")
    b = Claims(tmp_path, ttl=0.5)
    b.owner = {"host": "elsewhere", "pid": 1}
    assert not b.acquire("p1")  # live (fresh) claim of another owner
    time.sleep(0.7)
    assert b.acquire("p1")  # expired: taken over
    c = Claims(tmp_path / "other", ttl=60)
    (tmp_path / "other" / "p2.claim").write_text(json.dumps({"host": c.owner["host"], "pid": 999999999}))
    assert c.acquire("p2")  # same host, owner process gone


def test_heartbeat_keeps_a_claim_alive(tmp_path):
    a = Claims(tmp_path, ttl=0.6)
    other = Claims(tmp_path, ttl=0.6)
    other.owner = {"host": "elsewhere", "pid": 1}
    with a.heartbeat(every=0.1):
        assert a.acquire("p")
        time.sleep(1.0)
        assert not other.acquire("p")


def test_memory_budget_splits_populations_and_refuses_what_cannot_fit(tmp_path, data_root):
    spec = load_spec("smoke")
    caps = build_mod.population_cap(spec, build_mod.plan_models(spec), 200_000)
    assert min(caps.values()) < spec.build.max_population  # the budget forces smaller populations
    r = subprocess.run([*ZOO, "build", "--preset", "smoke", "--out", str(tmp_path / "z"), "--max-memory", "1K"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "memory budget" in r.stderr and not (tmp_path / "z").exists()
    out = build(spec, tmp_path / "small", progress=False, max_memory=200_000)
    import pandas as pd

    assert pd.read_parquet(out / "models.parquet")["population_id"].nunique() > 2


def test_dask_local_cluster_builds_the_same_zoo(tmp_path, reference):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        spec = load_spec("smoke", ["build.max_population=1", "train.steps=300"])
        out = build(spec, tmp_path / "zoo", jobs=2, backend="dask", progress=False)
    assert published_hashes(out) == reference


def test_ray_backend_when_installed(tmp_path, reference):
    pytest.importorskip("ray", reason="ray is an optional extra")
    r = subprocess.run([*ZOO, "build", "--out", str(tmp_path / "zoo"), "--backend", "ray", "--jobs", "2", *SMALL])
    assert r.returncode == 0
    assert published_hashes(tmp_path / "zoo") == reference


