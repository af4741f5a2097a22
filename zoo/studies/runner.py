"""Run a study on a published zoo and publish its result into the zoo, under the integrity rule.

Order: the options are checked (SpecError before anything is read), the zoo is checked against
zoo.json (``require_intact``: a damaged zoo is refused before any write), a finished study with the
same options is reported and not recomputed, then the study runs and its files are written
atomically: ``studies/NAME.parquet`` (rows annotated with ``cell_phase`` / ``phase`` and the varying
``config.*`` columns; options and wall time per model in the Parquet schema metadata),
``plots/study-NAME.png`` and the dataset card README.md (a ``configs:`` entry and a section per
study); zoo.json records exactly those three files and the study's options under ``studies``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd

from ..datasets.manifest import all_or_nothing, record, require_intact
from ..datasets.reader import load
from ..errors import SpecError
from ..io import atomic_path, atomic_write_bytes
from ..progress import ProgressBar
from .base import Study

METADATA_KEY = b"zoo.study"


def get_study(name: str) -> Study:
    from . import STUDIES

    if name not in STUDIES:
        raise SpecError(f"unknown study {name!r}; choose one of: {', '.join(STUDIES)}")
    return STUDIES[name]


def study_files(name: str) -> tuple[str, str]:
    """(table, plot) paths of study ``name`` relative to the zoo folder."""
    return f"studies/{name}.parquet", f"plots/study-{name}.png"


def run_study(root: str | Path, name: str, overrides: list[str] = (), progress: bool = True) -> dict:
    """Run study ``name`` on the zoo at ``root`` and publish it; returns its zoo.json entry
    (with ``resumed: True`` when a finished run with the same options was found)."""
    study = get_study(name)
    options = study.resolve(list(overrides))
    root = Path(root)
    manifest = require_intact(root)
    table, plot = study_files(name)
    done = manifest.get("studies", {}).get(name)
    if done and done.get("options") == _jsonable(options) and table in manifest["files"]:
        return {**done, "resumed": True}

    zoo = load(root)
    t0 = time.perf_counter()
    with ProgressBar(None, int((zoo.models["status"] == "ok").sum()), desc=f"zoo study {name}", enabled=progress,
                     weights={}) as bar:  # models advance as the study's populations finish (progress.track)
        bar.stage("run")
        rows = study.run(zoo, options)
        bar.finish(bar.bar.total - bar.finished)
    wall = time.perf_counter() - t0
    rows = annotate(zoo, rows)
    n_models = int((zoo.models["status"] == "ok").sum())
    entry = {"options": _jsonable(options), "file": table, "plot": plot, "rows": len(rows), "row": study.row,
             "wall_time_s": round(wall, 3), "wall_time_per_model_s": round(wall / max(n_models, 1), 6)}
    with all_or_nothing(root):  # a full disk midway leaves the zoo as it was
        write_table(root / table, rows, {"study": name, **entry})
        study.plot(rows, options, root / plot)
        update_card(root / "README.md", study, entry)
        studies = {**manifest.get("studies", {}), name: entry}
        record(root, manifest, written=[table, plot, "README.md"], extra={"studies": studies},
               event={"command": "study", "study": name, "set": list(overrides)})
    if progress:
        print(f"zoo study {name}: {len(rows)} rows in {wall:.1f} s", file=sys.stderr)
    return {**entry, "resumed": False}


def _jsonable(options: dict) -> dict:
    return json.loads(json.dumps(options))


def annotate(zoo, rows: pd.DataFrame) -> pd.DataFrame:
    """Add the cell's phase (``cell_phase``) and the varying ``config.*`` columns by ``cell_id``, and
    the model's own ``phase`` to per-model rows. A row spanning cells (``cell_id`` empty, ``cells``
    a list) gets the values its cells share, and ``cell_phase`` "mixed" where they differ. Values a
    study set itself are kept."""
    models = zoo.models
    axes = [f"config.{a['key']}" for a in zoo.manifest["spec"].get("phase", {}).get("axes", [])]
    varying = [c for c in models if c.startswith("config.") and models[c].nunique() > 1]
    columns = [c for c in dict.fromkeys(["cell_phase", *axes, *varying]) if c in models]
    out = rows.reset_index(drop=True).copy()
    if "cell_id" in out and columns:
        cells = models.groupby("cell_id")[columns].first()
        spans = out["cells"] if "cells" in out else pd.Series([None] * len(out))
        for col in columns:
            values = [cells.at[c, col] if isinstance(c, str) and c in cells.index else _shared(cells, s, col)
                      for c, s in zip(out["cell_id"], spans, strict=True)]
            out[col] = out[col].where(out[col].notna(), values) if col in out else values
    if "model_id" in out and "phase" in models and "phase" not in out:
        out = out.join(models.set_index("model_id")["phase"], on="model_id")
    return out


def _shared(cells: pd.DataFrame, span, col: str):
    """The value of ``col`` that all cells in ``span`` share; "mixed" phases; None otherwise."""
    if span is None or not len(span):
        return None
    values = set(cells.loc[list(span), col])
    if len(values) == 1:
        return values.pop()
    return "mixed" if col == "cell_phase" else None


def write_table(path: Path, rows: pd.DataFrame, meta: dict) -> None:
    """Atomic Parquet write with ``meta`` (JSON) under the schema metadata key ``zoo.study``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(rows, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           METADATA_KEY: json.dumps(meta, default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_metadata(path: str | Path) -> dict:
    """The ``zoo.study`` metadata of a study table (options, wall time per model, ...)."""
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(path).metadata[METADATA_KEY])


# ---------------------------------------------------------------- the dataset card

def update_card(path: Path, study: Study, entry: dict) -> None:
    """Add or replace study ``study.name``'s ``configs:`` entry and section in the card at ``path``."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic_write_bytes(path, card_with_study(text, study, entry).encode("utf-8"))


def card_with_study(text: str, study: Study, entry: dict) -> str:
    """``text`` (a card with a YAML front matter) with the study's config entry and section."""
    config = [f"- config_name: study-{study.name}", "  data_files:", "  - split: train",
              f"    path: {entry['file']}"]
    lines = text.splitlines()
    if lines[:1] == ["---"] and "---" in lines[1:]:
        end = lines.index("---", 1)
        head, body = lines[1:end], lines[end + 1:]
    else:
        head, body = ["configs:"], lines
    head = _without_config(head, f"study-{study.name}")
    if "configs:" not in head:
        head = ["configs:", *head]
    at = head.index("configs:") + 1
    while at < len(head) and (head[at].startswith("- ") or head[at].startswith("  ")):
        at += 1
    head = head[:at] + config + head[at:]
    title = f"## Study `{study.name}`"
    options = ", ".join(f"{k} = {v}" for k, v in entry["options"].items())
    section = [title, "", f"{study.summary} One row per {study.row}; file `{entry['file']}`, plot "
               f"`{entry['plot']}`. Options: {options}. Wall time {entry['wall_time_s']} s "
               f"({entry['wall_time_per_model_s']} s per model).", "",
               *[f"- `{k}`: {v}" for k, v in study.columns.items()], ""]
    body = _without_section(body, title)
    while body and not body[-1].strip():
        body.pop()
    return "\n".join(["---", *head, "---", *body, "", *section])


def _without_config(head: list[str], name: str) -> list[str]:
    out, skip = [], False
    for line in head:
        if line.startswith("- config_name:"):
            skip = line.split(":", 1)[1].strip() == name
        elif not line.startswith("  "):
            skip = False
        if not skip:
            out.append(line)
    return out


def _without_section(body: list[str], title: str) -> list[str]:
    if title not in body:
        return body
    start = body.index(title)
    end = next((i for i in range(start + 1, len(body)) if body[i].startswith("## ")), len(body))
    return body[:start] + body[end:]


def cmd_study(args) -> int:
    """CLI: ``zoo study NAME DIR [--set study.key=value ...]``."""
    entry = run_study(args.dir, args.name, args.set or [], progress=not args.quiet)
    if entry["resumed"]:
        print(f"study {args.name} already done with these options: {Path(args.dir) / entry['file']} "
              "(not recomputed; change an option with --set to rerun)")
    else:
        print(f"wrote {Path(args.dir) / entry['file']} ({entry['rows']} rows) and {Path(args.dir) / entry['plot']}")
    return 0


__all__ = ["annotate", "card_with_study", "cmd_study", "get_study", "read_metadata", "run_study", "study_files"]
