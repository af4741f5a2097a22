"""Nothing corrupt is ever blessed; a rebuild keeps what later commands added; races have one winner."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_datasets import SMOKE_SETS, built_zoo

from zoo.datasets import verify
from zoo.generators.claims import Claims
from zoo.io import sha256_file
from zoo.pipeline import prepare_output
from zoo.spec import load_spec

ZOO = [sys.executable, "-m", "zoo.cli"]
BUILD_ARGS = ["--preset", "smoke", "--quiet", *[a for s in SMOKE_SETS for a in ("--set", s)]]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*ZOO, *args], capture_output=True, text=True, env=os.environ.copy())


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (build state included)."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def zoo_copy(tmp_path_factory, tmp_path, data_root) -> Path:
    src = built_zoo(tmp_path_factory, "smoke", "smoke", SMOKE_SETS)
    dst = tmp_path / "zoo"
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


WRITING_COMMANDS = {
    "plot": lambda root: run("plot", str(root)),
    "metrics": lambda root: run("metrics", "spectral", str(root), "--quiet"),
    "build": lambda root: run("build", "--out", str(root), *BUILD_ARGS),
    "export": lambda root: run("export", str(root), "--format", "npz", "--out", str(root.parent / "export")),
}


@pytest.mark.parametrize("command", sorted(WRITING_COMMANDS))
def test_a_flipped_byte_is_refused_by_every_writing_command(zoo_copy, command):
    part = sorted((zoo_copy / "checkpoints").glob("part-*.parquet"))[0]
    flip_byte(part)
    before = snapshot(zoo_copy)
    r = WRITING_COMMANDS[command](zoo_copy)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "sha256" in r.stderr and part.name in r.stderr and "zoo verify" in r.stderr
    assert snapshot(zoo_copy) == before  # nothing rewritten, zoo.json not re-hashed
    assert any(part.name in p for p in verify(zoo_copy))  # the damage is still reported
    assert not (zoo_copy.parent / "export").exists()


def test_commands_record_only_what_they_wrote(zoo_copy):
    manifest = json.loads((zoo_copy / "zoo.json").read_text())
    r = run("plot", str(zoo_copy))
    assert r.returncode == 0, r.stderr
    after = json.loads((zoo_copy / "zoo.json").read_text())
    changed = {k for k in after["files"] if after["files"][k] != manifest["files"].get(k)}
    assert changed <= {k for k in after["files"] if k.startswith("plots/")}
    assert after["history"][-1]["command"] == "plot"
    assert verify(zoo_copy) == []


def test_rebuild_keeps_metrics_added_later(zoo_copy):
    r = run("metrics", "lmc", str(zoo_copy), "--quiet")
    assert r.returncode == 0, r.stderr
    pairs = pd.read_parquet(zoo_copy / "pairs.parquet")
    assert pairs["alignment"].nunique() > 2  # lmc added alignments beyond the build's
    before = snapshot(zoo_copy)
    r = run("build", "--out", str(zoo_copy), *BUILD_ARGS)
    assert r.returncode == 0, r.stderr
    assert snapshot(zoo_copy) == before  # a finished, intact zoo: nothing to do, nothing dropped
    assert verify(zoo_copy) == []


def test_repair_republishes_a_damaged_zoo_from_its_shards(zoo_copy):
    reference = pd.read_parquet(zoo_copy / "models.parquet")
    flip_byte(zoo_copy / "models.parquet")
    r = run("build", "--out", str(zoo_copy), "--repair", *BUILD_ARGS)
    assert r.returncode == 0, r.stderr
    assert verify(zoo_copy) == []
    republished = pd.read_parquet(zoo_copy / "models.parquet")
    pd.testing.assert_frame_equal(republished.drop(columns="wall_time_s"), reference.drop(columns="wall_time_s"))


# ------------------------------------------------------------------ races: exactly one winner

def _prepare(out: str, barrier) -> str:
    barrier.wait()
    try:
        prepare_output(Path(out), load_spec("smoke"))
        return "ok"
    except Exception as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"


def _claim(folder: str, name: str, barrier) -> bool:
    barrier.wait()
    return Claims(Path(folder), ttl=60.0).acquire(name)


def _race(fn, *args, n: int = 8) -> list:
    """Run ``fn(*args, barrier)`` in ``n`` processes released at once."""
    ctx = mp.get_context("fork")
    barrier = ctx.Manager().Barrier(n)
    with ctx.Pool(n) as pool:
        return pool.starmap(fn, [(*args, barrier)] * n)


def test_simultaneous_prepare_output_all_succeed(tmp_path):
    out = tmp_path / "fresh"
    assert _race(_prepare, str(out)) == ["ok"] * 8
    assert sorted(p.name for p in out.iterdir()) == [".zoo"]  # no temporary state left behind
    assert json.loads((out / ".zoo" / "spec.json").read_text())["fingerprint"]


def test_simultaneous_claims_have_one_winner(tmp_path):
    for k in range(3):
        assert sum(_race(_claim, str(tmp_path), f"pop{k}")) == 1


def test_a_stale_claim_is_taken_over_by_exactly_one(tmp_path):
    for k in range(3):
        path = tmp_path / f"stale{k}.claim"
        path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
        os.utime(path, (0, 0))  # old by the clock
        assert sum(_race(_claim, str(tmp_path), f"stale{k}")) == 1
        assert json.loads(path.read_text())["host"] != "elsewhere"


def test_stale_means_old_not_empty(tmp_path):
    path = tmp_path / "p.claim"
    path.write_text("")  # unreadable but fresh: someone else's, left alone
    claims = Claims(tmp_path, ttl=60)
    assert not claims.acquire("p")
    os.utime(path, (0, 0))
    assert claims.acquire("p")


def test_studies_survive_zoo_metrics_and_a_rebuild(zoo_copy):
    assert run("study", "shift", str(zoo_copy), "--quiet").returncode == 0
    table = sha256_file(zoo_copy / "studies" / "shift.parquet")
    r = run("metrics", "spectral", str(zoo_copy), "--quiet")
    assert r.returncode == 0, r.stderr
    card = (zoo_copy / "README.md").read_text()
    assert "config_name: study-shift" in card and "## Study `shift`" in card  # regenerated card keeps it
    assert run("build", "--out", str(zoo_copy), *BUILD_ARGS).returncode == 0
    manifest = json.loads((zoo_copy / "zoo.json").read_text())
    assert manifest["files"]["studies/shift.parquet"] == table and "shift" in manifest["studies"]
    assert verify(zoo_copy) == []


def test_card_models_config_has_real_split_files(zoo_copy):
    import yaml

    card = (zoo_copy / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    models = next(c for c in header["configs"] if c["config_name"] == "models")
    files = {f["split"]: f["path"] for f in models["data_files"]}
    assert set(files) == {"train", "validation", "test"}  # SMOKE_SETS split 0.5 / 0.25 / 0.25
    table = pd.read_parquet(zoo_copy / "models.parquet")
    for hf, ours in (("train", "train"), ("validation", "val"), ("test", "test")):
        rows = pd.read_parquet(zoo_copy / files[hf])
        assert set(rows["model_id"]) == set(table.loc[table["split"] == ours, "model_id"]) and len(rows)
    manifest = json.loads((zoo_copy / "zoo.json").read_text())
    assert all(path in manifest["files"] for path in files.values())


def test_hugging_face_loads_the_test_split(zoo_copy):
    datasets = pytest.importorskip("datasets")
    table = pd.read_parquet(zoo_copy / "models.parquet")
    assert len(datasets.load_dataset(str(zoo_copy), "models")["test"]) == (table["split"] == "test").sum()


def test_ste_is_an_alignment_of_zoo_metrics_lmc(zoo_copy):
    r = run("metrics", "lmc", str(zoo_copy), "--quiet", "--set", "metrics.lmc=ste")
    assert r.returncode == 0, r.stderr
    pairs = pd.read_parquet(zoo_copy / "pairs.parquet")
    ste, weight = (pairs[pairs["alignment"] == a].set_index(["model_a", "model_b"]) for a in ("ste", "weight"))
    assert len(ste) and set(ste.index) == set(weight.index)
    assert verify(zoo_copy) == []
