"""What a run carries while it is claimed here: the job's context, and the runner's record of it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from scheduler.engine import runlog
from scheduler.jobs.registry import JobSpec
from scheduler.store import Claimed, Outcome


class JobContext:
    """What a job function receives when it takes one argument."""

    __slots__ = ("job", "scheduled_for", "run_id", "attempt", "_log", "_cancelled")
    _lazy = threading.Lock()

    def __init__(
        self,
        job: str,
        scheduled_for: datetime,
        run_id: int,
        attempt: int,
        log: logging.Logger | None = None,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.scheduled_for = scheduled_for
        self.run_id = run_id
        self.attempt = attempt
        self._log = log  # the job's logger, `scheduler.job.<name>`, looked up when first used
        self._cancelled = cancelled  # made when first asked for: most runs never are

    @property
    def log(self) -> logging.Logger:
        """The job's logger (`scheduler.job.<name>`); what it logs lands in the run's log."""
        if self._log is None:
            self._log = logging.getLogger(f"scheduler.job.{self.job}")
        return self._log

    @property
    def cancelled(self) -> threading.Event:
        """Set once the run passed its timeout or the daemon is shutting down."""
        event = self._cancelled
        if event is None:
            with JobContext._lazy:
                if self._cancelled is None:
                    self._cancelled = threading.Event()
                event = self._cancelled
        return event

    @property
    def stopping(self) -> bool:
        """True once the run passed its timeout or the daemon is shutting down."""
        return self.cancelled.is_set()

    def __repr__(self) -> str:
        return (
            f"JobContext(job={self.job!r}, scheduled_for={self.scheduled_for!r}, run_id={self.run_id}, "
            f"attempt={self.attempt})"
        )


@dataclass
class ActiveRun:
    claimed: Claimed
    spec: JobSpec
    started_mono: float
    ctx: JobContext
    deadline_mono: float | None
    overdue_logged: bool = False
    stack_noted: bool = False
    thread_id: int | None = None
    began_at: datetime | None = None
    outcome: Outcome | None = None  # set when the run ends, before `on_done`
    log: runlog.LogBuffer | None = None  # what it logged so far, while it runs (the dashboard's tail)
