"""The rows of `zoo presets`, cached so that listing presets answers without importing torch.

A row (family, task, models, parameters, FLOPs, memory, estimated time of training and of the
measure step) depends only on the preset's TOML, the calibration tables, the cost model and the
zoo version; it is cached under the data root keyed by a hash of those, so a changed preset, a new
calibration or a changed cost model recomputes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
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


def _cost_model_text() -> str:
    """The cost model's source: a change to it recomputes the cached rows (read, not imported)."""
    return resources.files("zoo").joinpath("cost.py").read_text()


def _compute(name: str) -> dict:
    from .cost import estimate
    from .spec import load_spec

    spec = load_spec(name)
    c = estimate(spec)
    return {"family": spec.arch.family, "task": spec.task.name, "models": spec.n_models,
            **{k: c[k] for k in ("params_min", "params_max", "train_flops", "population_bytes",
                                 "cpu_seconds", "gpu_seconds", "cpu_metrics_seconds", "gpu_metrics_seconds",
                                 "metrics_not_estimated", "publish_seconds")}}


def preset_rows(names: list[str]) -> dict[str, dict]:
    """{preset: row}, from the cache where the preset, calibration, cost model and version are unchanged."""
    path = _cache_path()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    calibration, model = _calibration_text(), _cost_model_text()
    rows, changed = {}, False
    for name in names:
        key = hashlib.sha256(json.dumps([load_toml(name), calibration, model, __version__], sort_keys=True,
                                        default=str).encode()).hexdigest()
        if cache.get(name, {}).get("key") != key:
            cache[name] = {"key": key, "row": _compute(name)}
            changed = True
        rows[name] = cache[name]["row"]
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            atomic_write_bytes(path, json.dumps(cache, indent=1).encode())
    return rows


def duration(s: float) -> str:
    if s != s:  # NaN: no calibration for this device
        return "n/a"
    for unit, size, limit in (("s", 1, 120), ("m", 60, 7200), ("h", 3600, 172800), ("d", 86400, 3.2e8)):
        if s < limit:
            return f"{s / size:.0f}{unit}"
    return f"{s / 3.156e7:.0f}y"


def memory(b: float) -> str:
    g = b / 2**30
    return f"{g:.2f}G" if g < 100 else f"{g:.0f}G" if g < 10000 else f"{g / 1024:.1f}T"


def table_lines(rows: dict[str, dict]) -> list[str]:
    """`zoo presets` as text: one line per preset, estimated time split into training, the measure
    step (metrics) and their total per device (GPU columns only once a GPU is calibrated), and a
    footer saying what each column covers."""
    devices = [("CPU", "cpu")] + ([("GPU", "gpu")] if any(
        r.get("gpu_seconds") == r.get("gpu_seconds") for r in rows.values()) else [])

    def times(r: dict, d: str) -> list[float]:
        train, metrics = r.get(f"{d}_seconds", math.nan), r.get(f"{d}_metrics_seconds", math.nan)
        return [train, metrics, train + metrics + r.get("publish_seconds", 0.0)]

    heads = [f"{label} {part}" for label, _ in devices for part in ("train", "metrics", "total")]
    lines = [f"{'preset':<30}{'family':<10}{'task':<16}{'models':>7}{'params/model':>20}{'train PFLOP':>12}"
             f"{'mem/pop':>9}" + "".join(f"{h:>12}" for h in heads)]
    partial = set()
    for name, c in rows.items():
        params = (f"{c['params_min']:,}" if c["params_min"] == c["params_max"]
                  else f"{c['params_min']:,}-{c['params_max']:,}")
        extra = c.get("metrics_not_estimated") or []
        partial.update(extra)
        cells = [duration(t) + ("*" if extra and i % 3 else "") for _, d in devices
                 for i, t in enumerate(times(c, d))]
        lines.append(f"{name:<30}{c['family']:<10}{c['task']:<16}{c['models']:>7}{params:>20}"
                     f"{c['train_flops'] / 1e15:>12.4g}{memory(c['population_bytes']):>9}"
                     + "".join(f"{cell:>12}" for cell in cells))
    lines += [
        "train: training with its checkpoint evaluations (steps x measured per-step cost + counted training "
        "and evaluation FLOPs / measured throughput); metrics: the measure step (Hessian, spectral, linear paths, "
        "the Bezier bend and its curves, CKA, aligned LMC: their counted work x factors fitted from timed "
        "builds); total: both, plus start-up and publishing (about 5 s + 0.25 s per million stored weights), "
        "one population at a time (--jobs 1), on the machine the calibration was measured on (shipped: an idle "
        "2-core x86 CPU; zoo presets --calibrate measures yours). A busy machine is slower: there set "
        "OMP_NUM_THREADS=1 (two threads competing with other work measured up to 12x slower).",
    ]
    if len(devices) == 1:
        lines.append("GPU: not calibrated yet (zoo presets --calibrate --device cuda on a GPU machine adds "
                     "the GPU columns)")
    if partial:
        lines.append(f"*: enabled metrics without a cost model are not in these times: {', '.join(sorted(partial))}")
    return lines
