"""The shard format: one population's trained weights, curves and measurements in one file.

A shard is an ``.npz`` written atomically (temp file, fsync, rename): ``meta`` (JSON: ids,
checkpoint steps, status, layout, notes), ``weights`` [K, M, P], ``metric/<name>`` [K, M] curves,
``model_metric/<name>`` [M] measurements and ``table/<name>`` Parquet bytes (pairs, layers).
Zip CRCs are checked on read, so a flipped byte is found before a shard is published.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import BuildError
from .io import atomic_path


def _table_bytes(df: pd.DataFrame) -> np.ndarray:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
    return np.frombuffer(sink.getvalue().to_pybytes(), dtype=np.uint8)


def shard_table_names(arrays: dict[str, np.ndarray]) -> list[str]:
    """The tables (pairs, layers, a metric's own) stored in a shard."""
    return [k[6:] for k in arrays if k.startswith("table/")]


def shard_table(arrays: dict[str, np.ndarray], name: str) -> pd.DataFrame:
    """A table (pairs, layers, a metric's own) stored in a shard; empty if the shard has none."""
    blob = arrays.get(f"table/{name}")
    if blob is None or not blob.size:
        return pd.DataFrame()
    return pq.read_table(pa.BufferReader(blob.tobytes())).to_pandas()


def write_shard(path: Path, pop, result, measured=None) -> None:
    """Write one population's shard atomically: ``pop`` its plan, ``result`` its training, ``measured`` its metrics."""
    meta = {"population_id": pop.population_id, "model_ids": result.model_ids,
            "checkpoint_steps": result.checkpoint_steps, "status": result.status,
            "wall_time_s": result.wall_time_s,
            "layout": [vars(t) for t in result.layout.tensors]}
    arrays = {"weights": result.weights.astype(np.float32), "diverged_step": result.diverged_step,
              **{f"metric/{k}": v for k, v in result.metrics.items()}}
    if measured is not None:
        meta["metrics_notes"] = measured.notes
        arrays.update({f"model_metric/{k}": np.asarray(v, dtype=np.float64) for k, v in measured.per_model.items()})
        arrays.update({f"metric/{k}": np.asarray(v, dtype=np.float64) for k, v in measured.per_checkpoint.items()})
        for name, table in measured.tables.items():
            if len(table):
                arrays[f"table/{name}"] = _table_bytes(table)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def read_shard(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Load a shard fully (zip CRCs are checked on read); raise BuildError if it is corrupt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise BuildError(f"corrupt shard {path}: {type(e).__name__}: {e}; rerun with --repair "
                         "to move it aside and retrain that population") from None
    return meta, arrays


