"""`zoo presets` answers from a cache keyed by the preset, the calibration and the version."""

import json
import os
import subprocess
import sys

from zoo import presets_table


def test_rows_are_cached_and_recomputed_when_the_preset_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    calls = []
    monkeypatch.setattr(presets_table, "_compute", lambda name: calls.append(name) or {"models": len(calls)})
    assert presets_table.preset_rows(["smoke"]) == {"smoke": {"models": 1}}
    assert presets_table.preset_rows(["smoke"]) == {"smoke": {"models": 1}} and calls == ["smoke"]
    spec = tmp_path / "mine.toml"
    spec.write_text('name = "mine"\n')
    presets_table.preset_rows([str(spec)])
    spec.write_text('name = "mine"\n[train]\nsteps = 10\n')
    presets_table.preset_rows([str(spec)])
    assert calls == ["smoke", str(spec), str(spec)]
    (tmp_path / "calibration.json").write_text(json.dumps({"cpu": {}}))  # a new calibration: recompute
    presets_table.preset_rows(["smoke"])
    assert calls[-1] == "smoke" and len(calls) == 4


def test_a_warm_listing_does_not_import_torch(tmp_path):
    env = {**os.environ, "ZOO_DATA": str(tmp_path)}
    code = "import sys; from zoo.cli import main; main(['presets', 'smoke']); print('torch' in sys.modules)"
    cold = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    warm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert cold.stdout.split()[-1] == "True" and warm.stdout.split()[-1] == "False", warm.stderr
    assert "smoke" in warm.stdout and "mlp" in warm.stdout


def test_estimates_cover_the_measure_step_term_by_term():
    from zoo.cost import estimate, metric_seconds
    from zoo.generators.sampling import group_populations, plan_models
    from zoo.spec import load_spec

    spec = load_spec("smoke")
    cost = estimate(spec)
    assert cost["cpu_metrics_seconds"] > 0 and cost["cpu_seconds"] > 0
    assert set(cost["cpu_metrics_terms"]) == {"hessian", "spectral", "linear", "bezier", "cka", "lmc"}
    assert abs(sum(cost["cpu_metrics_terms"].values()) - cost["cpu_metrics_seconds"]) < 1e-9
    off = load_spec("smoke", ["metrics.hessian=false", "metrics.spectral=false", "metrics.connectivity=false",
                              "metrics.cka=false", "metrics.lmc=none"])
    assert estimate(off)["cpu_metrics_seconds"] == 0 and estimate(off)["cpu_seconds"] == cost["cpu_seconds"]

    rates = {"train_flops_per_s": 1e9, "eval_flops_per_s": 1e9, "step_s": 1e-3}

    def seconds(s):
        pop = group_populations(plan_models(s), s.build.max_population)[0]
        return metric_seconds(s, pop.members, rates)

    base = seconds(spec)
    longer_bend = seconds(load_spec("smoke", ["metrics.bezier_budget=2.0"]))  # the bend follows training
    assert longer_bend["bezier"] > 1.5 * base["bezier"] and longer_bend["hessian"] == base["hessian"]
    trained_longer = seconds(load_spec("smoke", [f"train.steps={2 * spec.train.steps}"]))
    assert trained_longer["bezier"] > 1.5 * base["bezier"] and trained_longer["linear"] == base["linear"]
    assert seconds(load_spec("smoke", ["metrics.hessian_max_iter=50"]))["hessian"] < base["hessian"]


def test_the_table_splits_train_metrics_and_total_and_says_what_each_covers():
    row = {"family": "mlp", "task": "mnist1d", "models": 8, "params_min": 10, "params_max": 20, "train_flops": 1e12,
           "population_bytes": 2**20, "cpu_seconds": 30.0, "gpu_seconds": float("nan"),
           "cpu_metrics_seconds": 60.0, "gpu_metrics_seconds": float("nan"), "metrics_not_estimated": []}
    lines = presets_table.table_lines({"p": row})
    assert lines[0].split()[-6:] == ["CPU", "train", "CPU", "metrics", "CPU", "total"] and "GPU" not in lines[0]
    assert lines[1].split()[-3:] == ["30s", "60s", "90s"]
    assert any(line.startswith("train: ") and "metrics: the measure step" in line for line in lines)
    assert any(line.startswith("GPU: not calibrated") for line in lines)
    gpu = presets_table.table_lines({"p": {**row, "gpu_seconds": 3.0, "gpu_metrics_seconds": 4.0,
                                           "metrics_not_estimated": ["sensitivity"]}})
    assert " ".join(gpu[0].split()[-12:]) == "CPU train CPU metrics CPU total GPU train GPU metrics GPU total"
    assert gpu[1].split()[-6:] == ["30s", "60s*", "90s*", "3s", "4s*", "7s*"]
    assert gpu[-1].startswith("*:") and "sensitivity" in gpu[-1]
