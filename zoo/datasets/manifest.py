"""zoo.json: the one module that reads, checks and writes a published zoo's manifest.

Integrity rule: a command that changes a published zoo first checks every file the manifest lists
(``require_intact``) and then records the sha256 of exactly the files it wrote (``record``).
A file it did not write is never re-hashed, so damage can never become the new truth.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ..errors import DatasetError
from ..io import atomic_write_bytes, sha256_file

SCHEMA_VERSION = 1  # of the published layout; readers accept up to this version


def read_manifest(root: str | Path) -> dict:
    """zoo.json of ``root``, checked for shape; DatasetError names what is wrong."""
    root = Path(root)
    path = root / "zoo.json"
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    if not path.is_file():
        raise DatasetError(f"{root} is not a published zoo (no zoo.json); build one with zoo build")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DatasetError(f"{path} is not readable JSON ({type(e).__name__}); restore it or rebuild") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if type(version) is not int or version < 1:
        raise DatasetError(f"{path}: schema_version must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise DatasetError(f"{root} has schema_version {version}, newer than this zoo package reads "
                           f"({SCHEMA_VERSION}): upgrade zoo")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise DatasetError(f"{path}: 'files' must map file names to sha256 strings")
    if not isinstance(manifest.get("spec"), dict):
        raise DatasetError(f"{path}: 'spec' must be a table of the spec as run")
    return manifest


def hash_problems(root: Path, files: dict[str, str]) -> list[str]:
    """One line per listed file that is missing or whose sha256 differs."""
    problems = []
    for rel, digest in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: listed in zoo.json but missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 differs from zoo.json (file changed or corrupt)")
    return problems


def require_intact(root: str | Path) -> dict:
    """The manifest, after checking every listed file's hash; DatasetError before any write if not."""
    root = Path(root)
    manifest = read_manifest(root)
    problems = hash_problems(root, manifest["files"])
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DatasetError(f"{root}: {problems[0]}{more}; refusing to write into a damaged zoo. "
                           f"Run `zoo verify {root}` and restore or rebuild it")
    return manifest


def _published_files(root: Path) -> set[Path]:
    """Every file of the zoo, relative to ``root``, outside the build state and undo folders."""
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".zoo") for part in p.relative_to(root).parts)}


@contextmanager
def all_or_nothing(root: str | Path) -> Iterator[None]:
    """Rewrite a published zoo so that an error (a full disk, Ctrl-C) leaves it as it was.

    Every file is hard-linked aside first: writers replace files by rename, so a link keeps the
    old bytes and costs no space. On error the links are renamed back (which needs no space
    either) and the files and empty folders the command added are removed; either way the undo
    folder goes.
    """
    root = Path(root)
    before = _published_files(root)
    folders = {p for p in root.rglob("*") if p.is_dir()}
    undo = Path(tempfile.mkdtemp(prefix=".zoo-undo-", dir=root))
    try:
        for rel in before:
            (undo / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(root / rel, undo / rel)
            except OSError:  # a file system without hard links: a copy (fails, if at all, before any change)
                shutil.copy2(root / rel, undo / rel)
        yield
    except BaseException:
        for rel in _published_files(root) - before:
            (root / rel).unlink(missing_ok=True)
        for rel in before:
            os.replace(undo / rel, root / rel)
        for folder in sorted({p for p in root.rglob("*") if p.is_dir()} - folders - {undo}, reverse=True):
            if not any(folder.iterdir()) and not folder.is_relative_to(undo):
                folder.rmdir()
        raise
    finally:
        shutil.rmtree(undo, ignore_errors=True)


def _git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict:
    """Versions of what wrote the zoo."""
    import torch

    from .. import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"zoo_version": __version__, "git_hash": _git_hash(), "torch_version": torch.__version__,
            "triton_version": triton_version, "python": platform.python_version()}


def _relative(root: Path, paths: Iterable[str | Path]) -> list[str]:
    """Paths as zoo.json names them: relative to ``root`` (given as ``root / name`` or as ``name``)."""
    names = set()
    for p in map(Path, paths):
        try:
            names.add(p.relative_to(root).as_posix())
        except ValueError:
            names.add((p.resolve().relative_to(root.resolve()) if p.is_absolute() else p).as_posix())
    return sorted(names)


def write_manifest(out: Path, spec_dict: dict, written: Iterable[str | Path], extra: dict | None = None) -> dict:
    """A fresh zoo.json for a full publish: the spec as run, provenance, the hashes of ``written``."""
    out = Path(out)
    manifest = {"schema_version": SCHEMA_VERSION, "spec": spec_dict, **provenance(),
                "device": "cpu", "precision": "fp32",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "files": {rel: sha256_file(out / rel) for rel in _relative(out, written)},
                **(extra or {})}
    atomic_write_bytes(out / "zoo.json", json.dumps(manifest, indent=1, default=str).encode())
    return manifest


def record(root: Path, manifest: dict, written: Iterable[str | Path] = (), removed: Iterable[str | Path] = (),
           extra: dict | None = None, event: dict | None = None) -> dict:
    """Update ``manifest`` (as read by ``require_intact``) with the hashes of the files this command
    wrote, drop the files it removed, merge ``extra``, append ``event`` to its history; write it."""
    root = Path(root)
    files = dict(manifest["files"])
    for rel in _relative(root, removed):
        files.pop(rel, None)
    for rel in _relative(root, written):
        files[rel] = sha256_file(root / rel)
    updated = {**manifest, **(extra or {}), "files": dict(sorted(files.items()))}
    if event is not None:
        updated["history"] = [*manifest.get("history", []),
                              {**event, "at": datetime.now(UTC).isoformat(timespec="seconds")}]
    atomic_write_bytes(root / "zoo.json", json.dumps(updated, indent=1, default=str).encode())
    return updated
