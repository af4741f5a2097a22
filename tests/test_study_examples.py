"""The study examples with committed reports (examples/merge_width.py, examples/phase_downstream.py) run end to end
on a copy of the smoke zoo with reduced study options, and report the numbers the study tables hold."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_datasets import SMOKE_SETS, built_zoo

from zoo.datasets import verify

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST_MERGE = ["study.ks=[2]", 'study.methods=["naive", "weight"]']


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_root) -> Path:
    return built_zoo(tmp_path_factory, "smoke", "smoke", SMOKE_SETS)


@pytest.fixture
def zoo_copy(smoke, tmp_path) -> Path:
    dst = tmp_path / "zoo"
    shutil.copytree(smoke, dst)
    return dst


def test_merge_width_reports_the_wm_gap_per_width(zoo_copy, tmp_path, capsys):
    out = tmp_path / "report.md"
    args = [str(zoo_copy), *[a for s in FAST_MERGE for a in ("--set", s)], "--out", str(out)]
    result = _example("merge_width").main(args)
    rows = pd.read_parquet(zoo_copy / "studies" / "merge.parquet")
    models = pd.read_parquet(zoo_copy / "models.parquet")
    lr = models.groupby("config.train.lr")["test_acc"].mean().idxmax()  # the well-trained lr
    assert result["lrs"] == [lr] and result["widths"] == sorted(models["config.arch.width"].unique().tolist())
    wm = rows[(rows["method"] == "weight") & (rows["fix"] == "none") & (rows["k"] == 2)
              & np.isclose(rows["config.train.lr"], lr)]
    expected = wm.groupby("config.arch.width")["acc_gap"]
    np.testing.assert_allclose(result["wm_gap"], expected.mean().to_numpy())
    np.testing.assert_allclose(result["wm_gap_std"], expected.std(ddof=1).to_numpy())
    assert result["verdict"] in {"reproduced", "partly reproduced", "not reproduced"}
    text = out.read_text()
    assert "command:" in text and "2-core CPU dev VM" in text and f"{result['wm_gap'][0]:+.4f}" in text
    assert "](report.png)" in text and (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["example"] == "merge_width"
    assert verify(zoo_copy) == []
    assert _example("merge_width").main(args)["resumed"]  # the study is not recomputed


def test_phase_downstream_reports_each_claim_per_phase(zoo_copy, tmp_path, capsys):
    out = tmp_path / "phases.md"
    sets = [*(f"merge:{s}" for s in FAST_MERGE), "prune:study.finetune_steps=2", "finetune:study.steps=3",
            "shift:study.noise=[0.0,1.0]", "shift:study.translate=[0,4]", "ensemble:study.groups=2"]
    result = _example("phase_downstream").main([str(zoo_copy), *[a for s in sets for a in ("--set", s)],
                                                "--out", str(out)])
    models = pd.read_parquet(zoo_copy / "models.parquet")
    cells = models.groupby("cell_id")["cell_phase"].first().fillna("unknown")
    assert result["phases"] == cells.value_counts().to_dict()
    assert set(result["claims"]) == {"C1", "C2", "C3", "C4", "C5"}
    assert set(result["claims"].values()) <= {"reproduced", "not reproduced", "not testable"}
    # a per-phase number is the mean over the phase's cells of the study table's cell means
    ens = pd.read_parquet(zoo_copy / "studies" / "ensemble.parquet")
    gain = ens[ens["kind"] == "cell"].groupby("cell_id")["gain"].mean().groupby(cells).mean()
    for phase, value in gain.items():
        assert result["per_phase"][phase]["ensemble_gain"] == pytest.approx(value)
    ft = pd.read_parquet(zoo_copy / "studies" / "finetune.parquet")
    assert (ft["target"] == "regenerate").all()
    text = out.read_text()
    assert "command:" in text and "C1 ensembling gains less where CKA is high" in text
    assert (tmp_path / "phases.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["example"] == "phase_downstream"
    assert verify(zoo_copy) == []


def test_phase_downstream_refuses_a_malformed_set(zoo_copy, tmp_path):
    with pytest.raises(SystemExit):
        _example("phase_downstream").main([str(zoo_copy), "--set", "study.ste_steps=3", "--out",
                                           str(tmp_path / "x.md")])
