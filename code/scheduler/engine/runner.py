"""Running a claimed run on the thread pool: context, jitter, retries, timeout, log capture.

The runner never talks to the database itself for the end of a run: it hands
the `Outcome` to the recorder, which writes it when the database answers.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import sys
import threading
import traceback
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler.clock import Clock
from scheduler.engine import runlog
from scheduler.engine.guard import CrashLoopGuard
from scheduler.engine.isolation import ChildFailed, ChildStopped, ProcessIsolation
from scheduler.jobs.registry import JobSpec, retry_allowed
from scheduler.store import Claimed, Outcome

log = logging.getLogger(__name__)

# Finished runs kept for drain_ended (metrics) between two drains.
ENDED_KEPT = 20_000
# A thread run this far past its timeout is stuck: its stack is noted on its run row, where the
# watchdog's "overrunning" incident shows it. A thread cannot be killed; it keeps its pool thread.
STUCK_MARGIN = 10.0
# Runs claimed ahead and due this soon count as a backlog (see `backlogged`): work that can wait
# (a watchdog pass) is not started in the second before a burst.
BACKLOG_AHEAD = 1.0


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


class Runner:
    """Runs claimed runs on a bounded pool and reports each outcome once.

    Claimed runs wait in one in-memory queue that `pool_size` threads drain: starting
    a run costs no database round trip. A run claimed ahead of its slot waits, held,
    until `release(now)` reaches its slot. A run waiting is not executing; if its
    job's next slot comes due first, it is taken out and recorded `missed`
    ("overloaded: ..."). A run whose job is executing here when it comes due is
    skipped (overlap "skip") or waits for that run to end ("queue"). The end of each
    run is handed to `record` (the recorder writes it in batches) and counted in
    `ended_count`, which the dispatcher looks at; finished runs are kept for
    `drain_ended` (metrics).
    """

    def __init__(
        self,
        clock: Clock,
        pool_size: int,
        max_log_bytes: int,
        record: Callable[[Outcome], None],
        set_attempt: Callable[[Claimed, int], None],
        stop: threading.Event,
        began: Callable[[Claimed, datetime], None] = lambda claimed, at: None,
        isolation: ProcessIsolation | None = None,
        guard: CrashLoopGuard | None = None,
        note_stack: Callable[[Claimed, str], None] = lambda claimed, stack: None,
    ) -> None:
        self._note_stack = note_stack
        self.clock = clock
        self.isolation = isolation or ProcessIsolation()
        self.guard = guard
        self.max_log_bytes = max_log_bytes
        self._record = record
        self._set_attempt = set_attempt
        self._began = began
        self._stop = stop
        self._active: dict[int, ActiveRun] = {}
        self._waiting: deque[ActiveRun] = deque()
        # Claimed ahead of their slot: (slot, seq, run), released into _waiting at the slot.
        self._held: list[tuple[datetime, int, ActiveRun]] = []
        self._seq = itertools.count()
        self._queued_of: dict[str, ActiveRun] = {}  # the newest run of each job in _waiting
        self._executing: Counter[str] = Counter()  # jobs with a run executing here
        self._parked: dict[str, deque[ActiveRun]] = {}  # overlap "queue": wait for the job's run to end
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)
        self._closing = False
        self.ended_count = 0  # runs ended so far: whoever drives the runner looks, nothing is called
        self._ended_runs: deque[ActiveRun] = deque(maxlen=ENDED_KEPT)
        self._deadlines: dict[int, ActiveRun] = {}
        self._threads = [
            threading.Thread(target=self._worker, name=f"job-{i}", daemon=True) for i in range(pool_size)
        ]
        for thread in self._threads:
            thread.start()

    def start(self, claimed: Claimed, spec: JobSpec) -> None:
        """Queue the run on the pool. The claim is already in the database."""
        self.start_many([(claimed, spec)])

    def start_many(self, runs: Sequence[tuple[Claimed, JobSpec]], hold: bool = False) -> None:
        """Queue claimed runs, oldest slot first: one lock and one wake-up for a whole burst.

        With `hold` (runs claimed ahead), a run whose slot is still ahead waits for `release`
        to reach it; without, every run is due now."""
        mono, now = self.clock.monotonic(), self.clock.now()
        prepared = []
        for claimed, spec in runs:
            ctx = JobContext(spec.name, claimed.scheduled_for, claimed.run_id, claimed.attempt)
            ahead = max(0.0, (claimed.scheduled_for - now).total_seconds()) if hold else 0.0
            deadline = mono + ahead + spec.timeout.total_seconds() if spec.timeout else None
            prepared.append(ActiveRun(claimed, spec, mono + ahead, ctx, deadline))
        held = {
            a.claimed.run_id: self.guard.held_until(a.spec.name) if self.guard else None for a in prepared
        }
        ended: list[tuple[ActiveRun, Outcome]] = []
        with self._lock:
            for active in prepared:
                self._active[active.claimed.run_id] = active
            queued = 0
            for active in prepared:
                if held.get(active.claimed.run_id) is not None:
                    continue
                if active.deadline_mono is not None:
                    self._deadlines[active.claimed.run_id] = active
                if hold and active.claimed.scheduled_for > now:
                    heapq.heappush(self._held, (active.claimed.scheduled_for, next(self._seq), active))
                else:
                    queued += self._enqueue(active, ended)
            self._work.notify(queued)
        for active in prepared:  # the crash-loop guard holds these jobs back: recorded skipped
            until = held.get(active.claimed.run_id)
            if until is not None:
                self._finish(active, self._held_back(active, until))
        for active, outcome in ended:
            self._finish(active, outcome)

    def release(self, now: datetime) -> int:
        """Queue the runs claimed ahead whose slot has come; returns how many."""
        ended: list[tuple[ActiveRun, Outcome]] = []
        with self._lock:
            if not self._held or self._held[0][0] > now:
                return 0
            queued = 0
            while self._held and self._held[0][0] <= now:
                queued += self._enqueue(heapq.heappop(self._held)[2], ended)
            self._work.notify(queued)
        for active, outcome in ended:
            self._finish(active, outcome)
        return queued

    def next_release(self) -> datetime | None:
        """The slot of the next run held for its slot, if any."""
        with self._lock:
            return self._held[0][0] if self._held else None

    def _enqueue(self, active: ActiveRun, ended: list[tuple[ActiveRun, Outcome]]) -> int:
        """Queue a run that is due (the lock is held); returns 1 if it was queued for a thread.

        Its job's older run still waiting for a thread has been overtaken: it is taken out and
        recorded missed. If the job is executing here, the run is skipped, or parked until that
        run ends (overlap "queue"). Outcomes to write are appended to `ended`.
        """
        job = active.spec.name
        older = self._queued_of.get(job)
        if older is not None and older.claimed.scheduled_for < active.claimed.scheduled_for:
            self._waiting.remove(older)
            why = "the instance fell behind"
            ended.append((older, self._overtaken(older, active.claimed.scheduled_for, why)))
        if self._executing[job]:
            if active.spec.overlap == "queue" and job not in self._parked:
                self._parked[job] = deque([active])
                return 0
            ended.append((active, self._outcome(active, "skipped", 0, None, None)))
            return 0
        self._queued_of[job] = active
        self._waiting.append(active)
        return 1

    def _overtaken(self, run: ActiveRun, slot: datetime, why: str) -> Outcome:
        message = (
            f"overloaded: slot {run.claimed.scheduled_for.isoformat()} had not started when slot "
            f"{slot.isoformat()} came due ({len(self._waiting) + 1} runs waiting, "
            f"{len(self._threads)} threads; {why})"
        )
        return self._outcome(run, "missed", run.claimed.attempt, None, None, message, "Overloaded")

    def supersede(self, due: dict[str, datetime], why: str) -> int:
        """Take out the waiting runs of these jobs whose slot is before the one now due; record
        each `missed` with an error text starting "overloaded:". Returns how many."""
        with self._lock:
            stale = [
                a
                for a in self._waiting
                if a.claimed.scheduled_for < due.get(a.spec.name, a.claimed.scheduled_for)
            ]
            if not stale:
                return 0
            gone = {id(a) for a in stale}
            self._waiting = deque(a for a in self._waiting if id(a) not in gone)
            ended = [(run, self._overtaken(run, due[run.spec.name], why)) for run in stale]
            for run in stale:
                if self._queued_of.get(run.spec.name) is run:
                    del self._queued_of[run.spec.name]
        for run, outcome in ended:
            self._finish(run, outcome)
        return len(stale)

    def waiting_ids(self) -> set[int]:
        """Runs claimed here that are not executing (their job is not busy): waiting for a thread,
        for their slot, or for their job's run to end."""
        with self._lock:
            ids = {a.claimed.run_id for a in self._waiting}
            ids.update(a.claimed.run_id for _, _, a in self._held)
            for parked in self._parked.values():
                ids.update(a.claimed.run_id for a in parked)
            return ids

    def drain_ended(self) -> list[ActiveRun]:
        """The runs that ended since the last call (at most ENDED_KEPT)."""
        with self._lock:
            ended = list(self._ended_runs)
            self._ended_runs.clear()
        return ended

    def live_log(self, run_id: int) -> str | None:
        """The log so far of a run executing here; None if it does not run in this process."""
        with self._lock:
            run = self._active.get(run_id)
        return run.log.text() if run is not None and run.log is not None else None

    def _held_back(self, run: ActiveRun, until: datetime) -> Outcome:
        failures = self.guard.failures(run.spec.name) if self.guard else 0
        message = f"crash-loop guard: {failures} failures in a row; next run not before {until.isoformat()}"
        return Outcome(
            run_id=run.claimed.run_id,
            fence=run.claimed.fence,
            status="skipped",
            finished_at=self.clock.now(),
            started_at=None,
            attempt=run.claimed.attempt,
            error_type="CrashLoop",
            error_message=message,
        )

    def active(self) -> list[ActiveRun]:
        with self._lock:
            return list(self._active.values())

    def backlogged(self) -> bool:
        """Runs wait here for a thread, or runs claimed ahead are due within BACKLOG_AHEAD."""
        if self._waiting:
            return True
        held = self._held
        return bool(held) and (held[0][0] - self.clock.now()).total_seconds() <= BACKLOG_AHEAD

    def has_runs(self) -> bool:
        return bool(self._active)

    def executing(self) -> int:
        with self._lock:
            return sum(self._executing.values())

    def check_deadlines(self) -> float | None:
        """Flag runs past their timeout (cooperative cancel); returns the next deadline."""
        now = self.clock.monotonic()
        upcoming: float | None = None
        with self._lock:
            timed = list(self._deadlines.values())  # only runs with a timeout: a burst has thousands
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
                        extra={
                            "job": run.spec.name,
                            "run_id": run.claimed.run_id,
                            "action": "overdue",
                        },
                    )
                if now >= run.deadline_mono + STUCK_MARGIN:  # the loop calls this at least every second
                    self._stuck(run)
            elif upcoming is None or run.deadline_mono < upcoming:
                upcoming = run.deadline_mono
        return upcoming

    def _stuck(self, run: ActiveRun) -> None:
        """Note, once, the stack of a thread run stuck past its timeout (a process run is killed)."""
        if run.stack_noted or run.thread_id is None or self.isolation.applies(run.spec):
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

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is active (real time); True if idle."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._active, timeout)

    def cancel_all(self) -> None:
        """Shutting down: runs waiting for a thread end `abandoned`; executing ones are asked to stop.

        Runs claimed ahead whose slot has not come are handed back: their rows go back to
        `queued`, for a peer, or this instance's next start, to take and run."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
            for parked in self._parked.values():
                waiting += parked
            ahead = [a for _, _, a in sorted(self._held, key=lambda h: h[:2])]
            self._held, self._parked, self._queued_of = [], {}, {}
        for run in waiting:
            message = "the daemon stopped before the run began"
            self._finish(run, self._outcome(run, "abandoned", run.claimed.attempt, None, None, message))
        for run in ahead:
            self._hand_back(run)
        for run in self.active():
            run.ctx.cancelled.set()

    def _hand_back(self, run: ActiveRun) -> None:
        """Give a run that never began back to the cluster: its row becomes `queued` again."""
        log.info(
            "run %s of %s handed back (slot %s): the daemon is stopping before its slot",
            run.claimed.run_id,
            run.spec.name,
            run.claimed.scheduled_for.isoformat(),
            extra={"job": run.spec.name, "run_id": run.claimed.run_id, "action": "handed-back"},
        )
        now = self.clock.now()
        self._record(Outcome(run.claimed.run_id, run.claimed.fence, "queued", now, attempt=0))
        with self._idle:
            self._active.pop(run.claimed.run_id, None)
            self._deadlines.pop(run.claimed.run_id, None)
            self.ended_count += 1
            self._idle.notify_all()

    def shutdown(self) -> None:
        with self._lock:
            self._closing = True
            self._work.notify_all()

    # -- on the pool threads ------------------------------------------------

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._work.wait()
                if self._closing:
                    return
                run = self._waiting.popleft()
                job = run.spec.name
                if self._queued_of.get(job) is run:
                    del self._queued_of[job]
                self._executing[job] += 1
            self._execute(run)

    def _execute(self, run: ActiveRun) -> None:
        spec, claimed = run.spec, run.claimed
        run.thread_id = threading.get_ident()
        buffer = runlog.LogBuffer(self.max_log_bytes)
        run.log = buffer
        outcome: Outcome | None = None
        try:
            # Written into the run's log directly: the capture handler's formatting was a third of
            # a short run's cost. info.log gets the start line of a run still going a moment later
            # (from the recorder, which writes its start then); every run gets its end line.
            if log.isEnabledFor(logging.INFO):
                slot = claimed.scheduled_for.isoformat()
                started = f"run {claimed.run_id} of {spec.name} started (slot {slot})"
                buffer.write(runlog.line("INFO", log.name, started))
            runlog.bind(buffer)
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
        self._began(run.claimed, run.began_at)
        while True:
            run.ctx.attempt = attempt
            try:
                self._call(run, attempt, buffer)
            except ChildStopped as exc:
                return self._outcome(run, "abandoned", attempt, buffer, None, f"shut down: {exc}")
            except (Exception, SystemExit) as exc:  # sys.exit(n) in a job fails it like an exception
                if isinstance(exc, SystemExit) and exc.code in (None, 0):
                    return self._ended(run, attempt, buffer)
                if self._overdue(run):
                    return self._outcome(run, "timed_out", attempt, buffer, exc)
                if not retry_allowed(attempt, spec.retries):
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
            return self._outcome(run, "timed_out", attempt, buffer, None)
        return self._outcome(run, "succeeded", attempt, buffer, None)

    def _overdue(self, run: ActiveRun) -> bool:
        return run.deadline_mono is not None and self.clock.monotonic() >= run.deadline_mono

    def _outcome(
        self,
        run: ActiveRun,
        status: str,
        attempt: int,
        buffer: runlog.LogBuffer | None,
        exc: BaseException | None,
        message: str | None = None,
        message_type: str = "Abandoned",
    ) -> Outcome:
        error_type = error_message = error_traceback = None
        if isinstance(exc, ChildFailed):  # the child's own error, not this thread's traceback
            error_type, error_message = exc.error_type, str(exc)[:2000]
            error_traceback = exc.child_traceback or None
        elif exc is not None:
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
            error_type, error_message = error_type or message_type, message
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
            log=(buffer.text() or None) if buffer else None,
            log_truncated=buffer.truncated if buffer else False,
        )

    def _finish(self, run: ActiveRun, outcome: Outcome) -> None:
        seconds = self.clock.monotonic() - run.started_mono
        level = logging.INFO if outcome.status == "succeeded" else logging.WARNING
        log.log(
            level,
            "run %s of %s %s in %.3fs (slot %s)%s",
            outcome.run_id,
            run.spec.name,
            outcome.status,
            seconds,
            run.claimed.scheduled_for.isoformat(),
            f": {outcome.error_type}: {outcome.error_message}" if outcome.error_type else "",
            extra={"job": run.spec.name, "run_id": outcome.run_id, "action": outcome.status},
        )
        run.outcome = outcome
        if self.guard is not None:
            error = ": ".join(p for p in (outcome.error_type, outcome.error_message) if p)
            self.guard.observe(run.spec.name, outcome.status, error)
        self._record(outcome)
        with self._idle:
            self._active.pop(run.claimed.run_id, None)
            self._deadlines.pop(run.claimed.run_id, None)
            self._ended_runs.append(run)
            self.ended_count += 1
            job = run.spec.name
            if run.thread_id is not None and self._executing[job]:
                self._executing[job] -= 1
                if not self._executing[job]:
                    del self._executing[job]
                    parked = self._parked.pop(job, None)
                    if parked:
                        self._queued_of[job] = parked[0]
                        self._waiting.extend(parked)
                        self._work.notify(len(parked))
            self._idle.notify_all()
