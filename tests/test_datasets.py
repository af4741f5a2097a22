"""The reader, splits, streaming, verify and export against the files the build publishes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from zoo.cli import main
from zoo.datasets import DatasetError, cell_folds, load, split_by_cells, verify
from zoo.datasets.export import export
from zoo.datasets.verify import cmd_verify
from zoo.functional import layout_of, stack_states, to_flat

SMOKE_SETS = ["phase.seeds=[0,1,2,3]", "build.split=[0.5,0.25,0.25]", "train.steps=60"]
CNN_SETS = ["train.steps=10", "train.checkpoints=1"]


def built_zoo(tmp_path_factory, name: str, preset: str, sets: list[str]) -> Path:
    """Build a zoo once per session with the CLI (shared by the dataset test files)."""
    root = tmp_path_factory.getbasetemp() / f"zoo-{name}"
    if not (root / "zoo.json").exists():
        cmd = [sys.executable, "-m", "zoo.cli", "build", "--preset", preset, "--out", str(root), "--quiet"]
        for s in sets:
            cmd += ["--set", s]
        subprocess.run(cmd, check=True, env=os.environ.copy(), capture_output=True)
    return root


@pytest.fixture(scope="session")
def smoke_zoo(tmp_path_factory, data_root) -> Path:
    return built_zoo(tmp_path_factory, "smoke", "smoke", SMOKE_SETS)


@pytest.fixture(scope="session")
def cnn_zoo(tmp_path_factory, data_root) -> Path:
    return built_zoo(tmp_path_factory, "cnn", "cnn-smoke", CNN_SETS)


def _parquet_weights(root: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((root / "checkpoints").glob("part-*.parquet"))])


def test_tables_are_the_published_parquet(smoke_zoo):
    zoo = load(smoke_zoo)
    pd.testing.assert_frame_equal(zoo.models, pd.read_parquet(smoke_zoo / "models.parquet"))
    pd.testing.assert_frame_equal(zoo.layout, pd.read_parquet(smoke_zoo / "layout.parquet"))
    assert zoo.manifest == json.loads((smoke_zoo / "zoo.json").read_text())
    pd.testing.assert_frame_equal(zoo.layers, pd.read_parquet(smoke_zoo / "layers.parquet"))
    pd.testing.assert_frame_equal(zoo.pairs, pd.read_parquet(smoke_zoo / "pairs.parquet"))
    one = zoo.subset(zoo.model_ids[:1])
    assert set(one.layers["model_id"]) == set(one.model_ids) and len(one.pairs) == 0  # a pair needs both models
    assert len(zoo) == 16 and len(zoo.arch_ids) == 2


@pytest.mark.parametrize("fixture", ["smoke_zoo", "cnn_zoo"])
def test_weights_identical_to_parquet_and_hdf5(fixture, request):
    root = request.getfixturevalue(fixture)
    zoo = load(root)
    ckpt = _parquet_weights(root)
    with h5py.File(root / "zoo.h5") as f:
        for aid in zoo.arch_ids:
            index = [m.decode() for m in f[f"index/{aid}"][:]]
            ids = zoo.arch(aid).model_ids[::-1]  # any order, not the HDF5 row order
            steps = zoo.steps(aid)
            for k, step in enumerate(steps):
                got = zoo.weights(ids, step=step)
                assert got.dtype == np.float32 and got.shape == (len(ids), zoo.layout_of(aid).size)
                rows = ckpt[ckpt["step"] == step].set_index("model_id").loc[ids, "weights"]
                np.testing.assert_array_equal(got, np.stack(rows.to_list()))
                h5_rows = [index.index(m) for m in ids]
                np.testing.assert_array_equal(got, f[f"checkpoints/{aid}"][:, k][h5_rows])
            final = zoo.weights(ids, as_torch=True)
            assert isinstance(final, torch.Tensor)
            np.testing.assert_array_equal(final.numpy(), zoo.weights(ids, step=steps[-1]))


def test_weight_requests_that_cannot_work(smoke_zoo):
    zoo = load(smoke_zoo)
    a, b = zoo.arch_ids
    with pytest.raises(DatasetError, match="architectures"):
        zoo.weights([zoo.arch(a).model_ids[0], zoo.arch(b).model_ids[0]])
    with pytest.raises(DatasetError, match="step"):
        zoo.weights(zoo.arch(a).model_ids[:1], step=7)
    with pytest.raises(DatasetError, match="unknown"):
        zoo.weights(["m-nope"])
    with pytest.raises(DatasetError, match="schema_version|zoo.json"):
        load(smoke_zoo / "checkpoints")


@pytest.mark.parametrize("fixture", ["smoke_zoo", "cnn_zoo"])
def test_model_reproduces_stored_loss(fixture, request):
    root = request.getfixturevalue(fixture)
    zoo = load(root)
    data = zoo.task_data()
    for aid in zoo.arch_ids:
        adapt = zoo.input_adapter(aid)
        x, y = torch.from_numpy(adapt(data.x_test)), torch.from_numpy(data.y_test)
        for mid in zoo.arch(aid).model_ids[:2]:
            net = zoo.model(mid)
            assert layout_of(net) == zoo.layout_of(aid)
            np.testing.assert_array_equal(to_flat(*stack_states([net]), layout_of(net))[0].numpy(),
                                          zoo.weights([mid])[0])
            with torch.no_grad():
                logits = net(x)
            row = zoo.models.set_index("model_id").loc[mid]
            assert F.cross_entropy(logits, y).item() == pytest.approx(row["test_loss"], abs=1e-4)
            assert (logits.argmax(1) == y).float().mean().item() == pytest.approx(row["test_acc"], abs=1e-6)


def test_splits_are_disjoint_and_cover(smoke_zoo):
    zoo = load(smoke_zoo)
    parts = {s: set(zoo.split(s).model_ids) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == len(zoo)
    assert set().union(*parts.values()) == set(zoo.model_ids)
    assert all(not (parts[a] & parts[b]) for a in parts for b in parts if a < b)
    assert len(parts["train"]) == 8 and len(parts["test"]) == 4
    train = zoo.split("train")
    assert set(train.weights(train.arch(train.arch_ids[0]).model_ids).shape[:1]) == {
        len(train.arch(train.arch_ids[0]))}
    with pytest.raises(DatasetError):
        zoo.split("holdout")


def test_split_by_cells_holds_out_whole_cells(smoke_zoo):
    zoo = load(smoke_zoo)
    wide = split_by_cells(zoo, test_cells=lambda m: m["config.arch.width"] == 32, val_fraction=0.5, seed=1)
    test = wide.split("test").models
    assert set(test["config.arch.width"]) == {32}
    assert len(test) == (zoo.models["config.arch.width"] == 32).sum()
    cells = {s: set(wide.split(s).models["cell_id"]) for s in ("train", "val", "test")}
    assert all(not (cells[a] & cells[b]) for a in cells for b in cells if a < b)
    assert len(cells["val"]) == 1 and len(cells["train"]) == 1
    drawn = split_by_cells(zoo, n_test=1, seed=3)
    assert drawn.split("test").models["cell_id"].nunique() == 1 and len(drawn.split("test")) == 4
    one = zoo.models["cell_id"].iloc[0]
    assert set(split_by_cells(zoo, [one]).split("test").model_ids) == \
        set(zoo.models.loc[zoo.models["cell_id"] == one, "model_id"])
    assert load(smoke_zoo).models["split"].equals(zoo.models["split"])  # the zoo itself is untouched
    with pytest.raises(DatasetError):
        split_by_cells(zoo, ["c-missing"])


def test_cell_folds_partition_the_cells(smoke_zoo):
    zoo = load(smoke_zoo)
    cells = set(zoo.models["cell_id"])
    folds = cell_folds(zoo, k=2, seed=5)
    held = [set(f.split("test").models["cell_id"]) for f in folds]
    assert len(folds) == 2 and all(held) and not (held[0] & held[1]) and held[0] | held[1] == cells
    for fold, test in zip(folds, held):  # the rest of the zoo is the fit side, with no held-out cell in it
        assert not set(fold.split("train").models["cell_id"]) & test
        assert len(fold.split("test")) == zoo.models["cell_id"].isin(test).sum()
    assert [set(f.split("test").model_ids) for f in cell_folds(zoo, k=2, seed=5)] == \
        [set(f.split("test").model_ids) for f in folds]
    with pytest.raises(DatasetError):
        cell_folds(zoo, k=len(cells) + 1)


def test_iter_weights_stays_under_memory_budget(smoke_zoo):
    zoo = load(smoke_zoo)
    total = sum(zoo.weights(zoo.arch(a).model_ids).nbytes for a in zoo.arch_ids)
    budget = 3 * 4 * max(zoo.layout_of(a).size for a in zoo.arch_ids) + 100  # 3 rows of the larger arch
    assert budget < total
    seen = {}
    n_batches = 0
    for batch in zoo.iter_weights(batch_size=64, memory_budget=budget):
        assert batch.weights.nbytes <= budget
        n_batches += 1
        for m, w in zip(batch.model_ids, batch.weights):
            seen[m] = w
    assert set(seen) == set(zoo.model_ids) and len(seen) == len(zoo) and n_batches >= 4
    for m in zoo.model_ids[:5]:
        np.testing.assert_array_equal(seen[m], zoo.weights([m])[0])
    small = list(zoo.iter_weights(batch_size=2, step=0))
    assert all(len(b.model_ids) <= 2 for b in small) and sum(len(b.model_ids) for b in small) == 16
    with pytest.raises(DatasetError, match="budget"):
        next(zoo.iter_weights(memory_budget=16))


def test_verify_passes_a_fresh_zoo(smoke_zoo, cnn_zoo, capsys):
    assert verify(smoke_zoo) == []
    assert verify(cnn_zoo) == []
    assert cmd_verify(Namespace(dir=str(smoke_zoo))) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("victim", ["models.parquet", "zoo.h5", "checkpoints/part-00001.parquet"])
def test_verify_catches_a_flipped_byte(smoke_zoo, tmp_path, victim, capsys):
    copy = tmp_path / "zoo"
    shutil.copytree(smoke_zoo, copy)
    path = copy / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify(copy)
    assert problems and victim in problems[0] and "sha256" in problems[0]
    assert cmd_verify(Namespace(dir=str(copy))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and victim in err and err.startswith("zoo: error:")


def _rehash(root: Path, rel: str) -> None:
    from zoo.io import sha256_file

    manifest = json.loads((root / "zoo.json").read_text())
    manifest["files"][rel] = sha256_file(root / rel)
    (root / "zoo.json").write_text(json.dumps(manifest))


def test_verify_catches_inconsistent_tables(smoke_zoo, tmp_path):
    copy = tmp_path / "zoo"
    shutil.copytree(smoke_zoo, copy)
    part = copy / "checkpoints" / "part-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(table.slice(1), part)  # one (model, step) row lost, checksum updated to match
    _rehash(copy, "checkpoints/part-00000.parquet")
    problems = verify(copy)
    assert len(problems) == 1 and "expected" in problems[0] and "rows" in problems[0]

    models = pd.read_parquet(copy / "models.parquet").drop(columns=["test_acc"])
    models.to_parquet(copy / "models.parquet")
    _rehash(copy, "models.parquet")
    assert any("test_acc" in p for p in verify(copy))

    manifest = json.loads((copy / "zoo.json").read_text())
    manifest["schema_version"] = 99
    (copy / "zoo.json").write_text(json.dumps(manifest))
    assert "newer" in verify(copy)[0]
    assert "no zoo.json" in verify(tmp_path)[0]


def test_verify_catches_hdf5_rows(smoke_zoo, tmp_path):
    copy = tmp_path / "zoo"
    shutil.copytree(smoke_zoo, copy)
    with h5py.File(copy / "zoo.h5", "a") as f:
        aid = sorted(f["weights"])[0]
        w = f[f"weights/{aid}"][:]
        del f[f"weights/{aid}"]
        f.create_dataset(f"weights/{aid}", data=w[:-1])
    _rehash(copy, "zoo.h5")
    problems = verify(copy)
    assert problems and f"/weights/{aid}" in problems[0]


def test_pairs_and_layers_are_read_when_present(smoke_zoo, tmp_path):
    copy = tmp_path / "zoo"
    shutil.copytree(smoke_zoo, copy)
    ids = load(copy).split("train").model_ids
    test_id = load(copy).split("test").model_ids[0]
    pairs = {"model_a": [ids[0], ids[1]], "model_b": [ids[2], test_id], "barrier": [0.1, 0.2]}
    pd.DataFrame(pairs).to_parquet(copy / "pairs.parquet")
    pd.DataFrame({"model_id": [ids[0], test_id], "layer": ["0", "0"], "alpha": [2.0, 3.0]}).to_parquet(
        copy / "layers.parquet")
    zoo = load(copy)
    assert len(zoo.pairs) == 2 and len(zoo.layers) == 2
    train = zoo.split("train")
    assert train.pairs["barrier"].tolist() == [0.1] and train.layers["alpha"].tolist() == [2.0]


def test_export_formats_round_trip(smoke_zoo, tmp_path, capsys):
    zoo = load(smoke_zoo)
    out = export(smoke_zoo, "npz", tmp_path / "npz")
    for aid in zoo.arch_ids:
        view = zoo.arch(aid)
        np.testing.assert_array_equal(np.load(out / aid / "weights.npy"), view.weights())
        metrics = pd.read_csv(out / aid / "metrics.csv")
        assert metrics["model_id"].tolist() == view.model_ids
        np.testing.assert_allclose(metrics["test_acc"], view.models["test_acc"])
        lay = pd.read_csv(out / aid / "layout.csv")
        assert lay["end"].max() == view.layout_of(aid).size

    h5 = export(smoke_zoo, "hdf5", tmp_path / "copy.h5")
    assert h5.read_bytes() == (smoke_zoo / "zoo.h5").read_bytes()

    pq_out = export(smoke_zoo, "parquet", tmp_path / "pq")
    assert not (pq_out / "zoo.h5").exists() and verify(pq_out) == []
    again = load(pq_out)  # no HDF5 here: weights come from the checkpoint Parquet
    for aid in zoo.arch_ids:
        ids = zoo.arch(aid).model_ids[::-1]
        np.testing.assert_array_equal(again.weights(ids), zoo.weights(ids))
        np.testing.assert_array_equal(again.weights(ids, step=30), zoo.weights(ids, step=30))
    regenerated = export(pq_out, "hdf5", tmp_path / "regen.h5")
    with h5py.File(regenerated) as f:
        for aid in zoo.arch_ids:
            index = [m.decode() for m in f[f"index/{aid}"][:]]
            np.testing.assert_array_equal(f[f"weights/{aid}"][:], zoo.weights(index))

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_code:  # argparse refuses the format
        main(["export", str(smoke_zoo), "--format", "csv", "--out", str(tmp_path / "x")])
    assert exit_code.value.code == 2
    assert main(["export", str(tmp_path / "none"), "--format", "npz", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.count("zoo: error:") == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
