"""`zoo export DIR --format parquet|hdf5|npz --out PATH`: a published zoo in another layout.

- ``parquet``: the Parquet tables (models, layout, checkpoints parts, layers/pairs if present) and
  the card, copied into the folder ``PATH``, with a zoo.json listing just those files (so the
  folder loads with ``zoo.datasets.load``, weights then read from Parquet, and verifies).
- ``hdf5``: the HDF5 mirror as the file ``PATH`` (or ``PATH/zoo.h5`` for a folder); written from
  the tables when the zoo was built without one (final weights, index and layout).
- ``npz``: the Small CNN Zoo convention (Unterthiner et al. 2020), one folder per architecture:
  ``PATH/<arch_id>/weights.npy`` [N, P] float32 final weights, ``metrics.csv`` (the models.parquet
  rows, same order) and ``layout.csv`` (name, shape, start, end ... of each tensor).

All files are written atomically; weights are streamed under ``memory_budget`` bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..io import atomic_path, atomic_write_bytes
from .manifest import require_intact
from .reader import DatasetError, load

FORMATS = ("parquet", "hdf5", "npz")


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _out_folder(out: Path, root: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} is a file; give a folder")
    if out.resolve() == root.resolve():
        raise DatasetError("--out must differ from the zoo folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def export(root: str | Path, fmt: str, out: str | Path, memory_budget: int = 256 << 20) -> Path:
    """Write the zoo at ``root`` to ``out`` in format ``fmt``; returns the written path."""
    root, out = Path(root), Path(out)
    if fmt not in FORMATS:
        raise DatasetError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if out.resolve().is_relative_to(root.resolve()):  # the zoo folder holds only what zoo.json lists
        raise DatasetError(f"--out {out}: expected a path outside the zoo folder {root}")
    require_intact(root)  # a damaged zoo is not copied into a new, valid-looking one
    zoo = load(root)
    if fmt == "parquet":
        out = _out_folder(out, root)
        names = ["models.parquet", "layout.parquet", "layers.parquet", "pairs.parquet", "README.md"]
        copied = [n for n in names if (root / n).is_file()] + \
            [f"checkpoints/{p.name}" for p in sorted((root / "checkpoints").glob("part-*.parquet"))]
        for rel in copied:
            _copy(root / rel, out / rel)
        # a manifest listing the copied files keeps the folder loadable and verifiable
        manifest = dict(zoo.manifest)
        manifest["files"] = {k: v for k, v in zoo.manifest["files"].items() if k in copied}
        atomic_write_bytes(out / "zoo.json", json.dumps(manifest, indent=1).encode())
        return out
    if fmt == "hdf5":
        target = out / "zoo.h5" if out.is_dir() or out.suffix not in (".h5", ".hdf5") else out
        if target.resolve() == (root / "zoo.h5").resolve():
            raise DatasetError("--out must differ from the zoo's own zoo.h5")
        if (root / "zoo.h5").is_file():
            _copy(root / "zoo.h5", target)
        else:
            _write_hdf5(zoo, target, memory_budget)
        return target
    _ = zoo._store.h5  # open the HDF5 mirror now: a damaged one fails before anything is written
    out = _out_folder(out, root)
    for aid in zoo.arch_ids:
        view = zoo.arch(aid)
        folder = out / aid
        folder.mkdir(exist_ok=True)
        p = zoo.layout_of(aid).size
        with atomic_path(folder / "weights.npy") as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(view), p))
            row = 0
            for batch in view.iter_weights(memory_budget=memory_budget):
                arr[row:row + len(batch.model_ids)] = batch.weights
                row += len(batch.model_ids)
            arr.flush()
            del arr
        with atomic_path(folder / "metrics.csv") as tmp:
            view.models.to_csv(tmp, index=False)
        with atomic_path(folder / "layout.csv") as tmp:
            lay = zoo.layout[zoo.layout["arch_id"] == aid].copy()
            lay["shape"] = [json.dumps([int(s) for s in v]) for v in lay["shape"]]
            lay.to_csv(tmp, index=False)
    return out


def _write_hdf5(zoo, target: Path, memory_budget: int) -> None:
    import h5py

    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
        for aid in zoo.arch_ids:
            view = zoo.arch(aid)
            p = zoo.layout_of(aid).size
            ds = f.create_dataset(f"weights/{aid}", shape=(len(view), p), dtype=np.float32,
                                  chunks=(min(len(view), 64), p), compression="gzip", shuffle=True)
            row = 0
            for batch in view.iter_weights(memory_budget=memory_budget):
                ds[row:row + len(batch.model_ids)] = batch.weights
                row += len(batch.model_ids)
            f.create_dataset(f"index/{aid}", data=np.array(view.model_ids, dtype="S"))
        lay = zoo.layout
        for col in ("arch_id", "name", "role", "layer_type", "layer"):
            f.create_dataset(f"layout/{col}", data=lay[col].to_numpy(dtype="S"))
        for col in ("start", "end", "layer_idx"):
            f.create_dataset(f"layout/{col}", data=lay[col].to_numpy(np.int64))
        f.create_dataset("layout/shape", data=np.array([json.dumps([int(s) for s in v])
                                                        for v in lay["shape"]], dtype="S"))


def cmd_export(args) -> int:
    """CLI: ``zoo export DIR --format F --out PATH``; user errors print one line and exit 2."""
    path = export(args.dir, args.format, args.out)
    print(f"exported {args.dir} as {args.format} to {path}")
    return 0
