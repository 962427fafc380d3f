"""At exit, no process the daemon started outlives it.

A thread job that forks leaves a copy of the daemon (its child returns into
the daemon's code, with the daemon's signal handlers, so SIGTERM only sets a
flag there); a job may start a background command and forget it. At
shutdown every descendant of the daemon (found through /proc, whatever its
process group, so it works with supervisord's `stopasgroup` or without it) gets
SIGTERM, and SIGKILL if it is still there after a short wait. multiprocessing's
own helpers (the forkserver, the resource tracker) are left alone: they exit
when the daemon's end of their pipe closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

TERM_WAIT = 2.0
_HELPERS = ("from multiprocessing.forkserver import", "from multiprocessing.resource_tracker import")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of `pid`, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return int(fields[1]), fields[0]


def descendants(root: int) -> list[int]:
    """Live (not zombie) descendants of `root`, parents before children."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        info = _stat(int(entry))
        if info is not None and info[1] != "Z":
            parents.setdefault(info[0], []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _helper(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return any(marker in cmdline for marker in _HELPERS) and "[scheduler run" not in cmdline


def terminate_descendants(wait: float = TERM_WAIT) -> list[int]:
    """SIGTERM, then SIGKILL, every descendant but multiprocessing's helpers; returns their pids."""
    me = os.getpid()
    everyone = descendants(me)
    helpers = {pid for pid in everyone if _parent(pid) == me and _helper(pid)}
    targets = [pid for pid in everyone if pid not in helpers]
    if not targets:
        return []
    log.warning(
        "killing %d processes left by jobs: %s", len(targets), ", ".join(map(str, targets)),
        extra={"action": "orphans"},
    )  # fmt: skip
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_live(pid) for pid in targets):
        _reap(targets)
        time.sleep(0.05)
    _signal([pid for pid in targets if _live(pid)], signal.SIGKILL)
    _reap(targets)
    return targets


def _parent(pid: int) -> int | None:
    info = _stat(pid)
    return info[0] if info else None


def _live(pid: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] != "Z"


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap(pids: list[int]) -> None:
    """Collect those of `pids` that are our own exited children, so they do not stay zombies."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
