"""The bad-input catalogue (issue 19): every case exits with code 2 and ONE line on stderr that names
the field or file and what is expected, no traceback, and every folder the case touches is
byte-identical afterwards (every file hashed before and after; a folder that did not exist must
not appear).

Spec cases call ``zoo.cli.main`` in-process; a spec that passes validation fails the case at once
(``no_training``) instead of training a zoo. Folder cases damage a copy of one small zoo built once
per module. A few cases need a subprocess: a real read-only mount, and a traceback check of the
interpreter itself.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from zoo.cli import main
from zoo.io import sha256_file
from zoo.metrics.registry import OPTIONS
from zoo.spec import SECTIONS

SMOKE = ["build", "--preset", "smoke", "--quiet"]
ZOO = [sys.executable, "-m", "zoo.cli"]


# ---------------------------------------------------------------- helpers

def tree(folder: Path) -> dict[str, str]:
    """Every file (sha256) and folder under ``folder``: what must not change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for d in dirnames:
            out[(base / d).relative_to(folder).as_posix()] = "dir"
        for f in filenames:
            p = base / f
            out[p.relative_to(folder).as_posix()] = "link" if p.is_symlink() else sha256_file(p)
    return out


def zoo_main(capsys, *args) -> tuple[int, str, str]:
    """``zoo ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(result, *words) -> str:
    rc, out, err = result
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, f"exit {rc}\nstdout: {out}\nstderr: {err}"
    for w in words:
        assert w in lines[0], f"{w!r} not in: {lines[0]}"
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """A spec that passes validation fails the case at once instead of training a zoo."""
    def accepted(spec, out, **kwargs):
        raise AssertionError(f"spec accepted: {spec}")

    monkeypatch.setattr("zoo.pipeline.build", accepted)


# ---------------------------------------------------------------- generated: every field of every section

WRONG_TYPE = {
    "int": ["'x'", "1.5", "true", "[1]"],
    "float": ["'x'", "true", "[0.5]", "nan", "inf", "-inf"],
    "str": ["3", "true", "[1]"],
    "bool": ["'yes'", "1", "0.5"],
    "list": ["3", "'x'"],
    "dict": ["3", "'x'", "[1]"],
}
HUGE = str(2**63 - 1)
BAD_VALUES = {  # values of the right type that make no sense for the field
    "task.name": ["'nope'"], "task.n_train": ["0", "-1", "10000000000", HUGE], "task.n_test": ["0", "-1", HUGE],
    "task.train_fraction": ["0", "-0.5", "1.5"], "task.label_noise": ["-0.1", "1.5"],
    "task.data_seed": ["-1", "4294967296", HUGE], "task.modulus": ["0", "1", "-7", "1000000"],
    "task.operation": ["'pow'"], "task.input_dim": ["0", "-1", "10000000"],
    "arch.family": ["'transformer'"], "arch.width": ["0", "-1", "1000000000000000", HUGE],
    "arch.depth": ["0", "-1", "100000"], "arch.activation": ["'swish'"], "arch.init": ["'zeros'"],
    "arch.dropout": ["-0.1", "1.0", "2.5"], "arch.heads": ["0", "-1", "1000000"],
    "arch.patch_size": ["0", "-1", "1000000"],
    "train.steps": ["0", "-1", "1000000001", HUGE], "train.epochs": ["-1.0", "1e7", "1e300"],
    "train.batch_size": ["0", "-1", "100000000"], "train.optimizer": ["'lbfgs'"], "train.lr": ["0", "-0.1"],
    "train.momentum": ["-0.1", "1.0"], "train.weight_decay": ["-0.0001"], "train.schedule": ["'step'"],
    "train.checkpoints": ["0", "-1", "1000000"],
    "phase.sampler": ["'random'"], "phase.seeds": ["[]", "[-1]", "[0, 0]", "[1.5]", "[true]", "['a']",
                                                   "[4294967296]", "[nan]", "[[0]]"],
    "phase.budget": ["-1", "10000000000"], "phase.coarse_stride": ["0", "-1", "100000"],
    "phase.axes": ["[3]", "['x']", "[{key='arch.width'}]"],
    "metrics.hessian_batches": ["0", "-1", "100000"], "metrics.hessian_batch_size": ["0", "-1", "10000000"],
    "metrics.hessian_max_iter": ["0", "-1", "10000000"], "metrics.hessian_tol": ["0", "-0.001", "1.0", "2.0"],
    "metrics.hessian_top_k": ["0", "-1", "100000"], "metrics.spectral_checkpoints": ["'some'"],
    "metrics.curve_points": ["2", "0", "-1", "100000"], "metrics.bezier_steps": ["-2", "100000000"],
    "metrics.bezier_budget": ["0", "-1.0", "1000.0"],
    "metrics.bezier_lr": ["-0.1"], "metrics.probe_size": ["0", "-1", "10000000"],
    "metrics.lmc": ["'sometimes'"], "metrics.pairs": ["'everywhere'"],
    "metrics.thresholds": ["{loss_fraction='x'}", "{loss_fraction=nan}", "{loss_fraction=true}",
                           "{loss_fraction=0}", "{sharpness=1}", "{sharp_quantile=2.0}", "{cka_high=-1}",
                           "{mc_tolerance=-1}", "{mc_tolerance=inf}", "{sharpness_metric='hessian.norm'}",
                           "{sharpness_metric=3}", "{loss_fraction={a=1}}"],
    "build.max_population": ["0", "-1", "10000000"],
    "build.split": ["[0.5, 0.5]", "[nan, 0.5, 0.5]", "[inf, 0.0, 0.0]", "[0.8, 0.1, 0.2]", "[-0.1, 0.6, 0.5]",
                    "['a', 0.5, 0.5]", "[true, false, false]", "[0.8, 0.1, 0.1, 0.0]"],
    "build.split_seed": ["-1", "4294967296"],
}


def spec_fields() -> dict[str, str]:
    """Every key a user can set, with its type's name: the sections' fields (``metrics.options``
    is the registered metrics' options, listed one by one) and each metric's options."""
    keys = {f"{s}.{f.name}": str(f.type) for s, cls in SECTIONS.items() for f in fields(cls)
            if f"{s}.{f.name}" != "metrics.options"}
    keys.update({f"metrics.{k}": type(o.default).__name__ for k, o in OPTIONS.items()})
    return keys


def option_bad_values(key: str) -> list[str]:
    """Out-of-range and off-choice values of a registered metric option."""
    option = OPTIONS.get(key.removeprefix("metrics."))
    if option is None:
        return []
    out = ["-1000000000000", "1000000000000"] if option.range else []
    return out + (["'not-a-choice'"] if option.choices else [])


def generated_cases():
    for key, type_name in spec_fields().items():
        for value in WRONG_TYPE.get(type_name, []) + BAD_VALUES.get(key, []) + option_bad_values(key):
            yield pytest.param(key, value, id=f"{key}={value}")


def test_the_catalogue_covers_every_field():
    keys = spec_fields()
    assert set(BAD_VALUES) <= set(keys)
    untyped = [k for k, t in keys.items() if t not in WRONG_TYPE]
    assert not untyped, f"fields of a type the catalogue cannot generate cases for: {untyped}"


@pytest.mark.parametrize("key,value", list(generated_cases()))
def test_every_field_refuses_a_bad_value(key, value, tmp_path, capsys, no_training):
    before = tree(tmp_path)
    line = assert_user_error(zoo_main(capsys, *SMOKE, "--out", tmp_path / "out", "--set", f"{key}={value}"), key)
    assert "expected" in line
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- hand-written spec cases

DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_TABLE = "{a = " * 30_000 + "1" + "}" * 30_000
FILES = {  # name -> content (None: a folder of that name)
    "latin1.toml": "name = 'café'\n".encode("latin-1"),
    "utf16.toml": "name = 'x'\n[train]\nsteps = 5\n".encode("utf-16"),
    "garbage.toml": bytes(range(256)) * 8,
    "nul.toml": b"name = 'x'\x00\n",
    "deep-array.toml": f"name = {DEEP_ARRAY}\n".encode(),
    "deep-table.toml": f"name = {DEEP_TABLE}\n".encode(),
    "dir.toml": None,
    "malformed.toml": b"[task\nname = 'mnist1d'",
    "unknown-section.toml": b"[colour]\nred = 1\n",
    "name-list.toml": b"name = [1]\n",
    "description-table.toml": b"description = {a = 1}\n",
    "task-scalar.toml": b"task = 3\n",
    "axes-table.toml": b"[phase]\naxes = {key = 'arch.width', values = [8]}\n",
    "nan-split.toml": b"[build]\nsplit = [nan, 0.5, 0.5]\n",
    "nan-lr.toml": b"[train]\nlr = nan\n",
    "axis-key-int.toml": b"[[phase.axes]]\nkey = 3\nvalues = [8]\n",
    "axis-name-list.toml": b"[[phase.axes]]\nkey = 'arch.width'\nname = ['a']\nvalues = [8]\n",
}
AXIS = "phase.axes=[{{key='{key}', values={values}}}]"
SPEC_CASES = [  # (id, arguments after `zoo build --out OUT`, words of the error line)
    *[(f"file {n}", ["--preset", "{tmp}/" + n], [n]) for n in
      ("latin1.toml", "utf16.toml", "garbage.toml", "nul.toml", "deep-array.toml", "deep-table.toml", "dir.toml",
       "malformed.toml")],
    ("file missing.toml", ["--preset", "{tmp}/missing.toml"], ["missing.toml"]),
    ("file unknown section", ["--preset", "{tmp}/unknown-section.toml"], ["colour"]),
    ("file name list", ["--preset", "{tmp}/name-list.toml"], ["name", "expected"]),
    ("file description table", ["--preset", "{tmp}/description-table.toml"], ["description", "expected"]),
    ("file task scalar", ["--preset", "{tmp}/task-scalar.toml"], ["task"]),
    ("file axes table", ["--preset", "{tmp}/axes-table.toml"], ["phase.axes"]),
    ("file nan split", ["--preset", "{tmp}/nan-split.toml"], ["build.split"]),
    ("file nan lr", ["--preset", "{tmp}/nan-lr.toml"], ["train.lr", "finite"]),
    ("file axis key int", ["--preset", "{tmp}/axis-key-int.toml"], ["phase.axes", "key"]),
    ("file axis name list", ["--preset", "{tmp}/axis-name-list.toml"], ["phase.axes", "name"]),
    ("preset nope", ["--preset", "nope"], ["unknown preset", "smoke"]),
    ("preset empty", ["--preset", ""], ["preset"]),
    # --set syntax
    ("set deep array", ["--set", "train.steps=" + DEEP_ARRAY], ["train.steps"]),
    ("set deep table", ["--set", "metrics.thresholds=" + DEEP_TABLE], ["metrics.thresholds"]),
    ("set long string", ["--set", "train.steps=" + "x" * 5000], ["train.steps"]),
    ("set no value", ["--set", "train.steps"], ["section.key=value"]),
    ("set unknown section", ["--set", "colour.red=1"], ["colour"]),
    ("set unknown key", ["--set", "train.speed=1"], ["train.speed", "train.steps"]),
    ("set no section", ["--set", "steps=1"], ["section.key=value"]),
    ("set epochs 1e300", ["--set", "train.epochs=1e300"], ["train.epochs"]),
    ("set lr 1e400", ["--set", "train.lr=1e400"], ["train.lr", "finite"]),
    ("set width 1e15 float", ["--set", "arch.width=1e15"], ["arch.width", "int"]),
    # phase axes: every value is checked like the field it sets
    ("axis lr nan", ["--set", AXIS.format(key="train.lr", values="[0.1, nan]")], ["train.lr", "finite"]),
    ("axis lr inf", ["--set", AXIS.format(key="train.lr", values="[inf]")], ["train.lr", "finite"]),
    ("axis lr negative", ["--set", AXIS.format(key="train.lr", values="[0.1, -1.0]")], ["train.lr"]),
    ("axis lr zero", ["--set", AXIS.format(key="train.lr", values="[0]")], ["train.lr"]),
    ("axis lr string", ["--set", AXIS.format(key="train.lr", values="['fast']")], ["train.lr"]),
    ("axis wd nan", ["--set", AXIS.format(key="train.weight_decay", values="[nan]")], ["train.weight_decay"]),
    ("axis momentum 1.5", ["--set", AXIS.format(key="train.momentum", values="[0.5, 1.5]")], ["train.momentum"]),
    ("axis epochs inf", ["--set", AXIS.format(key="train.epochs", values="[1.0, inf]")], ["train.epochs"]),
    ("axis width float", ["--set", AXIS.format(key="arch.width", values="[8, 1e15]")], ["arch.width", "int"]),
    ("axis width huge", ["--set", AXIS.format(key="arch.width", values=f"[{10**15}]")], ["arch.width"]),
    ("axis width zero", ["--set", AXIS.format(key="arch.width", values="[0, 8]")], ["arch.width"]),
    ("axis steps int64", ["--set", AXIS.format(key="train.steps", values=f"[{HUGE}]")], ["train.steps"]),
    ("axis family nope", ["--set", AXIS.format(key="arch.family", values="['mlp', 'nope']")], ["arch.family"]),
    ("axis dropout 1", ["--set", AXIS.format(key="arch.dropout", values="[0.0, 1.0]")], ["arch.dropout"]),
    ("axis seed key", ["--set", AXIS.format(key="phase.seeds", values="[[0]]")], ["phase.seeds"]),
    ("axis unknown key", ["--set", AXIS.format(key="arch.colour", values="[1]")], ["arch.colour"]),
    ("axis values scalar", ["--set", AXIS.format(key="arch.width", values="8")], ["arch.width"]),
    ("axis values empty", ["--set", AXIS.format(key="arch.width", values="[]")], ["arch.width"]),
    ("axis values duplicate", ["--set", AXIS.format(key="arch.width", values="[8, 8]")], ["arch.width"]),
    ("axis extra key", ["--set", "phase.axes=[{key='arch.width', values=[8], step=2}]"], ["phase.axes"]),
    ("axis twice", ["--set", "phase.axes=[{key='arch.width', values=[8]}, {key='arch.width', values=[16]}]"],
     ["arch.width", "twice"]),
    ("axis names twice", ["--set", "phase.axes=[{key='arch.width', values=[8], name='x'}, "
                          "{key='train.lr', values=[0.1], name='x'}]"], ["phase.axes", "x"]),
    ("grid too large", ["--set", "phase.axes=[" + ", ".join(
        f"{{key='{k}', values={list(range(1, 101))}}}" for k in ("arch.width", "arch.depth", "train.steps"))
        + "]"], ["phase"]),
    # combinations found late before: checked for every cell of the grid at validation
    ("vit digits patch 3", ["--set", "task.name='digits'", "--set", "arch.family='vit'",
                            "--set", "arch.patch_size=3"], ["arch.patch_size", "digits"]),
    ("vit digits patch axis", ["--set", "task.name='digits'", "--set", "arch.family='vit'", "--set",
                               "phase.axes=[{key='arch.patch_size', values=[2, 3]}]"], ["arch.patch_size", "3"]),
    ("vit width x heads cell", ["--set", "task.name='digits'", "--set", "arch.family='vit'",
                                "--set", "arch.width=12", "--set", "arch.heads=2", "--set",
                                "phase.axes=[{key='arch.width', values=[8, 12]}, {key='arch.heads', values=[2, 3]}]"],
     ["arch.width", "arch.heads"]),
    ("cnn_s on digits", ["--set", "task.name='digits'", "--set", "arch.family='cnn_s'"], ["cnn_s", "digits"]),
    ("cnn_l on digits", ["--set", "task.name='digits'", "--set", "arch.family='cnn_l'"], ["cnn_l", "digits"]),
    ("cnn too deep for mnist1d", ["--set", "arch.family='cnn'", "--set", "arch.depth=7"], ["cnn", "mnist1d"]),
    ("gpt on mnist1d", ["--set", "arch.family='gpt'"], ["gpt", "modular"]),
    ("resnet on mnist1d", ["--set", "arch.family='resnet18'"], ["resnet18", "image"]),
    ("dropout on pinn", ["--set", "arch.family='pinn'", "--set", "arch.dropout=0.5"], ["arch.dropout"]),
    ("label noise regression", ["--set", "task.name='teacher_student'", "--set", "task.label_noise=0.1"],
     ["task.label_noise"]),
    ("n_train over mnist1d", ["--set", "task.n_train=4800"], ["task.n_train"]),
    ("modular div pairs", ["--set", "task.name='modular'", "--set", "task.operation='div'", "--set",
                           "task.modulus=11", "--set", "task.n_train=100", "--set", "task.n_test=20",
                           "--set", "train.batch_size=8"], ["task.n_train"]),
    ("batch over samples", ["--set", "train.batch_size=600", "--set", "task.train_fraction=0.5"],
     ["train.batch_size"]),
    ("batch axis over samples", ["--set", AXIS.format(key="train.batch_size", values="[32, 2000]")],
     ["train.batch_size"]),
    ("checkpoints over steps", ["--set", "train.steps=3", "--set", "train.checkpoints=4"], ["train.checkpoints"]),
    ("checkpoints over epoch steps", ["--set", "train.epochs=0.01", "--set", "train.checkpoints=4"],
     ["train.checkpoints"]),
    ("epochs make too many steps", ["--set", "train.epochs=1000000", "--set", "train.batch_size=1",
                                    "--set", "task.n_train=4000"],
     ["train.epochs"]),
    # other build options
    ("max-memory nan", ["--max-memory", "nan"], ["--max-memory"]),
    ("max-memory inf", ["--max-memory", "inf"], ["--max-memory"]),
    ("max-memory -inf", ["--max-memory=-inf"], ["--max-memory"]),
    ("max-memory 1e400", ["--max-memory", "1e400"], ["--max-memory"]),
    ("max-memory negative", ["--max-memory=-4G"], ["--max-memory"]),
    ("max-memory zero", ["--max-memory", "0"], ["--max-memory"]),
    ("max-memory word", ["--max-memory", "lots"], ["--max-memory"]),
    ("max-memory empty", ["--max-memory", ""], ["--max-memory"]),
    ("max-memory unit", ["--max-memory", "4X"], ["--max-memory"]),
    ("jobs zero", ["--jobs", "0"], ["--jobs"]),
    ("jobs negative", ["--jobs=-2"], ["--jobs"]),
    ("jobs word", ["--jobs", "many"], ["--jobs"]),
    ("phase spiral", ["--phase", "spiral"], ["--phase"]),
    ("precision bf16 on cpu", ["--precision", "bf16"], ["--precision"]),
    ("backend unknown", ["--backend", "mpi"], ["--backend"]),
    ("device unknown", ["--device", "tpu"], ["--device"]),
]


def write_files(tmp: Path) -> None:
    for name, content in FILES.items():
        if content is None:
            (tmp / name).mkdir()
        else:
            (tmp / name).write_bytes(content)


@pytest.mark.parametrize("args,words", [pytest.param(a, w, id=i) for i, a, w in SPEC_CASES])
def test_bad_spec(args, words, tmp_path, capsys, no_training):
    specs = tmp_path / "specs"
    specs.mkdir()
    write_files(specs)
    before = tree(tmp_path)
    args = [a.replace("{tmp}", str(specs)) for a in args]
    assert_user_error(zoo_main(capsys, "build", "--preset", "smoke", "--out", tmp_path / "out", *args), *words)
    assert tree(tmp_path) == before


def test_bf16_and_cuda_need_a_gpu(tmp_path, capsys, no_training):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert_user_error(zoo_main(capsys, *SMOKE, "--out", tmp_path / "o", "--device", "cuda"), "--device cuda")
    assert_user_error(zoo_main(capsys, "presets", "smoke", "--calibrate", "--device", "cuda"), "--device cuda")
    assert not (tmp_path / "o").exists()


PRESETS_CASES = [
    ("nope", ["nope"], ["unknown preset"]),
    ("malformed file", ["{tmp}/malformed.toml"], ["malformed.toml"]),
    ("latin1 file", ["{tmp}/latin1.toml"], ["latin1.toml"]),
    ("deep file", ["{tmp}/deep-array.toml"], ["deep-array.toml"]),
    ("folder", ["{tmp}/dir.toml"], ["dir.toml"]),
    ("nan lr file", ["{tmp}/nan-lr.toml"], ["train.lr"]),
    ("nan split file", ["{tmp}/nan-split.toml"], ["build.split"]),
    ("one bad of two", ["smoke", "{tmp}/missing.toml"], ["missing.toml"]),
]


@pytest.mark.parametrize("args,words", [pytest.param(a, w, id=i) for i, a, w in PRESETS_CASES])
def test_bad_presets(args, words, tmp_path, capsys):
    write_files(tmp_path)
    before = tree(tmp_path)
    assert_user_error(zoo_main(capsys, "presets", *[a.replace("{tmp}", str(tmp_path)) for a in args]), *words)
    assert tree(tmp_path) == before


def test_width_within_bounds_reaches_the_memory_check(tmp_path, capsys, data_root):
    """A width the spec allows but no memory holds fails at the memory check, counted in Python ints
    on the meta device before anything is allocated (not torch's 'Storage size calculation overflowed')."""
    out = tmp_path / "out"
    for axis, words in ((AXIS.format(key="arch.width", values="[1000000]"), ["memory", "width 1000000"]),
                        (AXIS.format(key="arch.width", values="[64]"), ["memory", "--max-memory"])):
        memory = ["--max-memory", "1K"] if "[64]" in axis else []
        assert_user_error(zoo_main(capsys, *SMOKE, "--out", out, "--set", axis, *memory), *words)
        assert not out.exists()


# ---------------------------------------------------------------- published zoos, damaged

@pytest.fixture(scope="module")
def published(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("bad-inputs") / "zoo"
    assert main([*SMOKE, "--out", str(out), "--set", "train.steps=30", "--set", "phase.seeds=[0]"]) == 0
    return out


def _manifest(root: Path) -> dict:
    return json.loads((root / "zoo.json").read_text())


def _set_manifest(root: Path, **changes) -> None:
    (root / "zoo.json").write_text(json.dumps({**_manifest(root), **changes}))


def _part(root: Path) -> Path:
    return sorted((root / "checkpoints").glob("part-*.parquet"))[-1]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rehash(root: Path, rel: str) -> None:
    """Record the damaged file's hash, so that only reading it can find the damage."""
    m = _manifest(root)
    m["files"][rel] = sha256_file(root / rel)
    (root / "zoo.json").write_text(json.dumps(m))


def _models_without_status(root: Path) -> None:
    import pandas as pd

    pd.read_parquet(root / "models.parquet").drop(columns=["status"]).to_parquet(root / "models.parquet")
    _rehash(root, "models.parquet")


ALL = ("info", "verify", "plot", "metrics", "export")
DAMAGE = {  # name -> (damage(root), commands that must refuse, words of the error line)
    "zoo.json binary": (lambda r: (r / "zoo.json").write_bytes(bytes(range(256))), ALL, ["zoo.json"]),
    "zoo.json []": (lambda r: (r / "zoo.json").write_text("[]"), ALL, ["zoo.json"]),
    "zoo.json {}": (lambda r: (r / "zoo.json").write_text("{}"), ALL, ["zoo.json"]),
    "zoo.json null": (lambda r: (r / "zoo.json").write_text("null"), ALL, ["zoo.json"]),
    "zoo.json empty": (lambda r: (r / "zoo.json").write_text(""), ALL, ["zoo.json"]),
    "zoo.json deep": (lambda r: (r / "zoo.json").write_text("[" * 100_000 + "]" * 100_000), ALL, ["zoo.json"]),
    "zoo.json schema 'abc'": (lambda r: _set_manifest(r, schema_version="abc"), ALL, ["zoo.json", "schema_version"]),
    "zoo.json schema 1.5": (lambda r: _set_manifest(r, schema_version=1.5), ALL, ["schema_version"]),
    "zoo.json schema true": (lambda r: _set_manifest(r, schema_version=True), ALL, ["schema_version"]),
    "zoo.json files list": (lambda r: _set_manifest(r, files=["models.parquet"]), ALL, ["zoo.json", "files"]),
    "zoo.json spec string": (lambda r: _set_manifest(r, spec="smoke"), ALL, ["zoo.json", "spec"]),
    "zoo.json missing": (lambda r: (r / "zoo.json").unlink(), ALL, ["zoo.json"]),
    "zoo.json folder": (lambda r: ((r / "zoo.json").unlink(), (r / "zoo.json").mkdir()), ALL, ["zoo.json"]),
    "models.parquet truncated": (lambda r: _truncate(r / "models.parquet"), ALL, ["models.parquet"]),
    "models.parquet missing": (lambda r: (r / "models.parquet").unlink(), ALL, ["models.parquet"]),
    "models.parquet empty": (lambda r: (r / "models.parquet").write_bytes(b""), ALL, ["models.parquet"]),
    "models.parquet garbage, hash recorded": (
        lambda r: ((r / "models.parquet").write_bytes(b"PAR1" + bytes(100) + b"PAR1"), _rehash(r, "models.parquet")),
        ALL, ["models.parquet"]),
    "models.parquet without status, hash recorded": (_models_without_status, ("info", "verify"),
                                                     ["models.parquet", "status"]),
    "layout.parquet missing": (lambda r: (r / "layout.parquet").unlink(), ALL, ["layout.parquet"]),
    "layout.parquet truncated": (lambda r: _truncate(r / "layout.parquet"), ALL, ["layout.parquet"]),
    "checkpoint part deleted": (lambda r: _part(r).unlink(), ALL, ["part-"]),
    "checkpoints folder deleted": (lambda r: shutil.rmtree(r / "checkpoints"), ALL, ["checkpoints"]),
    "checkpoint part garbage, hash recorded": (
        lambda r: (_part(r).write_bytes(b"garbage"), _rehash(r, f"checkpoints/{_part(r).name}")),
        ("verify", "metrics"), ["part-"]),  # export reads the weights from zoo.h5
    "zoo.h5 garbage": (lambda r: (r / "zoo.h5").write_bytes(b"not hdf5 " * 100), ALL, ["zoo.h5"]),
    "zoo.h5 truncated": (lambda r: _truncate(r / "zoo.h5"), ALL, ["zoo.h5"]),
    "zoo.h5 garbage, hash recorded": (
        lambda r: ((r / "zoo.h5").write_bytes(b"not hdf5 " * 100), _rehash(r, "zoo.h5")),
        ("info", "verify", "metrics", "export"), ["zoo.h5"]),
    "README.md deleted": (lambda r: (r / "README.md").unlink(), ALL, ["README.md"]),
    "plot deleted": (lambda r: sorted((r / "plots").glob("*.png"))[0].unlink(), ALL, ["plots/"]),
}
COMMANDS = {
    "info": lambda root, tmp: ["info", root],
    "verify": lambda root, tmp: ["verify", root],
    "plot": lambda root, tmp: ["plot", root],
    "metrics": lambda root, tmp: ["metrics", "spectral", root, "--quiet"],
    "export": lambda root, tmp: ["export", root, "--format", "npz", "--out", tmp / "export"],
}


def folder_cases():
    for name, (_, commands, words) in DAMAGE.items():
        for command in commands:
            yield pytest.param(name, command, words, id=f"{command}: {name}")


@pytest.mark.parametrize("damage,command,words", list(folder_cases()))
def test_damaged_zoo(damage, command, words, published, tmp_path, capsys):
    root = tmp_path / "zoo"
    shutil.copytree(published, root)
    DAMAGE[damage][0](root)
    before = tree(tmp_path)
    assert_user_error(zoo_main(capsys, *COMMANDS[command](root, tmp_path)), *words)
    assert tree(tmp_path) == before


def test_export_parquet_of_an_empty_manifest_is_refused(published, tmp_path, capsys):
    root = tmp_path / "zoo"
    shutil.copytree(published, root)
    (root / "zoo.json").write_text("{}")
    before = tree(tmp_path)
    for fmt in ("parquet", "hdf5", "npz"):
        assert_user_error(zoo_main(capsys, "export", root, "--format", fmt, "--out", tmp_path / "x"), "zoo.json")
    assert tree(tmp_path) == before


def test_rebuild_into_a_damaged_zoo_is_refused_untouched(published, tmp_path, capsys):
    root = tmp_path / "zoo"
    shutil.copytree(published, root)
    _truncate(root / "models.parquet")
    before = tree(tmp_path)
    assert_user_error(zoo_main(capsys, *SMOKE, "--out", root, "--set", "train.steps=30", "--set", "phase.seeds=[0]"),
                      "models.parquet", "--repair")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("name", ["missing", "afile", "empty"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_not_a_zoo(command, name, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    before = tree(tmp_path)
    assert_user_error(zoo_main(capsys, *COMMANDS[command](tmp_path / name, tmp_path)), name)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- bad requests on a sound zoo

def request_cases():
    yield "export out is a file", lambda r, t: ["export", r, "--format", "npz", "--out", t / "afile"], ["afile"]
    yield "export out is the zoo", lambda r, t: ["export", r, "--format", "parquet", "--out", r], ["--out"]
    yield "export hdf5 onto zoo.h5", lambda r, t: ["export", r, "--format", "hdf5", "--out", r / "zoo.h5"], ["--out"]
    yield "export hdf5 into the zoo", lambda r, t: ["export", r, "--format", "hdf5", "--out", r], ["--out"]
    yield "export into the zoo", lambda r, t: ["export", r, "--format", "npz", "--out", r / "npz"], ["--out"]
    yield "export format", lambda r, t: ["export", r, "--format", "xml", "--out", t / "x"], ["--format"]
    yield "export no out", lambda r, t: ["export", r, "--format", "npz"], ["--out"]
    yield "metrics family", lambda r, t: ["metrics", "everything", r], ["everything"]
    yield "metrics set nan tol", lambda r, t: ["metrics", "spectral", r, "--set", "metrics.hessian_tol=nan"], [
        "metrics.hessian_tol"]
    yield "metrics set bezier lr inf", lambda r, t: ["metrics", "landscape", r, "--set", "metrics.bezier_lr=inf"], [
        "metrics.bezier_lr"]
    yield "metrics set unknown threshold", lambda r, t: [
        "metrics", "spectral", r, "--set", "metrics.thresholds={sharpness=1}"], ["metrics.thresholds"]
    yield "metrics set non-metrics field", lambda r, t: ["metrics", "spectral", r, "--set", "train.lr=5.0"], [
        "train.lr", "metrics."]
    yield "metrics set malformed", lambda r, t: ["metrics", "spectral", r, "--set", "hessian_tol"], ["hessian_tol"]
    yield "info two folders", lambda r, t: ["info", r, r], ["unrecognized"]
    yield "no command", lambda r, t: [], ["command"]
    yield "unknown command", lambda r, t: ["train", r], ["train"]


@pytest.mark.parametrize("make,words", [pytest.param(m, w, id=i) for i, m, w in request_cases()])
def test_bad_request_on_a_sound_zoo(make, words, published, tmp_path, capsys):
    root = tmp_path / "zoo"
    shutil.copytree(published, root)
    (tmp_path / "afile").write_text("x")
    before = tree(tmp_path)
    assert_user_error(zoo_main(capsys, *make(root, tmp_path)), *words)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- OS errors as one line

def _fail_writes(monkeypatch, code: int, after: int = 0) -> None:
    """Every new temporary file (the first step of each atomic write) fails with ``code`` after
    ``after`` successful ones."""
    import tempfile

    real, calls = tempfile.mkstemp, []

    def mkstemp(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise OSError(code, os.strerror(code), kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


OS_CASES = [  # (id, command on the zoo, errno, atomic writes that succeed first, words)
    ("plot EROFS", lambda r, t: ["plot", r], errno.EROFS, 0, "read-only"),
    ("plot ENOSPC after one plot", lambda r, t: ["plot", r], errno.ENOSPC, 1, "free disk space"),
    ("metrics EROFS", lambda r, t: ["metrics", "spectral", r, "--quiet"], errno.EROFS, 0, "read-only"),
    ("metrics ENOSPC after one table", lambda r, t: ["metrics", "spectral", r, "--quiet"], errno.ENOSPC, 1,
     "free disk space"),
    ("metrics EACCES", lambda r, t: ["metrics", "spectral", r, "--quiet"], errno.EACCES, 0, "permissions"),
    # new values (FARMS off changes layers.parquet and models.parquet): files written before the
    # disk filled must be rolled back, not left beside an old zoo.json
    *[(f"metrics ENOSPC after {n} new files", lambda r, t: ["metrics", "spectral", r, "--quiet", "--set",
                                                             "metrics.farms=false"], errno.ENOSPC, n, "free disk space")
      for n in (1, 2, 4)],
    ("study ENOSPC after its table", lambda r, t: ["study", "shift", r, "--quiet"], errno.ENOSPC, 1,
     "free disk space"),
    ("export EROFS", lambda r, t: ["export", r, "--format", "npz", "--out", t / "export"], errno.EROFS, 0,
     "read-only"),
    ("export parquet ENOSPC", lambda r, t: ["export", r, "--format", "parquet", "--out", t / "export"],
     errno.ENOSPC, 2, "free disk space"),
]


@pytest.mark.parametrize("make,code,after,words", [pytest.param(m, c, n, w, id=i) for i, m, c, n, w in OS_CASES])
def test_os_errors_are_one_line(make, code, after, words, published, tmp_path, capsys, monkeypatch):
    root = tmp_path / "zoo"
    shutil.copytree(published, root)
    before = tree(root)
    _fail_writes(monkeypatch, code, after)
    assert_user_error(zoo_main(capsys, *make(root, tmp_path)), words)
    assert tree(root) == before


def test_build_into_a_read_only_place_is_one_line(tmp_path, capsys, monkeypatch, data_root):
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.is_relative_to(tmp_path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert_user_error(zoo_main(capsys, *SMOKE, "--out", tmp_path / "out"), "read-only")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- subprocesses: a real read-only mount

def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro / /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare for a private read-only bind mount")
@pytest.mark.parametrize("command", ["plot", "metrics", "build", "export"])
def test_read_only_zoo_folder(command, published, tmp_path):
    """The zoo folder mounted read-only in a private mount namespace (root ignores file modes)."""
    root = tmp_path / "zoo"
    shutil.copytree(published, root)
    args = {"plot": ["plot", root], "metrics": ["metrics", "spectral", root, "--quiet"],
            "build": [*SMOKE, "--out", root, "--set", "train.steps=30", "--set", "phase.seeds=[0]"],
            "export": ["export", root, "--format", "npz", "--out", tmp_path / "ro" / "npz"]}[command]
    (tmp_path / "ro").mkdir()
    before = tree(tmp_path)
    zoo = " ".join(f"'{a}'" for a in [*ZOO, *map(str, args)])
    script = f"mount --bind -o ro '{tmp_path}' '{tmp_path}' && exec {zoo}"
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    if command == "build" and r.returncode == 0:  # a finished zoo needs no write: the rerun changes nothing
        assert "published" in r.stdout
    else:
        assert_user_error((r.returncode, r.stdout, r.stderr), "ead-only")
    assert tree(tmp_path) == before


def test_no_traceback_from_the_interpreter(tmp_path):
    """The same path in a real process: nothing but the one line on stderr."""
    bad = tmp_path / "deep.toml"
    bad.write_text(f"name = {DEEP_ARRAY}\n")
    r = subprocess.run([*ZOO, "build", "--preset", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert_user_error((r.returncode, r.stdout, r.stderr), "deep.toml")
    assert not (tmp_path / "o").exists()
