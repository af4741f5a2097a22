"""The benchmark harness's logic (benchmarks/_harness.py) with trivial functions and a fake clock:
call order, min/median, NaN as disagreement, the JSONL format and the docs table. No timing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _harness as h  # noqa: E402


def fake_clock(durations):
    """A clock whose consecutive (start, stop) reads are ``durations`` apart, in call order."""
    reads, now = [], 0.0
    for d in durations:
        reads += [now, now + d]
        now += d + 1
    it = iter(reads)
    return lambda: next(it)


def test_interleave_runs_warmup_then_abab():
    calls = []
    a, b = h.interleave(lambda: calls.append("a") or "A", lambda: calls.append("b") or "B", rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds
    assert len(a.times) == len(b.times) == 3
    assert (a.value, b.value) == ("A", "B")


def test_interleave_setup_runs_before_every_call_of_its_side():
    calls = []
    h.interleave(lambda: calls.append("a"), lambda: calls.append("b"), rounds=2, warmup=1,
                 setup=[None, lambda: calls.append("reset")])
    assert calls == ["a", "reset", "b"] * 3


def test_min_and_median_per_side():
    # order of calls: a b a b a b, no warm-up
    clock = fake_clock([3.0, 5.0, 1.0, 4.0, 2.0, 6.0])
    a, b = h.interleave(lambda: None, lambda: None, rounds=3, warmup=0, clock=clock)
    assert a.times == [3.0, 1.0, 2.0] and (a.min, a.median) == (1.0, 2.0)
    assert b.times == [5.0, 4.0, 6.0] and (b.min, b.median) == (4.0, 5.0)
    rec = h.result("x", "loop", a, b, agree=True)
    assert rec["ours_s"] == 1.0 and rec["baseline_s"] == 4.0 and rec["ratio"] == 4.0
    assert rec["ours_median_s"] == 2.0 and rec["baseline_median_s"] == 5.0 and rec["ratio_median"] == 2.5
    assert rec["rounds"] == 3 and rec["agree"] is True


def test_repeat_times_one_side():
    side = h.repeat(lambda: 7, rounds=4, warmup=2, clock=fake_clock([9, 9, 1, 2, 3, 4]))
    assert side.times == [1, 2, 3, 4] and side.value == 7


def test_nan_is_disagreement():
    assert h.within([1e-5, 2e-5], 1e-4)
    assert not h.within([1e-5, float("nan")], 1e-4)
    assert not h.within(np.full(3, np.nan), 1e-4)  # an all-NaN metric must not pass
    assert not h.within([], 1e-4)  # nor a comparison of nothing
    assert not h.within({"alpha": np.array([0.0]), "D": np.array([np.inf])}, 1.0)
    assert h.within(np.float64(-3e-5), 1e-4)
    nan_side = h.Side([float("nan")])
    assert h.result("x", "b", h.Side([1.0]), nan_side, agree=True)["agree"] is False


def test_jsonl_append_is_strict_json_one_record_per_line(tmp_path):
    path = tmp_path / "results" / "2026-01-01.jsonl"
    h.append_jsonl(path, [{"benchmark": "a", "ours_s": np.float64(1.5), "x": float("nan"), "v": np.arange(2)}])
    h.append_jsonl(path, [{"benchmark": "b", "ratio": math.inf}])
    lines = path.read_text().splitlines()
    assert len(lines) == 2

    def strict(s):
        return json.loads(s, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    first, second = map(strict, lines)
    assert first == {"benchmark": "a", "ours_s": 1.5, "x": None, "v": [0, 1]}
    assert second == {"benchmark": "b", "ratio": None}
    assert h.read_jsonl(path) == [first, second]


def test_docs_table_from_the_latest_run_of_a_results_file(tmp_path):
    machine = {"cpu": "Test CPU", "cores": 2, "cores_available": 2, "torch_threads": 2, "omp_num_threads": "2",
               "versions": {"torch": "9.9"}, "git": "abc123"}
    common = {"machine": machine, "bmm_peak": {"gflops": 50.0, "device": "cpu"}, "load_before": 0.1,
              "load_after": 0.2}
    old = h.result("population_vs_loop", "loop", h.Side([1.0]), h.Side([9.0]), agree=True)
    new = h.result("population_vs_loop", "loop", h.Side([2.0, 3.0, 4.0]), h.Side([8.0, 10.0, 12.0]), agree=True,
                   case="width 64", pct_bmm_peak=12.5)
    build = h.result("default_build", None, h.Side([30.0]), None, agree=None,
                     stages={"train": {"min": 20.0, "median": 21.0}})
    results = tmp_path / "r.jsonl"
    h.append_jsonl(results, [{**old, **common, "run_id": "run-1"}])
    failed = {"benchmark": "hessian_vs_pyhessian", "error": "exit code 1", "agree": False}
    h.append_jsonl(results, [{**r, **common, "run_id": "run-2"} for r in (new, build, failed)])
    records = h.latest_run(h.read_jsonl(results))
    assert [r["run_id"] for r in records] == ["run-2"] * 3

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Title\n\nbefore\n<!-- benchmarks:cpu:begin -->\nold table\n<!-- benchmarks:cpu:end -->\n"
                   "<!-- benchmarks:cuda:begin -->\ngpu table\n<!-- benchmarks:cuda:end -->\nafter\n")
    h.update_doc(doc, records, "cpu", "r.jsonl")
    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith("gpu table\n<!-- benchmarks:cuda:end -->\nafter\n")
    assert "old table" not in text and "Run `run-2` from `r.jsonl`" in text and "Test CPU" in text
    assert "| population_vs_loop | width 64 | 2 (3) | 8 (10) | 4 | 12.5 | yes | 0.1 → 0.2 |" in text
    assert "| default_build | stage: train | 20 (21) |" in text
    assert "| hessian_vs_pyhessian | failed: exit code 1 |" in text
    h.update_doc(doc, records, "cpu", "r.jsonl")  # regenerating is idempotent
    assert doc.read_text() == text
    with pytest.raises(ValueError, match="markers"):
        h.update_doc(doc, records, "tpu")
