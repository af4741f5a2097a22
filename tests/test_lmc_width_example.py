"""docs/results/lmc_width.md as a tested example (issue 15, 6b): the LMC barrier after weight matching vs
width, with seeds and error bars, on a tiny run through examples/lmc_width.py's main()."""

from __future__ import annotations

import json
import math

import numpy as np
from test_examples import _example


def test_lmc_width_error_bars_and_matching_at_the_widest_width(tmp_path, capsys):
    md, png = tmp_path / "lmc.md", tmp_path / "lmc.png"
    result = _example("lmc_width").main(["--widths", "8", "64", "--steps", "150", "--seeds", "3", "--quiet",
                                         "--n-train", "2000", "--out-md", str(md), "--plot", str(png)])
    assert result["pairs_per_width"] == 3 and [r["width"] for r in result["rows"]] == [8, 64]
    for row in result["rows"]:
        assert row["n_models"] == 3 and row["n_pairs"] == 3
        for short in ("naive", "matched", "activation", "repair"):
            for key in ("barrier_test_err", "barrier_train_loss"):
                pairs = row[f"{short}_{key}_pairs"]
                assert len(pairs) == 3 and np.isfinite(pairs).all()
                assert math.isclose(row[f"{short}_{key}"], np.mean(pairs), rel_tol=1e-9, abs_tol=1e-12)
                assert math.isfinite(row[f"{short}_{key}_std"]) and row[f"{short}_{key}_std"] >= 0
                assert math.isfinite(row[f"{short}_{key}_ci95"])
                # t(0.975, 2 d.o.f.) = 4.303: the interval is the Student-t one over the 3 pairs
                assert math.isclose(row[f"{short}_{key}_ci95"], 4.3027 * row[f"{short}_{key}_std"] / math.sqrt(3),
                                    rel_tol=1e-4)
        # weight matching never raises the train-loss barrier of a pair (it can only find a better path)
        assert all(m <= n + 1e-6 for m, n in zip(row["matched_barrier_train_loss_pairs"],
                                                 row["naive_barrier_train_loss_pairs"]))
    wide = result["rows"][-1]
    # at the widest width matching removes most of the barrier, beyond the error bars
    assert wide["matched_barrier_test_err"] + wide["matched_barrier_test_err_ci95"] \
        < wide["naive_barrier_test_err"] - wide["naive_barrier_test_err_ci95"]
    assert wide["matched_barrier_train_loss"] < 0.5 * wide["naive_barrier_train_loss"]
    assert wide["matched_removed_test_err"] > 0.5
    text = md.read_text()
    assert "2-core CPU dev VM" in text and "load average" in text and "python examples/lmc_width.py" in text
    assert "| 64 |" in text and "+-" in text and "![LMC barrier vs width](lmc.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["example"] == "lmc_width"


def test_lmc_width_statistics():
    ex = _example("lmc_width")
    s = ex.summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3
    assert math.isclose(s["ci95"], 4.302653 / math.sqrt(3), rel_tol=1e-5)
    assert math.isnan(ex.summarize([1.0])["std"]) and math.isnan(ex.summarize([1.0])["ci95"])
