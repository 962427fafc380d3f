"""The pidfile: python-daemon's lockfile-based PID lock, with the checks /tmp needs.

Refuses a pidfile that is a symlink or belongs to another user (anyone can
create files in /tmp), removes a stale one whose process is gone, and reports
a live one by its pid.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from daemon.pidfile import TimeoutPIDLockFile

from scheduler.errors import AlreadyRunningError, ConfigError


def read_pid(path: Path) -> int | None:
    """The pid in the file, or None if there is no readable pid."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def process_alive(pid: int) -> bool:
    """True if `pid` runs. A zombie has exited: its parent (init, after a daemon's double
    fork) may be slow to reap it, or never do so in a container whose init does not reap."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc here, or the process just went: kill(0) has answered
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def check_safe(path: Path) -> None:
    """Raises ConfigError if the pidfile path is a symlink or owned by someone else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"pidfile {path}: is a symlink; refusing to use it")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"pidfile {path}: is not a regular file")
    if info.st_uid != os.getuid():
        raise ConfigError(f"pidfile {path}: owned by uid {info.st_uid}, not by this user; refusing")


def running_pid(path: Path) -> int | None:
    """The pid of a live daemon holding `path`; a stale file is removed and gives None."""
    check_safe(path)
    pid = read_pid(path)
    if pid is not None and process_alive(pid):
        return pid
    if path.exists():
        path.unlink()
    return None


def make_lock(path: Path) -> TimeoutPIDLockFile:
    """A PID lock for `path`. Raises AlreadyRunningError if a live daemon holds it."""
    pid = running_pid(path)
    if pid is not None:
        raise AlreadyRunningError(f"already running (pid {pid}, pidfile {path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    return TimeoutPIDLockFile(str(path), acquire_timeout=0)
