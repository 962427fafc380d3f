"""Timeouts of runs executing here: the cooperative cancel at the deadline, and the stack of a
thread run stuck well past it (a thread cannot be killed; it keeps its pool thread)."""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable

from scheduler.engine.context import ActiveRun
from scheduler.store import Claimed

log = logging.getLogger("scheduler.engine.runner")

# A thread run this far past its timeout is stuck: its stack is noted on its run row, where the
# watchdog's "overrunning" incident shows it.
STUCK_MARGIN = 10.0


class Deadlines:
    """The runs with a timeout (a burst has thousands of runs, a few with one)."""

    def __init__(
        self,
        is_process_run: Callable[[ActiveRun], bool],
        note_stack: Callable[[Claimed, str], None],
    ) -> None:
        self._is_process_run = is_process_run
        self._note_stack = note_stack
        self._runs: dict[int, ActiveRun] = {}
        self._lock = threading.Lock()

    def add(self, run: ActiveRun) -> None:
        if run.deadline_mono is not None:
            with self._lock:
                self._runs[run.claimed.run_id] = run

    def discard(self, run_id: int) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def check(self, now: float) -> float | None:
        """Flag runs past their timeout (cooperative cancel); returns the next deadline."""
        upcoming: float | None = None
        with self._lock:
            timed = list(self._runs.values())
        for run in timed:
            if run.deadline_mono is None:
                continue
            if now >= run.deadline_mono:
                if not run.overdue_logged:
                    run.overdue_logged = True
                    run.ctx.cancelled.set()
                    log.warning(
                        "run %s of %s passed its timeout of %ss and is still running",
                        run.claimed.run_id,
                        run.spec.name,
                        run.spec.timeout.total_seconds() if run.spec.timeout else "?",
                        extra={"job": run.spec.name, "run_id": run.claimed.run_id, "action": "overdue"},
                    )
                if now >= run.deadline_mono + STUCK_MARGIN:  # the loop calls this at least every second
                    self._stuck(run)
            elif upcoming is None or run.deadline_mono < upcoming:
                upcoming = run.deadline_mono
        return upcoming

    def _stuck(self, run: ActiveRun) -> None:
        """Note, once, the stack of a thread run stuck past its timeout (a process run is killed)."""
        if run.stack_noted or run.thread_id is None or self._is_process_run(run):
            return
        run.stack_noted = True
        frame = sys._current_frames().get(run.thread_id)
        if frame is None:
            return
        stack = "".join(traceback.format_stack(frame))[-4000:]
        log.warning(
            "run %s of %s is stuck past its timeout; its thread is at:\n%s",
            run.claimed.run_id,
            run.spec.name,
            stack.rstrip(),
            extra={"job": run.spec.name, "run_id": run.claimed.run_id, "action": "stuck"},
        )
        self._note_stack(run.claimed, stack)
