"""How a run ended, as an `Outcome`: its status, error text and traceback, and its captured log.

Pure: the runner passes the time. A child process's failure carries the child's own
error and traceback, not this thread's.
"""

from __future__ import annotations

import traceback
from datetime import datetime

from scheduler.engine import runlog
from scheduler.engine.context import ActiveRun
from scheduler.engine.isolation import ChildFailed
from scheduler.store import Outcome


def ended(
    run: ActiveRun,
    status: str,
    attempt: int,
    buffer: runlog.LogBuffer | None,
    exc: BaseException | None,
    *,
    now: datetime,
    ran_for: float,
    message: str | None = None,
    message_type: str = "Abandoned",
) -> Outcome:
    """The outcome of `run`; `ran_for` (seconds) goes into a timeout's message."""
    error_type = error_message = error_traceback = None
    if isinstance(exc, ChildFailed):  # the child's own error, not this thread's traceback
        error_type, error_message = exc.error_type, str(exc)[:2000]
        error_traceback = exc.child_traceback or None
    elif exc is not None:
        error_type = type(exc).__name__
        error_message = str(exc)[:2000]
        error_traceback = "".join(traceback.format_exception(exc))[-8000:]
    if status == "timed_out":
        limit = run.spec.timeout.total_seconds() if run.spec.timeout else 0
        error_type = error_type or "Timeout"
        error_message = f"ran {ran_for:.1f}s, over its timeout of {limit:g}s" + (
            f"; then raised: {error_message}" if error_message else ""
        )
    if message is not None:
        error_type, error_message = error_type or message_type, message
    return Outcome(
        run_id=run.claimed.run_id,
        fence=run.claimed.fence,
        status=status,
        finished_at=now,
        started_at=run.began_at,
        attempt=attempt,
        error_type=error_type,
        error_message=error_message,
        error_traceback=error_traceback,
        log=(buffer.text() or None) if buffer else None,
        log_truncated=buffer.truncated if buffer else False,
    )


def overtaken(run: ActiveRun, slot: datetime, why: str, waiting: int, threads: int, now: datetime) -> Outcome:
    """A run still waiting for a thread when its job's next slot came due: missed, "overloaded"."""
    message = (
        f"overloaded: slot {run.claimed.scheduled_for.isoformat()} had not started when slot "
        f"{slot.isoformat()} came due ({waiting} runs waiting, {threads} threads; {why})"
    )
    return ended(
        run,
        "missed",
        run.claimed.attempt,
        None,
        None,
        now=now,
        ran_for=0.0,
        message=message,
        message_type="Overloaded",
    )


def held_back(run: ActiveRun, failures: int, until: datetime, now: datetime) -> Outcome:
    """A run the crash-loop guard holds back: skipped, with the streak and when the next may run."""
    message = f"crash-loop guard: {failures} failures in a row; next run not before {until.isoformat()}"
    return Outcome(
        run_id=run.claimed.run_id,
        fence=run.claimed.fence,
        status="skipped",
        finished_at=now,
        started_at=None,
        attempt=run.claimed.attempt,
        error_type="CrashLoop",
        error_message=message,
    )
