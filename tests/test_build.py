"""End to end: zoo build on the smoke preset, the published contract, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from zoo.functional import load_flat
from zoo.generators.architectures import build_for_task
from zoo.generators.tasks import load_task
from zoo.io import sha256_file

ZOO = [sys.executable, "-m", "zoo.cli"]


def run_zoo(*args, **kw):
    return subprocess.run([*ZOO, *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("smoke") / "zoo"
    r = run_zoo("build", "--phase", "grid", "--preset", "smoke", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_models_table_has_the_contract_columns(smoke_zoo):
    m = pd.read_parquet(smoke_zoo / "models.parquet")
    assert len(m) == 8 and m["model_id"].is_unique
    for col in ["model_id", "cell_id", "population_id", "arch_id", "task", "seed", "split", "status",
                "n_params", "train_loss", "train_acc", "test_loss", "test_acc", "ggap", "wall_time_s",
                "config.arch.width", "config.train.lr"]:
        assert col in m.columns, col
    assert set(m["status"]) == {"ok"}
    assert m.groupby("cell_id").size().eq(2).all()  # 2 seeds per cell
    assert set(m["split"]) <= {"train", "val", "test"}
    np.testing.assert_allclose(m["ggap"], m["train_acc"] - m["test_acc"])
    assert (m["test_acc"] > 0.1).all()  # better than chance on 10 classes, on average trained


def test_checkpoints_layout_and_hdf5_agree(smoke_zoo):
    models = pd.read_parquet(smoke_zoo / "models.parquet")
    layout = pd.read_parquet(smoke_zoo / "layout.parquet")
    parts = sorted((smoke_zoo / "checkpoints").glob("part-*.parquet"))
    ck = pd.concat([pd.read_parquet(p) for p in parts])
    assert sorted(ck["step"].unique()) == [0, 30, 60, 90, 120]  # init + 4 checkpoints
    assert len(ck) == 8 * 5
    with h5py.File(smoke_zoo / "zoo.h5") as f:
        for aid, group in layout.groupby("arch_id"):
            p = int(group["end"].max())
            ids = [s.decode() for s in f[f"index/{aid}"][:]]
            final = f[f"weights/{aid}"][:]
            assert final.shape == (len(ids), p)
            assert f[f"checkpoints/{aid}"].shape == (len(ids), 5, p)
            for i, mid in enumerate(ids):
                row = ck[(ck.model_id == mid) & (ck.step == 120)].iloc[0]
                assert np.array_equal(np.asarray(row["weights"], dtype=np.float32), final[i])
            n_params = models.set_index("model_id").loc[ids, "n_params"]
            assert (n_params == group[group.trainable]["end"].sub(group["start"]).sum()).all()


def test_flat_weights_reproduce_recorded_test_loss(smoke_zoo, data_root):
    models = pd.read_parquet(smoke_zoo / "models.parquet")
    ck = pd.concat([pd.read_parquet(p) for p in (smoke_zoo / "checkpoints").glob("part-*.parquet")])
    data = load_task("mnist1d", 1000, 500, 42, data_root)
    for _, row in models.iterrows():
        config = {k[7:]: v for k, v in row.items() if k.startswith("config.")}
        build, adapt = build_for_task(config, data.input_shape, data.n_classes)
        w = ck[(ck.model_id == row.model_id) & (ck.step == 120)]["weights"].iloc[0]
        model = load_flat(build().eval(), torch.tensor(np.asarray(w, dtype=np.float32)))
        with torch.no_grad():
            logits = model(adapt(torch.as_tensor(data.x_test)))
            loss = F.cross_entropy(logits, torch.as_tensor(data.y_test)).item()
        assert loss == pytest.approx(row.test_loss, rel=1e-5, abs=1e-6)


def test_manifest_records_spec_versions_and_checksums(smoke_zoo):
    manifest = json.loads((smoke_zoo / "zoo.json").read_text())
    assert manifest["spec"]["name"] == "smoke"
    assert manifest["torch_version"] == torch.__version__
    assert {"models.parquet", "layout.parquet", "zoo.h5", "README.md"} <= set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert sha256_file(smoke_zoo / name) == digest
    card = (smoke_zoo / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "models.parquet" in card
    assert pq.ParquetFile(smoke_zoo / "models.parquet").metadata.num_rows == 8


def test_info_and_presets_commands(smoke_zoo):
    r = run_zoo("info", str(smoke_zoo))
    assert r.returncode == 0 and "models: 8" in r.stdout
    r = run_zoo("presets", "default", "smoke", "pt-resnet18-cifar10")
    assert r.returncode == 0 and "default" in r.stdout and " 60 " in r.stdout, r.stderr
    assert "11,420-178,585,866" in r.stdout  # ResNet-18 from width 2 to 256, counted on the meta device


def _published(out: Path) -> dict:
    """Everything a user reads, minus wall-time columns and zoo.json's timestamp."""
    m = pd.read_parquet(out / "models.parquet").drop(columns=["wall_time_s"])
    files = {p.name: sha256_file(p) for p in sorted((out / "checkpoints").glob("*.parquet"))}
    files["layout"] = sha256_file(out / "layout.parquet")
    with h5py.File(out / "zoo.h5") as f:
        h5 = {k: f[f"checkpoints/{k}"][:].tobytes() for k in f["checkpoints"]}
    return {"models": m.to_dict("list"), "files": files, "h5": h5}


def test_resume_after_sigkill_publishes_the_same_dataset(tmp_path, data_root):
    args = ["--preset", "smoke", "--set", "build.max_population=1", "--set", "train.steps=600",
            "--quiet"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*ZOO, "build", "--out", str(killed), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = killed / ".zoo" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.npz"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list(shards.glob("*.npz")))
    assert 2 <= n_before < 8, "the build must be killed part-way"
    assert not (killed / "models.parquet").exists()
    r = run_zoo("build", "--out", str(killed), *args)
    assert r.returncode == 0, r.stderr
    clean = tmp_path / "clean"
    assert run_zoo("build", "--out", str(clean), *args).returncode == 0
    assert _published(killed) == _published(clean)


MEASURED = ("hessian.", "spectral.", "connectivity.", "similarity.", "phase")


def test_parallel_build_equals_serial(smoke_zoo, tmp_path):
    """The default build runs one worker per core (here 2 populations at once); a serial build
    (--jobs 1, all cores' threads in one worker) has bitwise equal weights and training metrics, and
    its measure step, with another thread count (float32 BLAS sums in another order), agrees to rounding."""
    out = tmp_path / "serial"
    r = run_zoo("build", "--preset", "smoke", "--out", str(out), "--quiet", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    par, ser = _published(out), _published(smoke_zoo)
    measured = [c for c in ser["models"] if c.startswith(MEASURED)]
    for c in measured:
        a, b = par["models"].pop(c), ser["models"].pop(c)
        if c.startswith("phase"):
            continue  # labels compare thresholded metrics; rounding may flip a borderline one
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-3, atol=1e-6, err_msg=c)
    assert par == ser


def test_calibration_measures_three_terms_and_estimates_use_them(tmp_path, monkeypatch):
    import zoo.cost as cost
    from zoo.generators.sampling import group_populations, plan_models
    from zoo.pipeline import checkpoint_steps
    from zoo.spec import load_spec

    monkeypatch.setattr(cost, "_calibration_paths", lambda: [tmp_path / "calibration.json"])
    c = cost.calibrate("cpu", steps=2, models=2, budget=0.2, families=["mlp"])["mlp"]
    assert c["train_flops_per_s"] > 0 and c["eval_flops_per_s"] > 0 and c["step_s"] >= 0
    assert json.loads((tmp_path / "calibration.json").read_text())["cpu"]["mlp"] == c
    spec = load_spec("smoke")
    plans = plan_models(spec)
    expected = sum(p.members[0].config["train.steps"] * c["step_s"]
                   for p in group_populations(plans, spec.build.max_population))
    for p in plans:
        k = cost.model_costs(p.config)
        expected += k["flops"] * p.config["train.batch_size"] * p.config["train.steps"] / c["train_flops_per_s"]
        evaluated = len(checkpoint_steps(p.config["train.steps"], spec.train.checkpoints)) * (
            p.config["task.n_train"] + p.config["task.n_test"])
        expected += k["forward_flops"] * evaluated / c["eval_flops_per_s"]
    assert 0 < k["forward_flops"] < k["flops"]
    assert cost.estimate(spec)["cpu_seconds"] == pytest.approx(expected)
    # a cache written before the three-term model (one FLOP/s per family) still estimates
    (tmp_path / "calibration.json").write_text(json.dumps({"cpu": {"mlp": 1e9}}))
    assert cost.load_calibration()["cpu"]["mlp"] == {"train_flops_per_s": 1e9, "eval_flops_per_s": 1e9,
                                                     "step_s": 0.0}
    assert cost.estimate(spec)["cpu_seconds"] > 0


def test_resumed_build_keeps_the_thread_count_of_the_whole_plan(smoke_zoo, tmp_path, monkeypatch, data_root):
    """Worker threads come from the whole plan, not from what is left: a resumed build whose one pending
    population runs alone (joblib runs a single task in this process) still gets cores / workers threads,
    as in the uninterrupted build, so its measure step rounds the same way."""
    import shutil

    import zoo.pipeline as pipeline
    from zoo.spec import load_spec

    out = tmp_path / "zoo"
    shutil.copytree(smoke_zoo, out)
    shards = sorted((out / ".zoo" / "shards").glob("*.npz"))
    assert len(shards) == 2  # two populations: the default build ran them on two workers
    shards[0].unlink()
    seen, original, before = [], pipeline.run_population, torch.get_num_threads()

    def recording(pop, data, shard, threads, *args, **kw):
        seen.append(threads)
        try:
            return original(pop, data, shard, threads, *args, **kw)
        finally:
            torch.set_num_threads(before)

    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)
    monkeypatch.setattr(pipeline, "run_population", recording)
    pipeline.build(load_spec("smoke"), out, jobs=2, progress=False, data_root=data_root)
    assert seen == [1]  # 2 cores / 2 workers of the whole plan; what is pending alone would give 2
    assert _published(out) == _published(smoke_zoo)
