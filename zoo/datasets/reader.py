"""Read a published zoo: tables with pandas, weights row by row from the HDF5 mirror.

``load(DIR)`` returns a :class:`Zoo`: the Parquet tables as DataFrames and lazy weight access.
Weights are read from ``zoo.h5`` (``/weights/<arch_id>`` [N, P] final, ``/checkpoints/<arch_id>``
[N, K, P]) one selection of rows at a time, never the whole zoo; without an HDF5 mirror they are
read from ``checkpoints/part-*.parquet`` with a row filter. A ``Zoo`` may be a *view*: the same
files restricted to some models (a split, an architecture, a subset), sharing one file handle.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..errors import DatasetError
from ..functional import Layout, TensorSpec
from .manifest import read_manifest

SPLITS = ("train", "val", "test")




class WeightBatch(NamedTuple):
    """One streamed batch: ``weights[i]`` is the flat vector of ``model_ids[i]`` (one arch)."""

    arch_id: str
    model_ids: list[str]
    weights: np.ndarray  # [B, P] float32


def read_table(root: Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A published Parquet table; a missing or damaged one is a DatasetError naming the file."""
    import pyarrow as pa

    path = root / name
    if not path.is_file():
        raise DatasetError(f"{path} is missing; run `zoo verify {root}`")
    try:
        return pd.read_parquet(path, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DatasetError(f"{path} is unreadable ({type(e).__name__}); run `zoo verify {root}`") from None


class _Store:
    """What all views of one zoo share: the folder, full tables, the open HDF5 file, caches."""

    def __init__(self, root: Path):
        self.root = root
        self.manifest = read_manifest(root)
        self.models = read_table(root, "models.parquet")
        self.layout = read_table(root, "layout.parquet")
        self.arch_of = dict(zip(self.models["model_id"], self.models["arch_id"]))
        self._h5, self._pid = None, None
        self._rows: dict[str, dict[str, int]] = {}
        self._steps: dict[str, list[int]] = {}
        self._tables: dict[str, pd.DataFrame | None] = {}
        self.cache: dict = {}  # derived records shared by the views (e.g. the task record)

    @property
    def h5(self):
        """The open zoo.h5 (None without one); reopened in a forked DataLoader worker."""
        if (self._h5 is None or self._pid != os.getpid()) and (self.root / "zoo.h5").exists():
            import h5py

            try:
                self._h5, self._pid = h5py.File(self.root / "zoo.h5", "r"), os.getpid()
            except OSError as e:
                raise DatasetError(f"{self.root / 'zoo.h5'} is unreadable ({e}); "
                                   f"run `zoo verify {self.root}`") from None
        return self._h5

    def table(self, name: str) -> pd.DataFrame | None:
        if name not in self._tables:
            path = self.root / f"{name}.parquet"
            self._tables[name] = read_table(self.root, path.name) if path.exists() else None
        return self._tables[name]

    def part_of(self, arch_id: str) -> list[Path]:
        """Checkpoint part files holding ``arch_id`` (one per arch in the current writer)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = []
        for p in sorted((self.root / "checkpoints").glob("part-*.parquet")):
            try:
                col = pq.read_table(p, columns=["arch_id"]).column(0)
            except (OSError, ValueError, pa.ArrowException) as e:
                raise DatasetError(f"{p} is unreadable ({type(e).__name__}); run `zoo verify {self.root}`") from None
            if arch_id in set(col.unique().to_pylist()):
                parts.append(p)
        return parts

    def rows(self, arch_id: str) -> dict[str, int]:
        """model_id -> row in the HDF5 datasets of ``arch_id``."""
        if arch_id not in self._rows:
            index = self.h5[f"index/{arch_id}"][:]
            self._rows[arch_id] = {m.decode(): i for i, m in enumerate(index)}
        return self._rows[arch_id]

    def steps(self, arch_id: str) -> list[int]:
        """Checkpoint steps of ``arch_id`` (sorted; the last one is the final weights)."""
        if arch_id not in self._steps:
            import pyarrow.dataset as ds

            parts = self.part_of(arch_id)
            table = ds.dataset([str(p) for p in parts], format="parquet").to_table(
                columns=["step"], filter=ds.field("arch_id") == arch_id)
            self._steps[arch_id] = sorted(set(table.column("step").to_pylist()))
        return self._steps[arch_id]


def _layout_from_rows(rows: pd.DataFrame) -> Layout:
    specs = [TensorSpec(name=r.name, shape=tuple(int(s) for s in r.shape), start=int(r.start), end=int(r.end),
                        trainable=bool(r.trainable), layer=r.layer, role=r.role, layer_type=r.layer_type)
             for r in rows.sort_values("start").itertuples(index=False)]
    return Layout(tuple(specs))


def _read_rows(dataset, rows: np.ndarray, k: int | None = None) -> np.ndarray:
    """dataset[rows] (or dataset[rows, k]) for any row order: one sorted h5py selection."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    uniq, inverse = np.unique(sorted_rows, return_inverse=True)
    if len(uniq) and uniq[-1] - uniq[0] + 1 == len(uniq):  # contiguous: one slice read
        sel = slice(int(uniq[0]), int(uniq[-1]) + 1)
    else:
        sel = uniq.tolist()
    block = dataset[sel] if k is None else dataset[sel, k]
    out = np.empty((len(rows),) + block.shape[1:], dtype=np.float32)
    out[order] = block[inverse]
    return out


class Zoo:
    """A published zoo, or a view of one restricted to some models.

    Attributes: ``models`` (one row per model of this view), ``layout`` (one row per tensor per
    arch), ``layers`` / ``pairs`` (restricted to this view's models; None when not published),
    ``manifest`` (zoo.json), ``root`` (the folder).
    """

    def __init__(self, root: str | Path, _store: _Store | None = None, _models: pd.DataFrame | None = None):
        self.root = Path(root)
        self._store = _store or _Store(self.root)
        self.models = (self._store.models if _models is None else _models).reset_index(drop=True)

    # ------------------------------------------------------------------ tables
    @property
    def manifest(self) -> dict:
        return self._store.manifest

    @property
    def layout(self) -> pd.DataFrame:
        return self._store.layout

    @property
    def model_ids(self) -> list[str]:
        return self.models["model_id"].tolist()

    @property
    def arch_ids(self) -> list[str]:
        return list(dict.fromkeys(self.models["arch_id"]))

    @property
    def layers(self) -> pd.DataFrame | None:
        t = self._store.table("layers")
        return None if t is None else t[t["model_id"].isin(set(self.model_ids))].reset_index(drop=True)

    @property
    def pairs(self) -> pd.DataFrame | None:
        """Pairs whose two models are both in this view."""
        t = self._store.table("pairs")
        if t is None:
            return None
        ids = set(self.model_ids)
        return t[t["model_a"].isin(ids) & t["model_b"].isin(ids)].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.models)

    def __repr__(self) -> str:
        return f"Zoo({str(self.root)!r}, models={len(self)}, archs={len(self.arch_ids)})"

    # ------------------------------------------------------------------ views
    def _view(self, models: pd.DataFrame) -> Zoo:
        return Zoo(self.root, self._store, models)

    def subset(self, ids: Iterable[str] | np.ndarray | pd.Series) -> Zoo:
        """The view holding only ``ids`` (model ids) or the rows where a boolean mask is True."""
        if isinstance(ids, (pd.Series, np.ndarray)) and np.asarray(ids).dtype == bool:
            return self._view(self.models[np.asarray(ids)])
        ids = [ids] if isinstance(ids, str) else list(ids)
        missing = set(ids) - set(self.model_ids)
        if missing:
            raise DatasetError(f"unknown model ids in this view: {sorted(missing)[:3]}")
        return self._view(self.models.set_index("model_id").loc[ids].reset_index())

    def split(self, name: str) -> Zoo:
        """The models of one split (train / val / test), by the ``split`` column."""
        if name not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {name!r}")
        return self._view(self.models[self.models["split"] == name])

    def arch(self, arch_id: str) -> Zoo:
        """The models of one architecture (all their weight vectors have the same layout)."""
        if arch_id not in self.arch_ids:
            raise DatasetError(f"no arch {arch_id!r} in this view; archs: {self.arch_ids}")
        return self._view(self.models[self.models["arch_id"] == arch_id])

    # ------------------------------------------------------------------ layout
    def layout_of(self, arch_id: str) -> Layout:
        """The flat layout of ``arch_id`` as a :class:`zoo.functional.Layout`."""
        rows = self.layout[self.layout["arch_id"] == arch_id]
        if rows.empty:
            raise DatasetError(f"no layout rows for arch {arch_id!r}")
        return _layout_from_rows(rows)

    def steps(self, arch_id: str | None = None) -> list[int]:
        """Checkpoint steps of an arch (the only one of this view if not given)."""
        return self._store.steps(arch_id or self._single_arch(self.model_ids))

    def _single_arch(self, ids: Sequence[str]) -> str:
        try:
            archs = {self._store.arch_of[m] for m in ids}
        except KeyError as e:
            raise DatasetError(f"unknown model id {e.args[0]!r}") from None
        if len(archs) != 1:
            raise DatasetError(f"the models span {len(archs)} architectures {sorted(archs)}; "
                               "select one with zoo.arch(arch_id) or ids of one arch")
        return archs.pop()

    # ------------------------------------------------------------------ weights
    def weights(self, ids: str | Sequence[str] | None = None, step: int | None = None,
                as_torch: bool = False):
        """Flat weight vectors [len(ids), P] float32 of one architecture.

        ``ids`` defaults to every model of this view; ``step`` is a checkpoint step (None: the
        final weights). Reads only the requested rows from zoo.h5.
        """
        ids = self.model_ids if ids is None else [ids] if isinstance(ids, str) else list(ids)
        if not ids:
            raise DatasetError("no model ids given")
        aid = self._single_arch(ids)
        out = self._read(aid, ids, step)
        if as_torch:
            import torch

            return torch.from_numpy(out)
        return out

    def _read(self, aid: str, ids: Sequence[str], step: int | None) -> np.ndarray:
        k = None
        if step is not None:
            steps = self._store.steps(aid)
            if step not in steps:
                raise DatasetError(f"step {step} is not a checkpoint of {aid}; steps: {steps}")
            k = steps.index(step)
        h5 = self._store.h5
        if h5 is None:
            return self._read_parquet(aid, ids, step)
        rows = self._store.rows(aid)
        idx = np.array([rows[m] for m in ids], dtype=np.int64)
        if k is None or k == len(self._store.steps(aid)) - 1 and f"weights/{aid}" in h5:
            return _read_rows(h5[f"weights/{aid}"], idx)
        return _read_rows(h5[f"checkpoints/{aid}"], idx, k)

    def _read_parquet(self, aid: str, ids: Sequence[str], step: int | None) -> np.ndarray:
        import pyarrow.dataset as ds

        step = self._store.steps(aid)[-1] if step is None else step
        parts = [str(p) for p in self._store.part_of(aid)]
        table = ds.dataset(parts, format="parquet").to_table(
            columns=["model_id", "weights"],
            filter=(ds.field("step") == step) & ds.field("model_id").isin(list(ids)))
        got = {m: i for i, m in enumerate(table.column("model_id").to_pylist())}
        flat = table.column("weights").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        w = flat.reshape(len(got), -1).astype(np.float32, copy=False)
        return w[[got[m] for m in ids]]

    def iter_weights(self, batch_size: int | None = None, ids: Sequence[str] | None = None,
                     step: int | None = None, memory_budget: int | None = None) -> Iterator[WeightBatch]:
        """Stream weights as :class:`WeightBatch` (arch_id, model_ids, [B, P]) batches, one arch each.

        Rows per batch = min(batch_size, memory_budget // (4 P)), so every yielded array takes at
        most ``memory_budget`` bytes; models are grouped by arch in view order and each batch is
        one HDF5 selection (HDF5 decompresses whole chunks of <= 64 rows internally).
        """
        ids = self.model_ids if ids is None else list(ids)
        by_arch: dict[str, list[str]] = {}
        for m in ids:
            if m not in self._store.arch_of:
                raise DatasetError(f"unknown model id {m!r}")
            by_arch.setdefault(self._store.arch_of[m], []).append(m)
        for aid, arch_ids in by_arch.items():
            p = self.layout_of(aid).size
            rows = batch_size or len(arch_ids)
            if memory_budget is not None:
                fit = memory_budget // (4 * p)
                if fit < 1:
                    raise DatasetError(f"memory budget {memory_budget} B is below one weight vector "
                                       f"of {aid} ({4 * p} B)")
                rows = min(rows, fit)
            for s in range(0, len(arch_ids), rows):
                chunk = arch_ids[s:s + rows]
                yield WeightBatch(aid, chunk, self._read(aid, chunk, step))

    def checkpoints(self, ids: Sequence[str] | None = None, with_weights: bool = False) -> pd.DataFrame:
        """Rows (model_id, step, epoch, metrics[, weights]) of the checkpoint tables for ``ids``."""
        import pyarrow.dataset as ds

        ids = self.model_ids if ids is None else list(ids)
        parts = sorted(str(p) for p in (self.root / "checkpoints").glob("part-*.parquet"))
        d = ds.dataset(parts, format="parquet")
        cols = [c for c in d.schema.names if with_weights or c != "weights"]
        return d.to_table(columns=cols, filter=ds.field("model_id").isin(ids)).to_pandas()

    # ------------------------------------------------------------------ models
    def config(self, model_id: str) -> dict:
        """The model's resolved config as a flat dict (``arch.width`` ...), from config.* columns."""
        row = self._store.models.set_index("model_id").loc[model_id]
        return {k[7:]: (v.item() if hasattr(v, "item") else v)
                for k, v in row.items() if k.startswith("config.")}

    def model(self, model_id: str, step: int | None = None):
        """An ``nn.Module`` (eval mode) of the model's architecture with its weights loaded."""
        import torch

        from ..functional import load_flat
        from ..generators.architectures import build_for_task

        task = self.task
        build, _ = build_for_task(self.config(model_id), task["input_shape"], task["n_outputs"], task["vocab_size"])
        net = build()
        aid = self._store.arch_of[model_id]
        load_flat(net, torch.from_numpy(self._read(aid, [model_id], step)[0]), self.layout_of(aid))
        return net.eval()

    def input_adapter(self, arch_id: str | None = None) -> Callable:
        """The function reshaping task inputs [N, *shape] to what the arch's models take."""
        from ..generators.architectures import build_for_task

        aid = arch_id or self._single_arch(self.model_ids)
        mid = self.models.loc[self.models["arch_id"] == aid, "model_id"].iloc[0]
        task = self.task
        return build_for_task(self.config(mid), task["input_shape"], task["n_outputs"], task["vocab_size"])[1]

    @property
    def task(self) -> dict:
        """The task record (name, kind, input_shape, n_outputs, vocab_size) of zoo.json; zoos
        published before it had one derive it from the task's data, once."""
        if "task" not in self._store.cache:
            from ..generators.tasks import task_record

            self._store.cache["task"] = self.manifest.get("task") or task_record(self.task_data())
        return self._store.cache["task"]

    def task_data(self, model_id: str | None = None):
        """The training/test data the zoo (or the model ``model_id``: its task.* phase axis values
        applied, e.g. task.beta) was trained on."""
        from ..generators.tasks import load_task_section, model_task

        try:
            task = self.manifest["spec"]["task"]
            return load_task_section(model_task(task, self.config(model_id)) if model_id else task)
        except (KeyError, TypeError) as e:
            raise DatasetError(f"zoo.json's spec has no usable [task] section ({e})") from None

    def by_task(self) -> list[Zoo]:
        """Views of the models that share their task data: one, unless a phase axis varies a task
        field (task.beta, task.n_train; per-model fields such as label noise do not split)."""
        from ..spec import PER_MODEL_KEYS

        models = self.models
        keys = [c for c in models if c.startswith("config.task.") and c[7:] not in PER_MODEL_KEYS
                and models[c].astype(str).nunique() > 1]
        if not keys:
            return [self]
        return [self.subset(g["model_id"]) for _, g in models.groupby(keys, sort=False)]


def load(root: str | Path) -> Zoo:
    """Open a published zoo folder (reads models.parquet and layout.parquet; weights lazily)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; give the --out folder of zoo build")
    return Zoo(root)


def split_by_cells(zoo: Zoo, test_cells: Sequence[str] | Callable[[pd.DataFrame], pd.Series] | None = None,
                   n_test: int | None = None, val_fraction: float = 0.0, seed: int = 0) -> Zoo:
    """An out-of-distribution split: whole phase-grid cells held out as the test split.

    ``test_cells`` is a list of cell ids, or a function of the models DataFrame returning a
    boolean mask (every cell with a selected model is held out whole), or None to draw
    ``n_test`` cells at random with ``seed``. Of the other cells, ``val_fraction`` (whole cells,
    seeded) become val and the rest train. Returns a view whose ``split`` column is reassigned,
    so ``.split("test")`` holds exactly the held-out cells and no cell is in two splits.
    """
    models = zoo.models.copy()
    cells = sorted(models["cell_id"].unique())

    def ranked(items: list[str], salt: str) -> list[str]:
        return sorted(items, key=lambda c: hashlib.sha256(f"{seed}/{salt}/{c}".encode()).hexdigest())

    if callable(test_cells):
        held = set(models.loc[np.asarray(test_cells(models), dtype=bool), "cell_id"])
    elif test_cells is not None:
        held = set(test_cells)
        unknown = held - set(cells)
        if unknown:
            raise DatasetError(f"unknown cell ids: {sorted(unknown)[:3]}")
    else:
        if n_test is None or not 0 < n_test < len(cells):
            raise DatasetError(f"give test_cells, or n_test between 1 and {len(cells) - 1}")
        held = set(ranked(cells, "test")[:n_test])
    rest = [c for c in cells if c not in held]
    val = set(ranked(rest, "val")[:round(val_fraction * len(rest))])
    models["split"] = ["test" if c in held else "val" if c in val else "train" for c in models["cell_id"]]
    return Zoo(zoo.root, zoo._store, models)


def cell_folds(zoo: Zoo, k: int, seed: int = 0) -> list[Zoo]:
    """K-fold cross-validation over whole cells: ``k`` ``split_by_cells`` views whose test cells
    partition the zoo's cells, so every model is predicted exactly once by a fit that never saw its
    cell. Why: one draw of a few held-out cells has a small and erratic test variance, so its R^2
    swings from draw to draw; predictions pooled over the folds are scored on the whole zoo."""
    cells = sorted(zoo.models["cell_id"].unique())
    if not 2 <= k <= len(cells):
        raise DatasetError(f"k must be between 2 and the number of cells ({len(cells)}), got {k}")
    ranked = sorted(cells, key=lambda c: hashlib.sha256(f"{seed}/folds/{c}".encode()).hexdigest())
    return [split_by_cells(zoo, ranked[i::k]) for i in range(k)]
