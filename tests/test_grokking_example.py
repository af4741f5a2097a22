"""docs/results/grokking.md as a tested example (issue 15, item 5): grokking on modular arithmetic is a
phase transition in training time; a tiny gpt-modular build through examples/grokking.py's main() shows
its first half (the training set is fit while test accuracy stays low) and the report's format."""

from __future__ import annotations

import json

import numpy as np
from test_examples import _example

TINY = ["task.modulus=11", "task.n_train=60", "task.n_test=61", "arch.width=32", "train.lr=0.003",
        "train.batch_size=32", "train.steps=300", "train.checkpoints=10", "phase.seeds=[0]",
        "phase.axes=[{name='regularization',key='train.weight_decay',values=[0.0,0.003]}]",
        "metrics.hessian=false", "metrics.spectral=false", "metrics.connectivity=false", "metrics.cka=false",
        "metrics.lmc='none'"]


def test_first_step():
    ex = _example("grokking")
    steps = np.array([0, 100, 200, 300])
    assert ex.first_step(steps, np.array([0.1, 0.5, 0.95, 0.99]), 0.9) == 200
    assert ex.first_step(steps, np.array([0.1, 0.5, 0.6, 0.7]), 0.9) is None


def test_grokking_report_on_a_tiny_build(tmp_path, capsys):
    md, png = tmp_path / "g.md", tmp_path / "g.png"
    result = _example("grokking").main(["--out", str(tmp_path / "zoo"), *[a for s in TINY for a in ("--set", s)],
                                        "--quiet", "--out-md", str(md), "--plot", str(png)])
    recs = result["records"]
    assert [r["weight_decay"] for r in recs] == [0.0, 0.003] and result["modulus"] == 11 and result["every"] == 30
    for r in recs:
        assert r["steps"] == list(range(0, 301, 30)) and len(r["test_acc"]) == 11
        # memorization comes first: the 60 training pairs are fit, the 61 held-out pairs are not
        assert r["step_train"] is not None and r["final_train_acc"] >= 0.99
        assert r["final_test_acc"] < 0.5 and (r["step_test"] is None or r["step_test"] > r["step_train"])
        assert r["plateau_test_acc"] is not None and r["plateau_test_acc"] < 0.5
    text = md.read_text()
    assert "2-core CPU dev VM" in text and "load average" in text and "python examples/grokking.py" in text
    assert "a + b mod 11, 60 training pairs of 121" in text and "| 0.003 | 0 |" in text
    assert "![Grokking curves](g.png)" in text and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["example"] == "grokking"
