"""The pidfile: python-daemon's lockfile-based PID lock, with the checks /tmp needs.

The file holds the pid on its first line (what lockfile reads) and, on the second,
`start <ticks>`: the process start time, field 22 of /proc/PID/stat. A pid alone
proves nothing once the daemon is gone, since the kernel reuses pids; the pair
(pid, start time) names one process for the life of the machine. A file whose pid
is not above 1, is not alive, or whose start time does not match (or, for a file
without one, whose command line is not the scheduler's) is stale: it is removed,
and its pid is never signalled.

Refuses a pidfile that is a symlink or belongs to another user (anyone can
create files in /tmp).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from daemon.pidfile import TimeoutPIDLockFile

from scheduler.errors import AlreadyRunningError, ConfigError

PID_MAX = 4_194_304  # the kernel's upper bound on pid_max (2**22)


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_ticks: int | None  # None: a file written without it (an older scheduler, or by hand)


def read_record(path: Path) -> PidRecord | None:
    """The pid and start time in the file; None if the file holds no usable pid (2..PID_MAX)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None
    first = lines[0].strip() if lines else ""
    if not first.isdigit() or len(first) > 8 or not 1 < int(first) <= PID_MAX:
        return None
    ticks = None
    for line in lines[1:]:
        key, _, value = line.strip().partition(" ")
        if key == "start" and value.isdigit() and len(value) < 20:
            ticks = int(value)
    return PidRecord(int(first), ticks)


def process_alive(pid: int) -> bool:
    """True if `pid` runs. A zombie has exited: its parent (init, after a daemon's double
    fork) may be slow to reap it, or never do so in a container whose init does not reap."""
    if not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # fields 3.. (the name may hold spaces and ')')
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc here, or the process just went: kill(0) has answered
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _looks_like_scheduler(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"scheduler" in cmdline


def is_ours(record: PidRecord) -> bool:
    """True if the process the record names is alive and is the daemon that wrote it."""
    if not process_alive(record.pid):
        return False
    if record.start_ticks is not None:
        return start_ticks(record.pid) == record.start_ticks
    return _looks_like_scheduler(record.pid)


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


def running(path: Path) -> PidRecord | None:
    """The record of the live daemon holding `path`, or None (without touching the file)."""
    check_safe(path)
    record = read_record(path)
    return record if record is not None and is_ours(record) else None


def running_pid(path: Path) -> int | None:
    """The pid of a live daemon holding `path`; a stale file is removed and gives None."""
    record = running(path)
    if record is not None:
        return record.pid
    if path.exists():
        path.unlink()
    return None


class IdentifiedPIDLockFile(TimeoutPIDLockFile):  # type: ignore[misc]
    """lockfile's PID lock, plus this process's start time on the second line."""

    def acquire(self, timeout: float | None = None) -> None:
        super().acquire(timeout)
        ticks = start_ticks(os.getpid())
        if ticks is not None:
            with open(self.path, "a") as fh:  # created by us just now, O_EXCL
                fh.write(f"start {ticks}\n")


def make_lock(path: Path) -> TimeoutPIDLockFile:
    """A PID lock for `path`. Raises AlreadyRunningError if a live daemon holds it."""
    pid = running_pid(path)
    if pid is not None:
        raise AlreadyRunningError(f"already running (pid {pid}, pidfile {path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    return IdentifiedPIDLockFile(str(path), acquire_timeout=0)
