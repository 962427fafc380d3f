"""Process titles (setproctitle): the command line stays, the state is appended.

Operators find the daemon with `grep 'scheduler/control.py'`, so a title is
always the original command line followed by `[...]`, e.g.
`python code/scheduler/control.py run [scheduler leader, 3/8 busy]`.
"""

from __future__ import annotations

import setproctitle

_base: str | None = None


def base() -> str:
    """The command line this process started with (before any title was set)."""
    global _base
    if _base is None:
        _base = setproctitle.getproctitle()
    return _base


def set_title(title: str) -> None:
    base()
    setproctitle.setproctitle(title)


def set_state(state: str) -> None:
    """Title `<command line> [state]`."""
    setproctitle.setproctitle(f"{base()} [{state}]")
