"""Up-front checks that a folder the daemon writes (database, logs, spool) can be written.

Tried, not asked: `os.access` says yes to root on a read-only filesystem. A
missing folder is judged by its nearest existing ancestor, where it would be
created; nothing is left behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from scheduler.errors import ConfigError, StoreError


def problem(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (or in it once created); None if they can."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return f"no existing folder above {folder}"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".scheduler-probe-", dir=probe)
    except OSError as exc:
        where = "" if probe == folder else f" (to create {folder})"
        return f"cannot write in {probe}{where}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(name)
    return None


def require(folder: Path, setting: str) -> None:
    """Raises ConfigError naming `setting` and the path if `folder` cannot be written."""
    why = problem(folder)
    if why is not None:
        raise ConfigError(f"{setting}: {why}")


def make(folder: Path, setting: str) -> None:
    """Create `folder` (and parents). Raises ConfigError naming `setting` and the path."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot create {folder}: {exc.strerror or exc}") from None
    require(folder, setting)


def database_folder(folder: Path) -> None:
    """Create a SQLite database's folder; SQLite writes its -wal and -shm files beside the database.

    Raises StoreError naming the folder if it cannot be created or written.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"database folder {folder}: cannot create it: {exc.strerror or exc}") from None
    why = problem(folder)
    if why is not None:
        raise StoreError(f"database folder {folder}: {why}")
