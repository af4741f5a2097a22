"""`zoo verify DIR`: check a published zoo against its manifest and its own invariants.

Checks, in order: zoo.json readable and its schema_version supported; every file it lists
exists and has the listed sha256; required tables and columns present; model ids unique and
splits valid; per arch, checkpoint rows = models x steps with every model at every step and
weight vectors of the layout's length; HDF5 rows = the arch's models, [N, P] and [N, K, P], and
its final row equal to the Parquet last-step row for one model; layers/pairs (when present)
reference known models. Problems come back as one-line strings; none means the zoo is sound.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .manifest import hash_problems, read_manifest
from .reader import SPLITS

REQUIRED = {
    "models.parquet": ["model_id", "cell_id", "population_id", "arch_id", "task", "seed", "split", "status",
                       "n_params", "train_loss", "test_loss"],  # accuracies: classification tasks only
    "models.parquet (classification)": ["train_acc", "test_acc"],
    "layout.parquet": ["arch_id", "name", "shape", "start", "end", "layer_idx", "role", "layer_type",
                       "trainable"],
    "checkpoints": ["model_id", "arch_id", "step", "weights"],
    "layers.parquet": ["model_id", "step", "layer"],
    "pairs.parquet": ["model_a", "model_b", "cell_id", "alignment"],
}


def _columns(name: str, names: list[str]) -> list[str]:
    missing = [c for c in REQUIRED[name] if c not in names]
    return [f"{name}: missing required columns {missing}"] if missing else []


def _classification(manifest: dict) -> bool:
    """Whether the zoo's task has accuracies (the task record, or the spec for older zoos)."""
    from ..generators.tasks import REGISTRY

    task = manifest.get("task") or {}
    if "kind" in task:
        return task["kind"] == "classification"
    name = manifest["spec"].get("task", {}).get("name", "mnist1d")
    return name in REGISTRY and REGISTRY[name].kind == "classification"


def _tables(root: Path, manifest: dict) -> list[str]:
    import pandas as pd
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    problems = []
    for name in ("models.parquet", "layout.parquet"):
        if not (root / name).is_file():
            return [f"{name} is missing"]
        try:
            names = pq.read_schema(root / name).names
        except Exception as e:  # noqa: BLE001 - any unreadable file is one problem line
            return [f"{name} is unreadable ({type(e).__name__}: {' '.join(str(e).split())})"]
        problems += _columns(name, names)
    if _classification(manifest):
        problems += _columns("models.parquet (classification)", pq.read_schema(root / "models.parquet").names)
    parts = sorted((root / "checkpoints").glob("part-*.parquet"))
    if not parts:
        problems.append("checkpoints/part-*.parquet: no checkpoint files")
    if problems:
        return problems
    ckpt = ds.dataset([str(p) for p in parts], format="parquet")
    problems += _columns("checkpoints", ckpt.schema.names)
    for name in ("layers.parquet", "pairs.parquet"):
        if (root / name).is_file():
            problems += _columns(name, pq.read_schema(root / name).names)
    if problems:
        return problems

    models = pd.read_parquet(root / "models.parquet")
    layout = pd.read_parquet(root / "layout.parquet")
    if models["model_id"].duplicated().any():
        problems.append(f"models.parquet: duplicate model ids, e.g. "
                        f"{models.loc[models['model_id'].duplicated(), 'model_id'].iloc[0]}")
    bad = set(models["split"]) - set(SPLITS)
    if bad:
        problems.append(f"models.parquet: split values {sorted(bad)} are not train/val/test")
    sizes = layout.groupby("arch_id")["end"].max().to_dict()
    unknown = set(models["arch_id"]) - set(sizes)
    if unknown:
        problems.append(f"layout.parquet: no layout for arch {sorted(unknown)[0]}")

    # checkpoints: every model of every arch at the same steps, vectors of the layout's length
    arch_of = dict(zip(models["model_id"], models["arch_id"]))
    rows = ckpt.to_table(columns=["model_id", "arch_id", "step"]).to_pandas()
    stray = set(rows["model_id"]) - set(arch_of)
    if stray:
        problems.append(f"checkpoints: rows for unknown model {sorted(stray)[0]}")
    steps_of = {}
    for aid, group in models.groupby("arch_id"):
        r = rows[rows["arch_id"] == aid]
        steps = sorted(r["step"].unique())
        steps_of[aid] = steps
        expected = len(group) * len(steps)
        if len(r) != expected or r.duplicated(["model_id", "step"]).any() \
                or set(r["model_id"]) != set(group["model_id"]):
            problems.append(f"checkpoints: arch {aid} has {len(r)} rows, expected {len(group)} models x "
                            f"{len(steps)} steps = {expected}, each once")
    for part in parts:
        f = pq.ParquetFile(part)
        for batch in f.iter_batches(columns=["arch_id", "weights"], batch_size=1024):
            import pyarrow.compute as pc

            lengths = pc.list_value_length(batch.column(1)).to_numpy(zero_copy_only=False)
            want = np.array([sizes.get(a, -1) for a in batch.column(0).to_pylist()])
            if (lengths != want).any():
                i = int(np.argmax(lengths != want))
                problems.append(f"{part.relative_to(root)}: a weight vector has {lengths[i]} values, "
                                f"layout of {batch.column(0)[i]} needs {want[i]}")
                break
    problems += _hdf5(root, models, sizes, steps_of, ckpt)
    for name, cols in (("layers.parquet", ["model_id"]), ("pairs.parquet", ["model_a", "model_b"])):
        if (root / name).is_file():
            t = pd.read_parquet(root / name, columns=cols)
            for c in cols:
                stray = set(t[c]) - set(arch_of)
                if stray:
                    problems.append(f"{name}: {c} {sorted(stray)[0]} is not in models.parquet")
    for path in sorted((root / "studies").glob("*.parquet")):
        problems += _study(root, path, set(arch_of))
    return problems


def _study(root: Path, path: Path, known: set[str]) -> list[str]:
    """A study table (zoo study) must read and name only models of models.parquet."""
    import pandas as pd
    import pyarrow.parquet as pq

    name = path.relative_to(root).as_posix()
    try:
        cols = [c for c in ("model_id", "model_a", "model_b", "models") if c in pq.read_schema(path).names]
        t = pd.read_parquet(path, columns=cols)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one problem line
        return [f"{name} is unreadable ({type(e).__name__}); rerun zoo study"]
    ids = {m for c in cols for v in t[c].dropna() for m in ([v] if isinstance(v, str) else list(v))}
    stray = sorted(ids - known)
    return [f"{name}: model {stray[0]} is not in models.parquet"] if stray else []


def _hdf5(root: Path, models, sizes: dict, steps_of: dict, ckpt) -> list[str]:
    if not (root / "zoo.h5").is_file():
        return []
    import h5py
    import pyarrow.dataset as ds

    problems = []
    try:
        f = h5py.File(root / "zoo.h5", "r")
    except OSError as e:
        return [f"zoo.h5 is unreadable: {e}"]
    with f:
        for aid, group in models.groupby("arch_id"):
            n, p, k = len(group), sizes.get(aid), len(steps_of.get(aid, []))
            for key in ("weights", "checkpoints", "index"):
                if f"{key}/{aid}" not in f:
                    problems.append(f"zoo.h5: /{key}/{aid} is missing")
            if problems:
                continue
            index = [m.decode() for m in f[f"index/{aid}"][:]]
            if sorted(index) != sorted(group["model_id"]):
                problems.append(f"zoo.h5: /index/{aid} holds {len(index)} ids, not the arch's {n} models")
            if f[f"weights/{aid}"].shape != (n, p):
                problems.append(f"zoo.h5: /weights/{aid} has shape {f[f'weights/{aid}'].shape}, "
                                f"expected {(n, p)}")
            if f[f"checkpoints/{aid}"].shape != (n, k, p):
                problems.append(f"zoo.h5: /checkpoints/{aid} has shape {f[f'checkpoints/{aid}'].shape}, "
                                f"expected {(n, k, p)}")
            if problems or not index:
                continue
            row = ckpt.to_table(columns=["weights"], filter=(ds.field("model_id") == index[0])
                                & (ds.field("step") == steps_of[aid][-1]))
            parquet_w = np.asarray(row.column(0)[0].values.to_numpy(zero_copy_only=False), dtype=np.float32)
            if not np.array_equal(parquet_w, f[f"weights/{aid}"][0], equal_nan=True):
                problems.append(f"zoo.h5: final weights of {index[0]} differ from the checkpoint table")
    return problems


def verify(root: str | Path) -> list[str]:
    """Problems found in the published zoo at ``root`` (empty list: all checks pass)."""
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except DatasetError as e:
        return [str(e)]
    problems = hash_problems(root, manifest["files"])
    try:
        problems += _tables(root, manifest)
    except Exception as e:  # a corrupt Parquet/HDF5 file surfaces here as a problem, not a traceback
        problems.append(f"cannot read the tables: {type(e).__name__}: {e}")
    return problems


def cmd_verify(args) -> int:
    """CLI: ``zoo verify DIR``; exit 0 if sound, else 2 with the first problem on one line."""
    problems = verify(args.dir)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        print(f"zoo: error: {args.dir}: {' '.join(problems[0].split())}{more}", file=sys.stderr)
        return 2
    manifest = json.loads((Path(args.dir) / "zoo.json").read_text())
    print(f"ok: {len(manifest['files'])} files match zoo.json; tables and HDF5 mirror consistent")
    return 0
