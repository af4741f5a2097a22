"""Publish a built zoo: shards -> Parquet tables, HDF5 mirror, dataset card, zoo.json.

Every file is written atomically, and the output depends only on the shards and the spec, so a
resumed build publishes byte-identical tables to an uninterrupted one (timestamps live only in
zoo.json's ``created`` and the wall-time columns).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path, atomic_write_bytes
from ..shards import read_shard, shard_table, shard_table_names
from ..spec import ZooSpec, identity, stable_hash
from .card import dataset_card
from .manifest import write_manifest

ROWS_PER_GROUP_BYTES = 64 << 20  # checkpoint row groups of ~64 MB stream well


def arch_id(config: dict) -> str:
    arch = {k: v for k, v in identity(config).items() if k.startswith("arch.")}
    return f"{config['arch.family']}-" + stable_hash({**arch, "task": config["task.name"]}, 8)


def assign_splits(model_ids: list[str], fractions: list[float], seed: int) -> dict[str, str]:
    """train/val/test by model: rank models by a seeded hash, cut at the given fractions."""
    ranked = sorted(model_ids, key=lambda m: hashlib.sha256(f"{seed}/{m}".encode()).hexdigest())
    n = len(ranked)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return {m: ("train" if i < n_train else "val" if i < n_train + n_val else "test")
            for i, m in enumerate(ranked)}


def _write_parquet(path: Path, table: pa.Table, row_group_size: int | None = None) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")


def _layout_rows(aid: str, layout: list[dict]) -> list[dict]:
    layers = list(dict.fromkeys(t["layer"] for t in layout))
    rows = []
    for t in layout:
        rows.append({"arch_id": aid, "name": t["name"], "shape": list(t["shape"]), "start": t["start"],
                     "end": t["end"], "layer_idx": layers.index(t["layer"]), "layer": t["layer"],
                     "role": t["role"], "layer_type": t["layer_type"], "trainable": t["trainable"]})
    return rows


def _activation_after(rows: list[dict], spec: ZooSpec) -> None:
    """Name the nonlinearity that follows each weight layer (none for the output layer)."""
    weight_layers = [r["layer_idx"] for r in rows if r["role"] == "weight"
                     and r["layer_type"] in ("Linear", "Conv1d", "Conv2d")]
    last = max(weight_layers) if weight_layers else -1
    for r in rows:
        r["activation_after"] = "none" if r["layer_idx"] >= last else spec.arch.activation


def publish(out: Path, spec: ZooSpec, plans, shards: dict[str, Path], pops=(), device: str = "cpu",
            precision: str = "fp32", n_classes: int | None = None, task: dict | None = None) -> None:
    """Write the dataset from the shards (``shards`` maps model_id -> its shard), in plan order.

    ``population_id`` is the model's population in this build's grouping of the whole plan, so a
    resumed build (which retrains only unfinished models) publishes the same ids.
    """
    population_of = {m.model_id: pop.population_id for pop in pops for m in pop.members}
    splits = assign_splits([p.model_id for p in plans], spec.build.split, spec.build.split_seed)
    models, ckpt_rows, layouts, weights_by_arch = [], {}, {}, {}
    tables: dict[str, list[pd.DataFrame]] = {}  # pairs, layers and the metrics' own tables
    cache: dict[Path, tuple] = {}
    for p in plans:
        path = shards[p.model_id]
        if path not in cache:
            cache.clear()  # one shard in memory at a time: plans are grouped like populations
            meta, arrays = read_shard(path)
            cache[path] = (meta, arrays, {m: i for i, m in enumerate(meta["model_ids"])})
            for name in shard_table_names(arrays):
                tables.setdefault(name, []).append(shard_table(arrays, name))
        meta, arrays, index = cache[path]
        steps = meta["checkpoint_steps"]
        w = arrays["weights"]  # [K, M, P]
        for i, mid in [(index[p.model_id], p.model_id)]:
            aid = arch_id(p.config)
            layouts.setdefault(aid, meta["layout"])
            final = {k[7:]: float(v[-1, i]) for k, v in arrays.items() if k.startswith("metric/")}
            row = {"model_id": mid, "cell_id": p.cell_id,
                   "population_id": population_of.get(mid, meta["population_id"]),
                   "arch_id": aid, "task": p.config["task.name"], "seed": p.seed,
                   **{f"config.{k}": v for k, v in p.config.items()},
                   "split": splits[mid], "status": meta["status"][i],
                   "diverged_step": int(arrays["diverged_step"][i]),
                   "n_params": sum(t["end"] - t["start"] for t in meta["layout"] if t["trainable"]),
                   **final, "ggap": generalization_gap(final),
                   "wall_time_s": meta["wall_time_s"] / len(meta["model_ids"])}
            row.update({k[13:]: float(v[i]) for k, v in arrays.items() if k.startswith("model_metric/")})
            if "metrics_notes" in meta:
                row["metrics_note"] = meta["metrics_notes"][i]
            models.append(row)
            samples_seen = p.config["train.batch_size"] / (p.config["task.n_train"]
                                                          * p.config["task.train_fraction"])
            for k, step in enumerate(steps):
                ckpt_rows.setdefault(aid, []).append(
                    {"model_id": mid, "arch_id": aid, "step": step, "epoch": step * samples_seen,
                     **{name[7:]: float(v[k, i]) for name, v in arrays.items() if name.startswith("metric/")},
                     "weights": w[k, i]})
            weights_by_arch.setdefault(aid, []).append((mid, w[:, i]))

    models_df = pd.DataFrame(models)
    extra = {"device": device, "precision": precision, "task": task}
    if "train_acc" in models_df and n_classes:  # phase labels are defined for classification zoos
        from ..metrics.coverage import label_zoo

        models_df, labels = label_zoo(models_df, spec.metrics.thresholds, n_classes)
        extra.update(labels)
    _write_parquet(out / "models.parquet", pa.Table.from_pandas(models_df, preserve_index=False))
    ids = set(models_df["model_id"])
    for name, parts in tables.items():
        write_table(out, name, pd.concat([t for t in parts if len(t)], ignore_index=True)
                    if any(len(t) for t in parts) else pd.DataFrame(), keep=ids)

    layout_rows = []
    for aid, lay in layouts.items():
        rows = _layout_rows(aid, lay)
        _activation_after(rows, spec)
        layout_rows += rows
    _write_parquet(out / "layout.parquet", pa.Table.from_pylist(layout_rows))
    written = ["models.parquet", "layout.parquet", *_write_checkpoints(out, ckpt_rows, mixed=len(layouts) > 1)]
    present = tuple(n for n in tables if (out / f"{n}.parquet").is_file())
    written += [f"{n}.parquet" for n in present]
    if spec.build.hdf5:
        _write_hdf5(out, weights_by_arch, layout_rows, models_df, plans)
        written.append("zoo.h5")
    split_files, _ = write_model_splits(out, models_df)
    written += split_files
    atomic_write_bytes(out / "README.md", dataset_card(spec, models_df, present, split_files).encode())
    written.append("README.md")
    if len(models_df):
        from ..plots import phase_diagrams

        with contextlib.suppress(ValueError):  # no varying axis: nothing to draw
            written += phase_diagrams(models_df, out / "plots", thresholds=extra.get("phase_thresholds"))
    write_manifest(out, spec.to_dict(), written, extra)


HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # our split -> Hugging Face's name


def write_model_splits(out: Path, models: pd.DataFrame) -> tuple[list[str], list[str]]:
    """models.parquet's rows once more, one file per split (``splits/models-<split>.parquet``), so
    the card's ``models`` config has real train / validation / test data files. Returns the files
    written and the files removed (a split that became empty), relative to ``out``."""
    written, removed = [], []
    for ours, name in HF_SPLITS.items():
        rel = f"splits/models-{name}.parquet"
        rows = models[models["split"] == ours]
        if len(rows):
            _write_parquet(out / rel, pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False))
            written.append(rel)
        elif (out / rel).exists():
            (out / rel).unlink()
            removed.append(rel)
    return written, removed


def generalization_gap(final: dict) -> float:
    """train_acc - test_acc for classification; test_loss - train_loss for tasks without accuracy."""
    if "train_acc" in final and "test_acc" in final:
        return final["train_acc"] - final["test_acc"]
    return final.get("test_loss", float("nan")) - final.get("train_loss", float("nan"))


def write_table(out: Path, name: str, table: pd.DataFrame, keep: set[str] | None = None) -> None:
    """<name>.parquet (pairs, layers, a metric's own table): rows of the published models only; no file if empty."""
    path = out / f"{name}.parquet"
    if keep is not None and len(table):
        id_cols = [c for c in ("model_id", "model_a", "model_b") if c in table]
        table = table[np.logical_and.reduce([table[c].isin(keep) for c in id_cols])]
    if not len(table):
        path.unlink(missing_ok=True)
        return
    _write_parquet(path, pa.Table.from_pandas(table.reset_index(drop=True), preserve_index=False))


def _write_checkpoints(out: Path, rows_by_arch: dict, mixed: bool) -> list[str]:
    """One part file per architecture; weights as fixed_size_list (large_list if archs mix).
    Returns the files written, relative to ``out``."""
    folder = out / "checkpoints"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    for k, (_, rows) in enumerate(sorted(rows_by_arch.items())):
        weights = np.stack([r.pop("weights") for r in rows]).astype(np.float32)
        p = weights.shape[1]
        values = pa.array(weights.reshape(-1))
        column = (pa.LargeListArray.from_arrays(pa.array(np.arange(0, weights.size + 1, p, dtype=np.int64)), values)
                  if mixed else pa.FixedSizeListArray.from_arrays(values, p))
        table = pa.Table.from_pylist(rows).append_column("weights", column)
        rows_per_group = max(1, ROWS_PER_GROUP_BYTES // (4 * p))
        _write_parquet(folder / f"part-{k:05d}.parquet", table, row_group_size=rows_per_group)
    return [f"checkpoints/part-{k:05d}.parquet" for k in range(len(rows_by_arch))]


def _write_hdf5(out: Path, weights_by_arch: dict, layout_rows: list, models_df: pd.DataFrame, plans) -> None:
    import h5py

    with atomic_path(out / "zoo.h5") as tmp, h5py.File(tmp, "w", track_order=True) as f:
        for aid, items in sorted(weights_by_arch.items()):
            ids = [m for m, _ in items]
            stacked = np.stack([w for _, w in items]).astype(np.float32)  # [N, K, P]
            n, k, p = stacked.shape
            kw = dict(compression="gzip", compression_opts=4, shuffle=True, track_times=False)
            f.create_dataset(f"weights/{aid}", data=stacked[:, -1], chunks=(min(n, 64), p), **kw)
            f.create_dataset(f"checkpoints/{aid}", data=stacked, chunks=(1, k, p), **kw)
            f.create_dataset(f"index/{aid}", data=np.array(ids, dtype="S"), track_times=False)
        lay = pd.DataFrame(layout_rows)
        for col in ("arch_id", "name", "role", "layer_type", "activation_after", "layer"):
            f.create_dataset(f"layout/{col}", data=lay[col].to_numpy(dtype="S"), track_times=False)
        for col in ("start", "end", "layer_idx"):
            f.create_dataset(f"layout/{col}", data=lay[col].to_numpy(np.int64), track_times=False)
        f.create_dataset("layout/shape", data=np.array([json.dumps(s) for s in lay["shape"]], dtype="S"),
                         track_times=False)
