"""The measure step inside a build, and `zoo metrics` / `zoo plot` on a published zoo."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from zoo.datasets.verify import verify
from zoo.functional import layout_of
from zoo.generators.architectures import build_for_task
from zoo.generators.tasks import load_task
from zoo.generators.tasks.objectives import objective_for
from zoo.metrics.base import Population
from zoo.metrics.measure import measure_population
from zoo.spec import MetricsSpec

ZOO = [sys.executable, "-m", "zoo.cli"]


def run_zoo(*args):
    return subprocess.run([*ZOO, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def measured_zoo(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("metrics") / "zoo"
    r = run_zoo("build", "--preset", "smoke", "--out", str(out), "--quiet", "--set", "metrics.lmc=all")
    assert r.returncode == 0, r.stderr
    return out


def test_build_publishes_every_metric_family(measured_zoo):
    m = pd.read_parquet(measured_zoo / "models.parquet")
    for col in ("hessian.top_eig", "hessian.trace", "spectral.alpha_mean", "spectral.farms_alpha_mean",
                "connectivity.mc", "similarity.cka", "phase", "cell_phase"):
        assert col in m and m[col].notna().all(), col
    assert set(m["phase"]) <= {"I", "II", "III", "IV-A", "IV-B", "unknown"}
    pairs = pd.read_parquet(measured_zoo / "pairs.parquet")
    assert set(pairs["alignment"]) == {"none", "weight", "activation", "weight+repair"}
    cells = m.groupby("cell_id").size()
    assert (pairs["alignment"] == "none").sum() == sum(n * (n - 1) // 2 for n in cells)
    assert (pairs["model_a"].map(dict(zip(m.model_id, m.cell_id))) == pairs["cell_id"]).all()
    assert len(pairs.loc[0, "curve.train.loss"]) == 11
    layers = pd.read_parquet(measured_zoo / "layers.parquet")
    assert set(layers["model_id"]) == set(m["model_id"]) and layers["alpha"].notna().any()
    manifest = json.loads((measured_zoo / "zoo.json").read_text())
    assert manifest["phase_thresholds"]["loss_fraction"] == 0.25
    assert {f"plots/{n}.png" for n in ("phase", "test_acc", "mc")} <= set(manifest["files"])
    assert verify(measured_zoo) == []


def test_measured_in_build_equals_measured_alone(measured_zoo, data_root):
    """A population's metrics do not depend on the rest of it: remeasure two models by themselves."""
    m = pd.read_parquet(measured_zoo / "models.parquet").sort_values("model_id")
    ckpt = pd.read_parquet(measured_zoo / "checkpoints")
    row = m.iloc[0]
    same_cell = m[m["cell_id"] == row["cell_id"]]
    ids = same_cell["model_id"].tolist()
    cfg = {k[7:]: v for k, v in row.items() if k.startswith("config.")}
    data = load_task("mnist1d", cfg["task.n_train"], cfg["task.n_test"], cfg["task.data_seed"])
    build, _ = build_for_task(cfg, data.input_shape, data.n_classes)
    final = ckpt[ckpt["step"] == ckpt["step"].max()].set_index("model_id").loc[ids]
    weights = np.stack(final["weights"].to_numpy())[None]
    res = measure_population(Population(
        model=build(), objective=objective_for(data), data=data, weights=weights, steps=[int(ckpt["step"].max())],
        layout=layout_of(build()), model_ids=ids, cell_ids=same_cell["cell_id"].tolist(), status=["ok"] * len(ids),
        lr=same_cell["config.train.lr"].tolist(), optimizer=cfg["train.optimizer"], momentum=cfg["train.momentum"]),
        MetricsSpec(lmc="none"))
    for col in ("hessian.trace", "spectral.alpha_mean", "connectivity.barrier", "similarity.cka"):
        np.testing.assert_allclose(res.per_model[col], same_cell[col], rtol=2e-3, err_msg=col)


def test_metrics_command_adds_to_an_existing_zoo_and_keeps_it_valid(measured_zoo, tmp_path):
    damaged = tmp_path / "damaged"  # tables changed behind zoo.json's back: refused, never re-hashed
    shutil.copytree(measured_zoo, damaged)
    (damaged / "layers.parquet").unlink()
    r = run_zoo("metrics", "spectral", str(damaged), "--quiet")
    assert r.returncode == 2 and "layers.parquet" in r.stderr and not (damaged / "layers.parquet").exists()

    out = tmp_path / "copy"
    shutil.copytree(measured_zoo, out)
    r = run_zoo("metrics", "spectral", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    again = pd.read_parquet(out / "models.parquet")
    before = pd.read_parquet(measured_zoo / "models.parquet")
    np.testing.assert_allclose(again["spectral.alpha_mean"], before["spectral.alpha_mean"], rtol=1e-9)
    assert (out / "layers.parquet").is_file() and verify(out) == []
    assert run_zoo("verify", str(out)).returncode == 0


def test_sharpness_per_checkpoint_option(tmp_path, data_root):
    out = tmp_path / "sharp"
    r = run_zoo("build", "--preset", "smoke", "--out", str(out), "--quiet", "--set", "metrics.hessian_checkpoints=true",
                "--set", "metrics.lmc=none", "--set", "metrics.bezier_steps=0", "--set", "metrics.spectral=false")
    assert r.returncode == 0, r.stderr
    ckpt = pd.read_parquet(out / "checkpoints", columns=["model_id", "step", "hessian.top_eig", "hessian.trace"])
    assert ckpt["hessian.trace"].notna().all() and ckpt["step"].nunique() == 5
    m = pd.read_parquet(out / "models.parquet").set_index("model_id")
    last = ckpt[ckpt["step"] == ckpt["step"].max()].set_index("model_id")
    np.testing.assert_allclose(last.loc[m.index, "hessian.trace"], m["hessian.trace"])  # final = models row


@pytest.mark.parametrize("preset", ["vit-digits", "gpt-modular"])
def test_transformer_build_measures_aligned_lmc(preset, tmp_path, data_root):
    """One tiny cell of the transformer presets: every alignment that applies is measured, no note."""
    out = tmp_path / preset
    r = run_zoo("build", "--preset", preset, "--out", str(out), "--quiet",
                "--set", 'phase.axes=[{name="capacity", key="arch.width", values=[8]}]',
                "--set", "train.steps=20", "--set", "train.checkpoints=1", "--set", "task.n_train=256",
                "--set", "task.n_test=128", "--set", "metrics.lmc=all", "--set", "metrics.probe_size=64",
                "--set", "metrics.bezier_steps=0", "--set", "metrics.hessian=false", "--set", "metrics.spectral=false")
    assert r.returncode == 0, r.stderr
    assert (pd.read_parquet(out / "models.parquet")["metrics_note"] == "").all()
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert pairs["alignment"].tolist() == ["none", "weight", "activation"]
    assert np.isfinite(pairs["barrier_max.test.err"]).all() and pairs.filter(like="perm.P_blocks.0.attn").shape[1] == 1


def test_metrics_and_plot_commands_reject_bad_folders(tmp_path):
    for args in (("metrics", "spectral", str(tmp_path / "nope")), ("plot", str(tmp_path))):
        r = run_zoo(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "zoo: error:" in r.stderr


def test_adaptive_build_runs_end_to_end(tmp_path, data_root):
    out = tmp_path / "adaptive"
    r = run_zoo("build", "--phase", "adaptive", "--preset", "smoke", "--out", str(out), "--quiet",
                "--set", "phase.budget=4", "--set", "metrics.lmc=none", "--set", "metrics.bezier_steps=0")
    assert r.returncode == 0, r.stderr
    m = pd.read_parquet(out / "models.parquet")
    assert len(m) == 4 and m["cell_id"].nunique() == 2


def test_a_failing_metric_family_is_a_note_not_a_lost_population(monkeypatch):
    """A family that cannot handle an architecture (here: LMC raising) leaves the rest measured."""
    import torch
    from torch import nn

    import zoo.metrics.lmc as lmc
    from zoo.functional import stack_states, to_flat
    from zoo.generators.tasks.base import TaskData

    def broken(*args, **kwargs):
        raise ValueError("permutation_spec: unsupported method .transpose()")

    monkeypatch.setattr(lmc, "lmc_pairs", broken)
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)) for _ in range(4)]
    params, buffers = stack_states(models)
    lay = layout_of(models[0])
    weights = to_flat(params, buffers, lay).detach().numpy()[None]
    rng = np.random.default_rng(0)
    data = TaskData("toy", rng.normal(size=(128, 5)).astype(np.float32), rng.integers(0, 3, 128),
                    rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64), n_classes=3)
    res = measure_population(Population(
        model=models[0], objective=objective_for(data), data=data, weights=weights, steps=[10], layout=lay,
        model_ids=list("abcd"), cell_ids=["c1", "c1", "c2", "c2"], status=["ok"] * 4, lr=[0.1] * 4,
        optimizer="sgd", momentum=0.9), MetricsSpec(bezier_steps=5, lmc="weight"))
    assert all("lmc: ValueError: permutation_spec" in note for note in res.notes)
    assert np.isfinite(res.per_model["hessian.trace"]).all() and np.isfinite(res.per_model["connectivity.mc"]).all()
    assert set(res.pairs["alignment"]) == {"none"} and len(res.pairs) == 2


def test_pairs_across_cells_are_added_flagged_and_kept_out_of_model_means():
    import torch
    from torch import nn

    from zoo.functional import stack_states, to_flat
    from zoo.generators.tasks.base import TaskData

    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)) for _ in range(4)]
    params, buffers = stack_states(models)
    lay = layout_of(models[0])
    weights = to_flat(params, buffers, lay).detach().numpy()[None]
    rng = np.random.default_rng(0)
    data = TaskData("toy", rng.normal(size=(128, 5)).astype(np.float32), rng.integers(0, 3, 128),
                    rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64), n_classes=3)

    def measure(pairs):
        spec = MetricsSpec(hessian=False, spectral=False, bezier_steps=5, lmc="weight", pairs=pairs)
        return measure_population(Population(
            model=models[0], objective=objective_for(data), data=data, weights=weights, steps=[10], layout=lay,
            model_ids=list("abcd"), cell_ids=["c1", "c1", "c2", "c2"], status=["ok"] * 4, lr=[0.1] * 4,
            optimizer="sgd", momentum=0.9), spec)

    cell, population = measure("cell"), measure("population")
    rows = population.pairs
    assert len(rows) == 2 * 6 and rows["cross_cell"].sum() == 2 * 4  # 6 pairs x (none, weight)
    same = rows[~rows["cross_cell"]].drop(columns=["cell_id_b", "cross_cell"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(same.drop(columns=[c for c in same if c.startswith("perm.")]),
                                  cell.pairs.drop(columns=[c for c in cell.pairs if c.startswith("perm.")]))
    cross = rows[rows["cross_cell"] & (rows["alignment"] == "weight")]
    assert (cross["cell_id"] != cross["cell_id_b"]).all() and np.isfinite(cross["barrier_max.test.loss"]).all()
    for col in ("connectivity.mc", "connectivity.barrier", "similarity.cka"):
        np.testing.assert_array_equal(population.per_model[col], cell.per_model[col])
