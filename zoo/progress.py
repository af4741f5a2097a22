"""Progress of work that runs in other processes: workers write, the main process shows.

A worker writes one small JSON file per population (``stage``, ``done`` of ``total`` units) at
most every ``every`` seconds; ``ProgressBar`` polls the folder in a thread and shows the stage,
per-model progress inside running populations, models/s and an ETA (tqdm). Files, not pipes, so
it works the same in-process, in loky workers and on a cluster sharing the output folder.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import suppress
from pathlib import Path

from .io import atomic_write_bytes


class Reporter:
    """Worker side: ``report(stage, done, total)``, rate-limited; ``close()`` removes the file."""

    def __init__(self, path: Path, models: int, every: float = 1.0):
        self.path, self.models, self.every, self._last = Path(path), models, every, 0.0

    def report(self, stage: str, done: int = 0, total: int = 1, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        with suppress(OSError):  # progress is best effort: never fail the work for it
            atomic_write_bytes(self.path, json.dumps({"stage": stage, "done": done, "total": total,
                                                      "models": self.models}).encode())

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class ProgressBar:
    """Main side: a tqdm bar in models, advanced by finished populations and, in between, by the
    fractions the running populations report (training counts 70 % of a model, measuring 30 %)."""

    WEIGHT = {"train": 0.7, "measure": 0.3}

    def __init__(self, folder: Path, total: int, initial: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.finished = initial
        self.bar = tqdm(total=total, initial=initial, unit="model", desc=desc, disable=not enabled,
                        dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}, "
                                                       "{rate_fmt}{postfix}]")
        self.desc = desc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True) if enabled else None

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.bar.close()

    def stage(self, name: str) -> None:
        self.bar.set_description(f"{self.desc}: {name}")

    def finish(self, models: int) -> None:
        self.finished += models
        self._show([])

    def _running(self) -> list[dict]:
        rows = []
        for path in self.folder.glob("*.json"):
            with suppress(OSError, ValueError):
                rows.append(json.loads(path.read_text()))
        return rows

    def _show(self, running: list[dict]) -> None:
        partial, stages = 0.0, set()
        for r in running:
            frac = min(1.0, r["done"] / max(1, r["total"]))
            base = 0.0 if r["stage"] == "train" else self.WEIGHT["train"]
            partial += r["models"] * (base + self.WEIGHT.get(r["stage"], 0.0) * frac)
            stages.add(r["stage"])
        self.bar.n = min(self.bar.total, self.finished + partial)
        if stages:
            self.bar.set_description(f"{self.desc}: {'+'.join(sorted(stages))}", refresh=False)
        self.bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._show(self._running())
