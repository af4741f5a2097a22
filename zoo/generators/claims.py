"""Claims on populations, so that several builds can share one output folder.

A claim is a file created with O_EXCL (atomic on local and NFS-like filesystems) holding the
owner's host and pid. The owner refreshes its claims' mtimes while it works; a claim whose owner
process is gone (same host) or whose mtime is older than ``ttl`` seconds is stale and may be
taken over. A build therefore never trains a population that another live build is training.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path


class Claims:
    def __init__(self, folder: Path, ttl: float = 120.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ttl = ttl
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.held: set[str] = set()
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.claim"

    def _stale(self, path: Path) -> bool:
        try:
            owner = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return True  # vanished or half-written by a dead owner
        if owner.get("host") == self.owner["host"] and not _alive(owner.get("pid", -1)):
            return True
        return age > self.ttl

    def acquire(self, name: str) -> bool:
        """Claim ``name``; False if another live owner holds it."""
        path = self._path(name)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale(path):
                    return False
                with suppress(FileNotFoundError):  # take over a stale claim, then race for it like everyone else
                    path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            with self._lock:
                self.held.add(name)
            return True
        return False

    def release(self, name: str) -> None:
        with self._lock:
            if name not in self.held:
                return
            self.held.discard(name)
        with suppress(FileNotFoundError):
            self._path(name).unlink()

    @contextmanager
    def heartbeat(self, every: float | None = None):
        """Refresh the mtimes of held claims in a background thread while the block runs."""
        stop = threading.Event()
        period = every or max(1.0, self.ttl / 4)

        def beat():
            while not stop.wait(period):
                with self._lock:
                    names = list(self.held)
                for n in names:
                    with suppress(FileNotFoundError):
                        os.utime(self._path(n))

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            for n in list(self.held):
                self.release(n)

    @contextmanager
    def exclusive(self, name: str, poll: float = 0.2):
        """Hold ``name`` for the duration of the block, waiting while another live owner has it."""
        while not self.acquire(name):
            time.sleep(poll)
        try:
            yield
        finally:
            self.release(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
