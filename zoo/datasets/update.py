"""Add or recompute metrics on a published zoo without retraining (`zoo metrics FAMILY DIR`).

Reads the stored checkpoints, runs the same measure step as the build on cell-complete chunks of
models, merges the results into models.parquet / pairs.parquet / layers.parquet (new values win,
other columns and rows are kept), re-labels phases, and rewrites zoo.json's checksums last. Each
file is replaced atomically; an interrupted update leaves the old zoo.json, so `zoo verify` names
any table that changed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..io import atomic_write_bytes
from ..pipeline import load_spec_task
from ..progress import ProgressBar
from ..spec import MetricsSpec, SpecError, apply_overrides, spec_from_dict
from .card import dataset_card
from .manifest import all_or_nothing, record, require_intact
from .reader import load
from .writer import _write_parquet, write_model_splits, write_table


def metric_names(choice: str) -> list[str]:
    """The registered metrics ``zoo metrics CHOICE`` measures: one metric, a group, or all."""
    from ..metrics.registry import GROUPS, METRICS

    if choice == "all":
        return list(METRICS)
    if choice in GROUPS:
        return GROUPS[choice]
    if choice in METRICS:
        return [choice]
    raise SpecError(f"zoo metrics: unknown metric {choice!r}; choose from {', '.join([*METRICS, *GROUPS, 'all'])}")


def metrics_for(spec: MetricsSpec, names: list[str], overrides: list[str]) -> MetricsSpec:
    """``spec`` with the metrics ``names`` switched on and every other metric off; a switch the
    user set explicitly (``--set metrics.lmc=ste``) keeps the user's value."""
    from ..metrics.registry import METRICS

    fields, options = {}, dict(spec.options)
    explicit = {o.partition("=")[0].strip().removeprefix("metrics.") for o in overrides}
    for name, metric in METRICS.items():
        if metric.field in explicit and name in names:
            continue
        value = metric.on if name in names else metric.off
        if metric.field in options or metric.field in metric.options:
            options[metric.field] = value
        else:
            fields[metric.field] = value
    return replace(spec, **fields, options=options)


def merge_notes(old: str, new: str, measured: list[str]) -> str:
    """``metrics_note`` after re-measuring ``measured``: the old note's parts about other metrics,
    then the new parts (parts are "name: why", joined by "; ")."""
    kept = [p for p in (old or "").split("; ") if p and p.partition(":")[0] not in measured]
    return "; ".join(dict.fromkeys([*kept, *[p for p in new.split("; ") if p]]))


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
    """Measure ``family`` (a metric, a group or all) on every model of the zoo at ``root``;
    returns {"models": n, "<table>": rows measured} for the tables measured."""
    names = metric_names(family)
    for item in overrides:
        if not item.strip().startswith("metrics."):
            raise SpecError(f"--set {item.partition('=')[0].strip()}: expected a metrics.* field "
                            "(zoo metrics measures trained models again; other fields need zoo build)")
    manifest = require_intact(root)  # never re-hash a damaged file into a valid-looking zoo
    zoo = load(root)
    spec = spec_from_dict(apply_overrides(zoo.manifest["spec"], list(overrides)))
    metrics = metrics_for(spec.metrics, names, list(overrides))
    data = load_spec_task(spec)
    per_model, tables = [], {}
    with ProgressBar(None, len(zoo.models), desc=f"zoo metrics {family}", enabled=progress,
                     weights={"measure": 1.0}) as bar:
        for aid in zoo.arch_ids:
            _measure_arch(zoo, aid, spec, spec.build.max_population, metrics, bar, per_model, tables)
        bar.stage("publish")
        models = _merged_models(Path(root), per_model, names)
        with all_or_nothing(root):  # a full disk midway leaves the zoo as it was
            return _publish(Path(root), zoo, manifest, spec, data, models, tables, event={
                "command": "metrics", "family": family, "set": list(overrides)})


def _measure_arch(zoo, aid: str, spec, chunk: int, metrics: MetricsSpec, bar: ProgressBar, per_model: list,
                  tables: dict) -> None:
    """Measure one architecture's models, cell-complete chunks of at most ``chunk`` models of one
    task data each, into ``per_model`` (frames with the new notes) and ``tables`` (name -> frames)."""
    view = zoo.arch(aid)
    steps = view.steps(aid)
    for group in view.by_task():
        cfg = view.config(group.model_ids[0])
        data = load_spec_task(spec, config={k: v for k, v in cfg.items() if k.startswith("task.")})
        for ids in _chunks(group.models, chunk):
            _measure_chunk(view, aid, ids, cfg, data, steps, metrics, bar, per_model, tables)


def _measure_chunk(view, aid: str, ids: list[str], cfg: dict, data, steps: list[int], metrics: MetricsSpec,
                   bar: ProgressBar, per_model: list, tables: dict) -> None:
    """Measure the models ``ids`` (one population's worth) on ``data``, their task data."""
    from ..generators.architectures import build_for_task
    from ..generators.tasks.objectives import objective_for
    from ..metrics.base import Population
    from ..metrics.measure import measure_population

    build, adapt = build_for_task(cfg, data.input_shape, data.n_classes, data.extras.get("vocab_size"))
    adapted = replace(data, x_train=adapt(data.x_train), x_test=adapt(data.x_test))
    with bar.track(len(ids)) as unit:
        unit.report("load", 0, 1)
        rows = view.models.set_index("model_id").loc[ids]
        weights = np.stack([view.weights(ids, step=s) for s in steps])  # [K, M, P]
        population = Population(
            model=build(), objective=objective_for(adapted), data=adapted, weights=weights, steps=steps,
            layout=view.layout_of(aid), model_ids=ids, cell_ids=rows["cell_id"].tolist(),
            status=rows["status"].tolist(), lr=rows["config.train.lr"].tolist(), optimizer=cfg["train.optimizer"],
            momentum=cfg["train.momentum"], batch_size=cfg["train.batch_size"])
        measured = measure_population(population, metrics, report=unit.report)
    per_model.append(pd.DataFrame({"model_id": ids, **measured.per_model, "new_note": measured.notes}))
    for name, table in measured.tables.items():
        tables.setdefault(name, []).append(table)


def _merged_models(root: Path, per_model: list[pd.DataFrame], names: list[str]) -> pd.DataFrame:
    """models.parquet with the new columns replacing the old ones (phase labels dropped, to be
    relabelled) and each model's note merged."""
    models = pd.read_parquet(root / "models.parquet")
    new_cols = pd.concat(per_model, ignore_index=True).set_index("model_id")
    notes = new_cols.pop("new_note")
    stale = [c for c in models if c in new_cols.columns or c in ("phase", "cell_phase") or c.startswith("phase.")]
    models = models.drop(columns=stale).join(new_cols, on="model_id")
    old_notes = models["metrics_note"] if "metrics_note" in models else pd.Series("", index=models.index)
    models["metrics_note"] = [merge_notes(o, notes.get(m, ""), names) for o, m in zip(old_notes, models["model_id"])]
    return models


def _publish(root: Path, zoo, manifest: dict, spec, data, models: pd.DataFrame, tables: dict, event: dict) -> dict:
    """Relabel phases, merge the measured tables into the zoo's, rewrite splits, card and plots,
    and record every file written in zoo.json (last)."""
    from ..metrics.base import TABLE_KEYS
    from ..metrics.registry import METRICS
    from ..studies.runner import card_with_study, get_study

    extra = {"spec": spec.to_dict()}  # the spec as measured: metrics overrides included
    if "train_acc" in models and data.kind == "classification":
        from ..metrics.coverage import label_zoo

        models, labels = label_zoo(models, spec.metrics.thresholds, data.n_classes)
        extra.update(labels)
    keys = {**TABLE_KEYS, **{t: k for m in METRICS.values() for t, k in m.tables.items()}}
    summary = {"models": len(models)}
    written, removed = ["models.parquet"], []
    for name, parts in tables.items():
        new = pd.concat([t for t in parts if len(t)], ignore_index=True) if any(len(t) for t in parts) \
            else pd.DataFrame()
        summary[name] = len(new)
        write_table(root, name, _merge(zoo._store.table(name), new, keys[name]))
        (written if (root / f"{name}.parquet").is_file() else removed).append(f"{name}.parquet")
    _write_parquet(root / "models.parquet", pa.Table.from_pandas(models, preserve_index=False))
    split_files, split_removed = write_model_splits(root, models)
    written += split_files
    removed += split_removed
    present = tuple(n for n in keys if (root / f"{n}.parquet").is_file())
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
    record(root, manifest, written, removed, extra, event=event)
    return summary


def cmd_metrics(args) -> int:
    summary = add_metrics(args.dir, args.family, args.set or [], progress=not args.quiet)
    rows = "".join(f", {n} {name} rows" for name, n in summary.items() if name != "models")
    print(f"added {args.family} metrics to {args.dir}: {summary['models']} models{rows}")
    return 0
