"""The crash-loop guard: a job that keeps failing is slowed down, then paused.

After `after` consecutive failures (failed or timed out; a success resets the
count, other ends leave it) the job's next runs wait an exponential backoff:
`BASE_BACKOFF * 2**k` after the latest failure, up to `max_backoff`. A slot due
during the wait is recorded `skipped` with the reason. At `pause_after`
consecutive failures the job is paused (`on_pause`: in the database, with an
audit entry; the watchdog then opens an incident that says how to resume) and
the count starts again from zero, so `resume` gives the job a clean slate.

Counts are kept per instance, in memory: a restart starts them again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler.clock import Clock
from scheduler.errors import SchedulerError
from scheduler.store import Store

log = logging.getLogger(__name__)

BASE_BACKOFF = timedelta(seconds=10)
AUTO_PAUSE_ACTOR = "crash-loop guard"  # the actor of the pause in the audit trail
FAILURES = ("failed", "timed_out")


@dataclass
class _Streak:
    failures: int = 0
    hold_until: datetime | None = None
    last_error: str = ""


class CrashLoopGuard:
    """Per-job failure streaks, backoff holds and auto-pause. Thread-safe.

    `after` = 0 turns the guard off; `pause_after` = 0 never pauses.
    `on_pause(job, failures, last_error)` is called once per auto-pause.
    """

    def __init__(
        self,
        clock: Clock,
        after: int = 5,
        max_backoff: timedelta = timedelta(hours=1),
        pause_after: int = 10,
        on_pause: Callable[[str, int, str], None] = lambda job, failures, error: None,
    ) -> None:
        self.clock = clock
        self.after = after
        self.max_backoff = max_backoff
        self.pause_after = pause_after
        self.on_pause = on_pause
        self._streaks: dict[str, _Streak] = {}
        self._lock = threading.Lock()

    def backoff(self, failures: int) -> timedelta:
        """The wait after `failures` consecutive failures (zero below the threshold)."""
        if not self.after or failures < self.after:
            return timedelta(0)
        doublings = min(failures - self.after, 30)
        wait: timedelta = BASE_BACKOFF * (2**doublings)
        return min(self.max_backoff, wait)

    def held_until(self, job: str) -> datetime | None:
        """When `job` may run again, if it is held now; else None."""
        with self._lock:
            streak = self._streaks.get(job)
            if streak is None or streak.hold_until is None:
                return None
            return streak.hold_until if self.clock.now() < streak.hold_until else None

    def failures(self, job: str) -> int:
        with self._lock:
            streak = self._streaks.get(job)
            return streak.failures if streak else 0

    def observe(self, job: str, status: str, error: str = "") -> None:
        """Count the end of a run of `job`; may hold the job or pause it."""
        if not self.after:
            return
        with self._lock:
            streak = self._streaks.setdefault(job, _Streak())
            if status == "succeeded":
                self._streaks.pop(job, None)
                return
            if status not in FAILURES:
                return
            streak.failures += 1
            streak.last_error = error
            failures = streak.failures
            pause = bool(self.pause_after) and failures >= self.pause_after
            if pause:
                self._streaks.pop(job, None)
            else:
                wait = self.backoff(failures)
                streak.hold_until = self.clock.now() + wait if wait else None
        if pause:
            log.warning(
                "job %s failed %d times in a row: pausing it (resume with `scheduler resume %s`)",
                job,
                failures,
                job,
                extra={"job": job, "action": "auto-pause"},
            )
            self.on_pause(job, failures, error)
        elif failures >= self.after:
            log.warning(
                "job %s failed %d times in a row: backing off, next run not before %s",
                job,
                failures,
                streak.hold_until.isoformat() if streak.hold_until else "-",
                extra={"job": job, "action": "backoff"},
            )

    def clear(self, job: str) -> None:
        with self._lock:
            self._streaks.pop(job, None)


def pauser(store: Store, clock: Clock) -> Callable[[str, int, str], None]:
    """The `on_pause` of a daemon: pause the job in the database, with the why in the audit trail."""

    def pause(job: str, failures: int, error: str) -> None:
        now = clock.now()
        try:
            store.jobs.set_paused(job, True, AUTO_PAUSE_ACTOR, now)
            details = {"failures": failures, "last_error": error[:500], "resume": f"scheduler resume {job}"}
            store.jobs.add_audit(AUTO_PAUSE_ACTOR, "auto-pause", job, details, now)
        except SchedulerError as exc:
            log.error("could not pause job %s: %s", job, exc, extra={"job": job, "action": "auto-pause"})

    return pause
