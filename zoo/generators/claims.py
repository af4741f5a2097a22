"""Claims on populations, so that several builds can share one output folder.

A claim is a file that appears whole: the owner's host, pid and time are written to a temporary
file first, which is then hard-linked to the claim's name (``link`` fails if the name exists, so
exactly one process wins). The owner refreshes its claims' mtimes while it works; a claim whose
owner process is gone (same host) or whose mtime is older than ``ttl`` seconds is stale. Taking
over a stale claim happens under an exclusive lock (``flock`` on ``.takeover``), re-checking
staleness inside it, so two builds can never both replace the same stale claim. A build
therefore never trains a population that another live build is training.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
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
        """Old by the clock, or owned by a dead process on this host; never merely empty or
        unreadable (our claims are complete from the moment they exist; a foreign one ages out)."""
        try:
            age = time.time() - path.stat().st_mtime
            owner = json.loads(path.read_text())
        except FileNotFoundError:
            return False  # released meanwhile: not ours to take over
        except (OSError, ValueError):
            owner = {}
        if isinstance(owner, dict) and owner.get("host") == self.owner["host"] and not _alive(owner.get("pid", -1)):
            return True
        return age > self.ttl

    def _link_new(self, path: Path) -> bool:
        """Create ``path`` with our owner record in one step; False if it exists."""
        fd, tmp = tempfile.mkstemp(prefix=".new-", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({**self.owner, "time": time.time()}, f)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def acquire(self, name: str) -> bool:
        """Claim ``name``; False if another live owner holds it."""
        path = self._path(name)
        won = self._link_new(path) or (not path.exists() and self._link_new(path))  # released meanwhile
        if not won and self._stale(path):
            with self._takeover_lock():
                if self._stale(path):  # still stale with the lock held: nobody else took it
                    with suppress(FileNotFoundError):
                        path.unlink()
                won = self._link_new(path)
        if won:
            with self._lock:
                self.held.add(name)
        return won

    @contextmanager
    def _takeover_lock(self):
        with open(self.folder / ".takeover", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

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
