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
