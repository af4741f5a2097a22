"""The rows of `zoo presets`, cached so that listing presets answers without importing torch.

A row (family, task, models, parameters, FLOPs, memory, estimated training time) depends only on
the preset's TOML, the calibration tables and the zoo version; it is cached under the data root
keyed by a hash of those, so a changed preset or a new calibration recomputes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from importlib import resources

from . import __version__
from .io import atomic_write_bytes, default_data_root
from .spec import load_toml


def _cache_path():
    return default_data_root() / "presets-cache.json"


def _calibration_text() -> str:
    user = default_data_root() / "calibration.json"
    return resources.files("zoo").joinpath("calibration.json").read_text() + (
        user.read_text() if user.is_file() else "")


def _compute(name: str) -> dict:
    from .cost import estimate
    from .spec import load_spec

    spec = load_spec(name)
    c = estimate(spec)
    return {"family": spec.arch.family, "task": spec.task.name, "models": spec.n_models,
            **{k: c[k] for k in ("params_min", "params_max", "train_flops", "population_bytes",
                                 "cpu_seconds", "gpu_seconds")}}


def preset_rows(names: list[str]) -> dict[str, dict]:
    """{preset: row}, from the cache where the preset, calibration and version are unchanged."""
    path = _cache_path()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    calibration = _calibration_text()
    rows, changed = {}, False
    for name in names:
        key = hashlib.sha256(json.dumps([load_toml(name), calibration, __version__], sort_keys=True,
                                        default=str).encode()).hexdigest()
        if cache.get(name, {}).get("key") != key:
            cache[name] = {"key": key, "row": _compute(name)}
            changed = True
        rows[name] = cache[name]["row"]
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            atomic_write_bytes(path, json.dumps(cache, indent=1).encode())
    return rows
