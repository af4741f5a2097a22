"""Add or recompute metrics on a published zoo without retraining (`zoo metrics FAMILY DIR`).

Reads the stored checkpoints, runs the same measure step as the build on cell-complete chunks of
models, merges the results into models.parquet / pairs.parquet / layers.parquet (new values win,
other columns and rows are kept), re-labels phases, and rewrites zoo.json's checksums last. Each
file is replaced atomically; an interrupted update leaves the old zoo.json, so `zoo verify` names
any table that changed.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..io import atomic_write_bytes
from ..spec import MetricsSpec, apply_overrides, spec_from_dict
from .card import dataset_card
from .manifest import record, require_intact
from .reader import load
from .writer import _write_parquet, write_model_splits, write_table

FAMILIES = {
    "spectral": dict(hessian=False, connectivity=False, cka=False, lmc="none"),
    "lmc": dict(hessian=False, spectral=False, connectivity=False, cka=False, lmc="all"),
    "landscape": dict(spectral=False, lmc="none"),
    "all": dict(lmc="all"),
}
PAIR_KEYS = ["model_a", "model_b", "alignment"]


def _merge(old: pd.DataFrame | None, new: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows of ``new`` replace the same-key values of ``old``; everything else of ``old`` stays."""
    if old is None or not len(old):
        return new.reset_index(drop=True)
    if not len(new):
        return old
    merged = new.set_index(keys).combine_first(old.set_index(keys))
    return merged.reset_index()[list(dict.fromkeys([*keys, *old.columns, *new.columns]))]


def _chunks(models: pd.DataFrame, size: int):
    """Whole cells, at most ``size`` models a chunk (a larger cell is one chunk)."""
    chunk: list[str] = []
    for _, cell in models.groupby("cell_id", sort=False):
        if chunk and len(chunk) + len(cell) > size:
            yield chunk
            chunk = []
        chunk += cell["model_id"].tolist()
    if chunk:
        yield chunk


def add_metrics(root: str | Path, family: str, overrides: list[str] = (), progress: bool = True) -> dict:
    """Measure ``family`` on every model of the zoo at ``root``; returns a small summary."""
    from dataclasses import asdict

    from ..generators.architectures import build_for_task
    from ..generators.build import load_spec_task
    from ..generators.tasks.objectives import objective_for
    from ..metrics.measure import measure_population
    from ..studies.runner import card_with_study, get_study

    manifest = require_intact(root)  # never re-hash a damaged file into a valid-looking zoo
    zoo = load(root)
    raw = apply_overrides(zoo.manifest["spec"], list(overrides))
    spec = spec_from_dict(raw)
    forced = dict(FAMILIES[family])
    if forced.get("lmc") == "all" and any(o.strip().startswith("metrics.lmc") for o in overrides):
        forced.pop("lmc")  # `zoo metrics lmc --set metrics.lmc=ste`: the user's alignments win
    metrics = MetricsSpec(**{**asdict(spec.metrics), **forced})
    data = load_spec_task(spec)
    per_model, pair_tables, layer_tables = [], [], []
    for aid in zoo.arch_ids:
        view = zoo.arch(aid)
        cfg = view.config(view.model_ids[0])
        build, adapt = build_for_task(cfg, data.input_shape, data.n_classes, data.extras.get("vocab_size"))
        adapted = replace(data, x_train=adapt(data.x_train), x_test=adapt(data.x_test))
        steps = view.steps(aid)
        for ids in _chunks(view.models, spec.build.max_population):
            rows = view.models.set_index("model_id").loc[ids]
            weights = np.stack([view.weights(ids, step=s) for s in steps])  # [K, M, P]
            measured = measure_population(
                build(), objective_for(adapted), adapted, weights, steps, view.layout_of(aid), ids,
                rows["cell_id"].tolist(), rows["status"].tolist(), metrics, lr=rows["config.train.lr"].tolist(),
                optimizer=cfg["train.optimizer"], momentum=cfg["train.momentum"], batch_size=cfg["train.batch_size"])
            per_model.append(pd.DataFrame({"model_id": ids, **measured.per_model}))
            pair_tables.append(measured.pairs)
            layer_tables.append(measured.layers)
            if progress:
                print(f"zoo metrics {family}: {len(ids)} models of {aid}", file=sys.stderr)

    root = Path(root)
    models = pd.read_parquet(root / "models.parquet")
    new_cols = pd.concat(per_model, ignore_index=True).set_index("model_id")
    stale = [c for c in models if c in new_cols.columns or c in ("phase", "cell_phase") or c.startswith("phase.")]
    models = models.drop(columns=stale).join(new_cols, on="model_id")
    extra = {"spec": spec.to_dict()}  # the spec as measured: metrics overrides included
    if "train_acc" in models and data.kind == "classification":
        from ..metrics.coverage import label_zoo

        models, labels = label_zoo(models, spec.metrics.thresholds, data.n_classes)
        extra.update(labels)

    pairs = pd.concat([t for t in pair_tables if len(t)], ignore_index=True) if any(
        len(t) for t in pair_tables) else pd.DataFrame()
    layers = pd.concat([t for t in layer_tables if len(t)], ignore_index=True) if any(
        len(t) for t in layer_tables) else pd.DataFrame()
    written, removed = ["models.parquet"], []
    for name, new, keys in (("pairs", pairs, PAIR_KEYS), ("layers", layers, ["model_id", "step", "layer"])):
        write_table(root, name, _merge(zoo._store.table(name), new, keys))
        (written if (root / f"{name}.parquet").is_file() else removed).append(f"{name}.parquet")
    _write_parquet(root / "models.parquet", pa.Table.from_pandas(models, preserve_index=False))
    split_files, split_removed = write_model_splits(root, models)
    written += split_files
    removed += split_removed
    present = tuple(n for n in ("pairs", "layers") if (root / f"{n}.parquet").is_file())
    card = dataset_card(spec, models, present, split_files)
    for name, entry in manifest.get("studies", {}).items():  # keep each study's config and section
        card = card_with_study(card, get_study(name), entry)
    atomic_write_bytes(root / "README.md", card.encode())
    written.append("README.md")
    if len(models):
        import contextlib

        from ..plots import phase_diagrams

        with contextlib.suppress(ValueError):  # no varying axis: nothing to draw
            written += phase_diagrams(models, root / "plots", thresholds=extra.get("phase_thresholds"))
    record(root, manifest, written, removed, extra,
           event={"command": "metrics", "family": family, "set": list(overrides)})
    return {"models": len(models), "pairs": len(pairs), "layers": len(layers)}


def cmd_metrics(args) -> int:
    summary = add_metrics(args.dir, args.family, args.set or [], progress=not args.quiet)
    print(f"added {args.family} metrics to {args.dir}: {summary['models']} models, "
          f"{summary['pairs']} pair rows, {summary['layers']} layer rows")
    return 0
