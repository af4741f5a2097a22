"""Progress of long work: the stage, models done of total, models/s and an ETA, on stderr (tqdm).

Work is counted in models. A unit of work (one population, one architecture's models) reports
``(stage, done, total)`` as it goes, and the bar shows finished models plus the fractions the
running units report. Two ways to report, one bar:

- from other processes (the build's loky workers, a cluster sharing the output folder): a
  ``Reporter`` writes one small JSON file per unit, rate-limited, and ``ProgressBar(folder, ...)``
  polls the folder in a thread;
- in-process (``zoo study``, ``zoo metrics``, the examples): ``ProgressBar(None, total)`` and, per
  unit, ``with bar.track(models) as unit: unit.report(stage, done, total)``; leaving the block
  counts the unit's models as finished. Code deep inside a command that does not hold the bar
  calls the module-level ``track(models)`` / ``stage(name)``, which report to the innermost bar
  open in this thread and do nothing when there is none.

Stages have shares of a model (``weights``; the build's training counts 70 %, measuring 30 %); a
stage a bar does not weigh counts a unit's whole model. ``bar.stage(name)`` names what the main
process does between units (loading, publishing). Ctrl-C (or any error) erases the bar, so the
command's one-line message stands alone.
"""

from __future__ import annotations

import contextvars
import json
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from .io import atomic_write_bytes

TRAIN_MEASURE = {"train": 0.7, "measure": 0.3}  # the build's unit: a model is trained, then measured


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


class Unit:
    """In-process side: one unit of ``models`` models of a ``ProgressBar``; the same
    ``report(stage, done, total)`` as ``Reporter`` (not rate-limited: it only sets a value that the
    bar shows at its own pace). As a context manager, a normal exit counts the models as finished."""

    def __init__(self, bar: ProgressBar | None, models: int):
        self.bar, self.models = bar, models
        self.state = {"stage": "", "done": 0, "total": 1, "models": models}

    def report(self, stage: str, done: int = 0, total: int = 1, force: bool = False) -> None:
        self.state = {"stage": stage, "done": done, "total": total, "models": self.models}

    def close(self, finished: bool = False) -> None:
        if self.bar is not None:
            self.bar._units.discard(self)
            if finished:
                self.bar.finish(self.models)
            self.bar = None

    def __enter__(self) -> Unit:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(finished=kind is None)


class ProgressBar:
    """Main side: a tqdm bar in models (on stderr), advanced by finished units and, in between, by
    the fractions the running units report: files in ``folder`` (None: in-process units only).
    ``initial`` models are already done (a resumed build); the rate and ETA count only new work.
    ``unit`` names what is counted where it is not models (an example's fitting steps)."""

    WEIGHT = TRAIN_MEASURE

    def __init__(self, folder: Path | None, total: int, initial: int = 0, desc: str = "zoo",
                 enabled: bool = True, weights: dict[str, float] | None = None, unit: str = "model"):
        from tqdm.auto import tqdm

        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.weights = dict(self.WEIGHT if weights is None else weights)
        self.finished = initial
        self.desc, self._stage = desc, ""
        self._units: set[Unit] = set()
        self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled,
                        dynamic_ncols=True, smoothing=0, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        self._stop, self._lock = threading.Event(), threading.Lock()
        # redraw twice a second on a terminal; in a log file (a cluster job's stderr) every 30 s
        self._every = 0.5 if getattr(sys.stderr, "isatty", lambda: False)() else 30.0
        self._thread = threading.Thread(target=self._poll, daemon=True) if enabled else None
        self._token = None

    def __enter__(self) -> ProgressBar:
        self._token = _ACTIVE.set(self)
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, kind, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._token is not None:
            _ACTIVE.reset(self._token)
        if kind is not None:  # Ctrl-C or an error: erase the bar so the one-line message stands alone
            self.bar.leave = False
        self.bar.close()

    # -- what the main process reports
    def stage(self, name: str) -> None:
        """Name what the main process does now (shown while no unit reports a stage)."""
        self._stage = name
        self._show(self._running())

    def track(self, models: int) -> Unit:
        """A new in-process unit of ``models`` models (use as a context manager)."""
        unit = Unit(self, models)
        self._units.add(unit)
        return unit

    def finish(self, models: int) -> None:
        self.finished += models
        self._show(self._running())

    def write(self, text: str) -> None:
        """Print a line on stdout without tearing the bar (a result row of an example)."""
        self.bar.write(text, file=sys.stdout)
        sys.stdout.flush()

    # -- drawing
    def fraction(self, stage: str, done: float, total: float) -> float:
        """The share of one model a unit at ``done`` of ``total`` in ``stage`` has completed."""
        frac = min(1.0, max(0.0, done / max(1, total)))
        if stage not in self.weights:
            return frac
        order = list(self.weights)
        return sum(self.weights[s] for s in order[:order.index(stage)]) + self.weights[stage] * frac

    def _running(self) -> list[dict]:
        rows = [u.state for u in list(self._units) if u.state["stage"]]
        if self.folder is not None:
            for path in self.folder.glob("*.json"):
                with suppress(OSError, ValueError):
                    rows.append(json.loads(path.read_text()))
        return rows

    def _show(self, running: list[dict]) -> None:
        partial, stages = 0.0, set()
        for r in running:
            with suppress(KeyError, TypeError, ZeroDivisionError):
                partial += r["models"] * self.fraction(r["stage"], r["done"], r["total"])
                stages.add(r["stage"])
        stage = "+".join(sorted(stages)) or self._stage
        with self._lock:  # the poll thread and the main process both draw
            self.bar.n = min(self.bar.total, self.finished + partial)
            self.bar.set_description(f"{self.desc}: {stage}" if stage else self.desc, refresh=False)
            self.bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(self._every):
            self._show(self._running())


_ACTIVE: contextvars.ContextVar[ProgressBar | None] = contextvars.ContextVar("zoo_progress", default=None)


def active() -> ProgressBar | None:
    """The innermost ProgressBar open in this thread, if any."""
    return _ACTIVE.get()


def track(models: int) -> Unit:
    """A unit of ``models`` models on the active bar; a unit that shows nothing if none is open."""
    bar = active()
    return bar.track(models) if bar is not None else Unit(None, models)


def stage(name: str) -> None:
    """Name the main process's stage on the active bar, if any."""
    bar = active()
    if bar is not None:
        bar.stage(name)


def interruptible(main: Callable[[], object], name: str) -> None:
    """Run a script's ``main()``; Ctrl-C ends it with one line on stderr and exit code 130 (no
    traceback), as the ``zoo`` command does."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


__all__ = ["ProgressBar", "Reporter", "TRAIN_MEASURE", "Unit", "active", "interruptible", "stage", "track"]
