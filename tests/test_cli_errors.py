"""Bad input: one line on stderr, exit code 2, no traceback, nothing already written damaged."""

import subprocess
import sys

import pytest

from zoo.io import sha256_file
from zoo.spec import SpecError, load_spec, preset_names

ZOO = [sys.executable, "-m", "zoo.cli"]


def run_zoo(*args):
    return subprocess.run([*ZOO, *args], capture_output=True, text=True)


def assert_user_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("args,words", [
    (["--preset", "nope"], ["unknown preset", "smoke"]),
    (["--set", "train.stepz=3"], ["train.stepz", "train.steps"]),
    (["--set", "train.steps=abc"], ["train.steps", "int"]),
    (["--set", "train.steps=0"], ["train.steps", "[1, 1e9]"]),
    (["--set", "arch.family=transformer"], ["arch.family", "mlp"]),
    (["--set", "phase.seeds=[]"], ["phase.seeds"]),
    (["--set", "phase.axes=[{key='arch.width', values=[]}]"], ["arch.width", "no values"]),
    (["--set", "phase.axes=[{key='arch.width', values=[4, 4]}]"], ["duplicate"]),
    (["--set", "phase.axes=[{key='train.lr', values=[0.1, -1.0]}]"], ["train.lr"]),
    (["--set", "nokey"], ["section.key=value"]),
    (["--phase", "spiral"], ["invalid choice"]),
    (["--jobs", "0"], ["--jobs"]),
    (["--set", "phase.budget=-4"], ["phase.budget"]),
    (["--set", "build.max_population=0"], ["build.max_population", "[1, 1e6]"]),
    (["--set", "metrics.lmc=sometimes"], ["metrics.lmc", "weight"]),
    (["--set", "metrics.pairs=everywhere"], ["metrics.pairs", "population"]),
    (["--set", "metrics.curve_points=2"], ["metrics.curve_points"]),
    (["--set", "arch.dropout=1.0"], ["arch.dropout", "[0, 1)"]),
    (["--set", "arch.family=pinn", "--set", "arch.dropout=0.5"], ["arch.dropout", "mlp, cnn"]),
    (["--set", "metrics.thresholds={sharpness=1}"], ["metrics.thresholds.sharpness", "loss_fraction"]),
])
def test_bad_build_arguments(tmp_path, args, words):
    out = tmp_path / "out"
    assert_user_error(run_zoo("build", "--preset", "smoke", "--out", str(out), *args)
                      if "--preset" not in args else run_zoo("build", "--out", str(out), *args), *words)
    assert not out.exists()


def test_malformed_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[task\nname = 'mnist1d'")
    assert_user_error(run_zoo("build", "--preset", str(bad), "--out", str(tmp_path / "o")), "malformed TOML")


def test_output_folder_problems(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert_user_error(run_zoo("build", "--preset", "smoke", "--out", str(foreign)), "not empty")
    assert (foreign / "thesis.tex").read_text() == "precious"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_user_error(run_zoo("build", "--preset", "smoke", "--out", str(afile)), "is a file")


def test_unwritable_output_folder(tmp_path):
    import os
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    target = ro / "z" if os.geteuid() != 0 else "/proc/zoo-cannot-write-here/z"  # root ignores modes
    assert_user_error(run_zoo("build", "--preset", "smoke", "--out", str(target)), "not writable")


def test_different_spec_into_existing_zoo_and_corrupt_shard(tmp_path, data_root):
    out = tmp_path / "z"
    args = ["build", "--preset", "smoke", "--out", str(out), "--quiet", "--set", "train.steps=20"]
    assert run_zoo(*args).returncode == 0
    before = {p: sha256_file(p) for p in out.rglob("*") if p.is_file()}
    assert_user_error(run_zoo("build", "--preset", "smoke", "--out", str(out), "--set", "train.steps=21"),
                      "different spec")
    shard = sorted((out / ".zoo" / "shards").glob("*.npz"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    before[shard] = sha256_file(shard)
    assert_user_error(run_zoo(*args), "corrupt shard", shard.name, "--repair")
    assert {p: sha256_file(p) for p in out.rglob("*") if p.is_file()} == before  # nothing damaged
    assert run_zoo(*args, "--repair").returncode == 0
    assert list((out / ".zoo" / "shards").glob("*.corrupt-*"))  # moved aside, not deleted


def test_info_on_a_folder_that_is_not_a_zoo(tmp_path):
    assert_user_error(run_zoo("info", str(tmp_path)), "not a published zoo")


def test_every_preset_validates():
    for name in preset_names():
        spec = load_spec(name)
        assert spec.n_models > 0
    assert load_spec("default").n_models == 60
    with pytest.raises(SpecError):
        load_spec("smoke", ["task.label_noise=2"])


@pytest.mark.parametrize("name,params", [("modelzoos-cnn-s-mnist", 2464), ("modelzoos-cnn-s-fashion-mnist", 2464),
                                         ("modelzoos-cnn-l-cifar10", 10853), ("modelzoos-cnn-l-svhn", 10853)])
def test_model_zoos_presets_mirror_the_reference_grid(name, params):
    from zoo.cost import estimate

    spec = load_spec(name)
    axes = {a.key: a.values for a in spec.phase.axes}
    assert axes["arch.dropout"] == [0.0, 0.5] and axes["train.optimizer"] == ["adam", "sgd"]
    assert spec.n_models == 4 * 6 * 2 * 2 * 2 * 2 * 4  # activation, init, lr, wd, optimizer, dropout, seeds
    cost = estimate(spec)
    assert cost["params_min"] == cost["params_max"] == params  # the reference CNN sizes (Schuerholt et al.)


def test_folder_from_a_newer_schema_is_refused_untouched(tmp_path):
    import json

    out = tmp_path / "zoo"
    assert run_zoo("build", "--preset", "smoke", "--out", str(out), "--quiet",
                   "--set", "metrics.lmc=none").returncode == 0
    manifest = json.loads((out / "zoo.json").read_text())
    manifest["schema_version"] = 99
    (out / "zoo.json").write_text(json.dumps(manifest))
    before = {p: sha256_file(p) for p in out.rglob("*") if p.is_file()}
    for args in (["build", "--preset", "smoke", "--out", str(out), "--set", "metrics.lmc=none"],
                 ["info", str(out)], ["verify", str(out)], ["metrics", "spectral", str(out)], ["plot", str(out)]):
        assert_user_error(run_zoo(*args), "schema")
    assert before == {p: sha256_file(p) for p in out.rglob("*") if p.is_file()}


def test_adaptive_refine_metric_is_checked_before_training(tmp_path):
    r = run_zoo("build", "--phase", "adaptive", "--preset", "smoke", "--set", "phase.refine_metric=foo",
                "--out", str(tmp_path / "out"))
    assert_user_error(r, "phase.refine_metric", "train_loss", "hessian.*", "'foo'")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SpecError, match="hessian"):  # a switched-off metric's columns are not offered
        load_spec("smoke", ["phase.sampler='adaptive'", "phase.refine_metric='hessian.trace'", "metrics.hessian=false"])


def test_memory_budget_message_uses_a_readable_unit(tmp_path):
    r = run_zoo("build", "--preset", "smoke", "--max-memory", "1K", "--out", str(tmp_path / "out"))
    assert_user_error(r, "KiB", "memory budget 1 KiB")
