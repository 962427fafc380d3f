"""One run's attempts on its pool thread: jitter, the call (in the thread or a child process),
retries with their delay, and the timeout that bounds them all."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from scheduler.clock import Clock
from scheduler.engine import runlog
from scheduler.engine.context import ActiveRun
from scheduler.engine.isolation import ChildStopped, ProcessIsolation
from scheduler.jobs.registry import retry_allowed
from scheduler.store import Claimed, Outcome

log = logging.getLogger("scheduler.engine.runner")


class MakeOutcome(Protocol):
    """The runner's outcome maker (it knows the time): status, attempt, log, exception, message."""

    def __call__(
        self,
        run: ActiveRun,
        status: str,
        attempt: int,
        buffer: runlog.LogBuffer | None,
        exc: BaseException | None,
        message: str | None = None,
    ) -> Outcome: ...


class Attempts:
    def __init__(
        self,
        clock: Clock,
        stop: threading.Event,
        isolation: ProcessIsolation,
        began: Callable[[Claimed, datetime], None],
        set_attempt: Callable[[Claimed, int], None],
        outcome: MakeOutcome,
    ) -> None:
        self.clock = clock
        self.stop = stop
        self.isolation = isolation
        self.began = began
        self.set_attempt = set_attempt
        self.outcome = outcome

    def run(self, run: ActiveRun, buffer: runlog.LogBuffer) -> Outcome:
        """Jitter, then each attempt until one succeeds, retries run out, the timeout or a stop."""
        spec = run.spec
        if spec.jitter > timedelta(0) and self.clock.wait(
            random.uniform(0, spec.jitter.total_seconds()), self.stop
        ):
            return self.outcome(run, "abandoned", 1, buffer, None, "shut down before the run began")
        attempt = run.claimed.attempt
        run.began_at = self.clock.now()
        self.began(run.claimed, run.began_at)
        while True:
            run.ctx.attempt = attempt
            try:
                self._call(run, attempt, buffer)
            except ChildStopped as exc:
                return self.outcome(run, "abandoned", attempt, buffer, None, f"shut down: {exc}")
            except (Exception, SystemExit) as exc:  # sys.exit(n) in a job fails it like an exception
                if isinstance(exc, SystemExit) and exc.code in (None, 0):
                    return self._ended(run, attempt, buffer)
                if self._overdue(run):
                    return self.outcome(run, "timed_out", attempt, buffer, exc)
                if not retry_allowed(attempt, spec.retries):
                    return self.outcome(run, "failed", attempt, buffer, exc)
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
                if self.clock.wait(spec.retry_delay.total_seconds(), self.stop):
                    return self.outcome(run, "failed", attempt, buffer, exc)
                if self._overdue(run):  # the timeout bounds the whole run: no attempt starts after it
                    return self.outcome(run, "timed_out", attempt, buffer, exc)
                attempt += 1
                self.set_attempt(run.claimed, attempt)
                continue
            return self._ended(run, attempt, buffer)

    def _call(self, run: ActiveRun, attempt: int, buffer: runlog.LogBuffer) -> None:
        spec = run.spec
        if self.isolation.applies(spec):
            claimed = run.claimed
            self.isolation.run(
                spec,
                claimed.run_id,
                claimed.scheduled_for,
                attempt,
                run.deadline_mono,
                self.clock,
                run.ctx.cancelled,
                buffer.write,
            )
        elif spec.wants_ctx:
            spec.func(run.ctx)
        else:
            spec.func(*spec.args, **spec.kwargs)

    def _ended(self, run: ActiveRun, attempt: int, buffer: runlog.LogBuffer) -> Outcome:
        if self._overdue(run):
            return self.outcome(run, "timed_out", attempt, buffer, None)
        return self.outcome(run, "succeeded", attempt, buffer, None)

    def _overdue(self, run: ActiveRun) -> bool:
        return run.deadline_mono is not None and self.clock.monotonic() >= run.deadline_mono
