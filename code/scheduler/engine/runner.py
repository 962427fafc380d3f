"""Running a claimed run on the thread pool: context, jitter, retries, timeout, log capture.

The runner never talks to the database itself for the end of a run: it hands
the `Outcome` to the recorder, which writes it when the database answers.
"""

from __future__ import annotations

import logging
import random
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from scheduler.clock import Clock
from scheduler.engine import runlog
from scheduler.jobs.registry import JobSpec
from scheduler.store import Claimed, Outcome

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a job function receives when it takes one argument."""

    job: str
    scheduled_for: datetime
    run_id: int
    attempt: int
    log: logging.Logger
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def stopping(self) -> bool:
        """True once the run passed its timeout or the daemon is shutting down."""
        return self.cancelled.is_set()


@dataclass
class ActiveRun:
    claimed: Claimed
    spec: JobSpec
    started_mono: float
    ctx: JobContext
    deadline_mono: float | None
    overdue_logged: bool = False
    began_at: datetime | None = None
    outcome: Outcome | None = None  # set when the run ends, before `on_done`
    log: runlog.LogBuffer | None = None  # what it logged so far, while it runs (the dashboard's tail)


class Runner:
    """Runs claimed runs on a bounded pool and reports each outcome once."""

    def __init__(
        self,
        clock: Clock,
        pool_size: int,
        max_log_bytes: int,
        record: Callable[[Outcome], None],
        set_attempt: Callable[[Claimed, int], None],
        on_done: Callable[[ActiveRun], None],
        stop: threading.Event,
    ) -> None:
        self.clock = clock
        self.max_log_bytes = max_log_bytes
        self._record = record
        self._set_attempt = set_attempt
        self._on_done = on_done
        self._stop = stop
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="job")
        self._active: dict[int, ActiveRun] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def start(self, claimed: Claimed, spec: JobSpec) -> None:
        """Queue the run on the pool. The claim is already in the database."""
        ctx = JobContext(
            job=spec.name,
            scheduled_for=claimed.scheduled_for,
            run_id=claimed.run_id,
            attempt=claimed.attempt,
            log=logging.getLogger(f"scheduler.job.{spec.name}"),
        )
        mono = self.clock.monotonic()
        deadline = mono + spec.timeout.total_seconds() if spec.timeout else None
        active = ActiveRun(claimed, spec, mono, ctx, deadline)
        with self._lock:
            self._active[claimed.run_id] = active
        self._pool.submit(self._execute, active)

    def live_log(self, run_id: int) -> str | None:
        """The log so far of a run executing here; None if it does not run in this process."""
        with self._lock:
            run = self._active.get(run_id)
        return run.log.text() if run is not None and run.log is not None else None

    def active(self) -> list[ActiveRun]:
        with self._lock:
            return list(self._active.values())

    def busy_jobs(self) -> set[str]:
        with self._lock:
            return {a.spec.name for a in self._active.values()}

    def check_deadlines(self) -> float | None:
        """Flag runs past their timeout (cooperative cancel); returns the next deadline."""
        now = self.clock.monotonic()
        upcoming: float | None = None
        for run in self.active():
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
                        extra={
                            "job": run.spec.name,
                            "run_id": run.claimed.run_id,
                            "action": "overdue",
                        },
                    )
            elif upcoming is None or run.deadline_mono < upcoming:
                upcoming = run.deadline_mono
        return upcoming

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is active (real time); True if idle."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._active, timeout)

    def cancel_all(self) -> None:
        for run in self.active():
            run.ctx.cancelled.set()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- on the pool thread -------------------------------------------------

    def _execute(self, run: ActiveRun) -> None:
        spec, claimed = run.spec, run.claimed
        buffer = runlog.LogBuffer(self.max_log_bytes)
        run.log = buffer
        runlog.bind(buffer)
        outcome: Outcome | None = None
        try:
            log.info(
                "run %s of %s started (slot %s)",
                claimed.run_id,
                spec.name,
                claimed.scheduled_for.isoformat(),
                extra={"job": spec.name, "run_id": claimed.run_id, "action": "start"},
            )
            outcome = self._attempts(run, buffer)
        except BaseException as exc:  # a bug here must still end the run record
            outcome = self._outcome(run, "failed", 1, buffer, exc)
        finally:
            runlog.bind(None)
            assert outcome is not None
            self._finish(run, outcome)

    def _attempts(self, run: ActiveRun, buffer: runlog.LogBuffer) -> Outcome:
        spec = run.spec
        if spec.jitter > timedelta(0) and self.clock.wait(
            random.uniform(0, spec.jitter.total_seconds()), self._stop
        ):
            return self._outcome(run, "abandoned", 1, buffer, None, "shut down before the run began")
        attempt = run.claimed.attempt
        run.began_at = self.clock.now()
        while True:
            run.ctx.attempt = attempt
            try:
                if spec.wants_ctx:
                    spec.func(run.ctx)
                else:
                    spec.func(*spec.args, **spec.kwargs)
            except Exception as exc:
                if self._overdue(run):
                    return self._outcome(run, "timed_out", attempt, buffer, exc)
                if attempt > spec.retries:
                    return self._outcome(run, "failed", attempt, buffer, exc)
                buffer.write(f"attempt {attempt} failed: {type(exc).__name__}: {exc}\n")
                log.warning(
                    "run %s of %s attempt %d failed (%s: %s); retrying in %ss",
                    run.claimed.run_id,
                    spec.name,
                    attempt,
                    type(exc).__name__,
                    exc,
                    spec.retry_delay.total_seconds(),
                    extra={"job": spec.name, "run_id": run.claimed.run_id, "action": "retry"},
                )
                if self.clock.wait(spec.retry_delay.total_seconds(), self._stop):
                    return self._outcome(run, "failed", attempt, buffer, exc)
                if self._overdue(run):  # the timeout bounds the whole run: no attempt starts after it
                    return self._outcome(run, "timed_out", attempt, buffer, exc)
                attempt += 1
                self._set_attempt(run.claimed, attempt)
                continue
            if self._overdue(run):
                return self._outcome(run, "timed_out", attempt, buffer, None)
            return self._outcome(run, "succeeded", attempt, buffer, None)

    def _overdue(self, run: ActiveRun) -> bool:
        return run.deadline_mono is not None and self.clock.monotonic() >= run.deadline_mono

    def _outcome(
        self,
        run: ActiveRun,
        status: str,
        attempt: int,
        buffer: runlog.LogBuffer,
        exc: BaseException | None,
        message: str | None = None,
    ) -> Outcome:
        error_type = error_message = error_traceback = None
        if exc is not None:
            error_type = type(exc).__name__
            error_message = str(exc)[:2000]
            error_traceback = "".join(traceback.format_exception(exc))[-8000:]
        if status == "timed_out":
            seconds = self.clock.monotonic() - run.started_mono
            limit = run.spec.timeout.total_seconds() if run.spec.timeout else 0
            error_type = error_type or "Timeout"
            error_message = f"ran {seconds:.1f}s, over its timeout of {limit:g}s" + (
                f"; then raised: {error_message}" if error_message else ""
            )
        if message is not None:
            error_type, error_message = error_type or "Abandoned", message
        return Outcome(
            run_id=run.claimed.run_id,
            fence=run.claimed.fence,
            status=status,
            finished_at=self.clock.now(),
            started_at=run.began_at,
            attempt=attempt,
            error_type=error_type,
            error_message=error_message,
            error_traceback=error_traceback,
            log=buffer.text() or None,
            log_truncated=buffer.truncated,
        )

    def _finish(self, run: ActiveRun, outcome: Outcome) -> None:
        seconds = self.clock.monotonic() - run.started_mono
        level = logging.INFO if outcome.status == "succeeded" else logging.WARNING
        log.log(
            level,
            "run %s of %s %s in %.3fs%s",
            outcome.run_id,
            run.spec.name,
            outcome.status,
            seconds,
            f": {outcome.error_type}: {outcome.error_message}" if outcome.error_type else "",
            extra={"job": run.spec.name, "run_id": outcome.run_id, "action": outcome.status},
        )
        run.outcome = outcome
        self._record(outcome)
        with self._idle:
            self._active.pop(run.claimed.run_id, None)
            self._idle.notify_all()
        self._on_done(run)
