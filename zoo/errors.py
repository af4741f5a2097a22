"""The user-facing errors: each prints as one line and exits with code 2 (``zoo.cli.main``)."""

from __future__ import annotations


class ZooError(Exception):
    """A problem the user can fix (bad spec, bad folder, corrupt file): one line, no traceback."""


class SpecError(ZooError, ValueError):
    """A user error in a spec, preset name or override."""


class BuildError(ZooError, RuntimeError):
    """A build problem: bad output folder, corrupt shard, a population that keeps failing."""


class DatasetError(ZooError, ValueError):
    """A problem with a published zoo or a request on it."""


def os_error_line(e: OSError, what: str) -> str:
    """ENOSPC / EACCES / EROFS and friends as one line that says what failed and what to do."""
    import errno

    hint = {errno.ENOSPC: "free disk space and rerun", errno.EDQUOT: "free disk quota and rerun",
            errno.EACCES: "check the folder's permissions", errno.EPERM: "check the folder's permissions",
            errno.EROFS: "the file system is read-only; choose a writable folder"}.get(e.errno, "")
    name = f" {e.filename}:" if e.filename else ""
    return f"{what}:{name} {e.strerror or e}" + (f"; {hint}" if hint else "")
