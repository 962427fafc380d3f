"""Running a claimed run on the thread pool: context, jitter, retries, timeout, log capture.

The runner never talks to the database itself for the end of a run: it hands
the `Outcome` to the recorder, which writes it when the database answers.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import datetime

from scheduler.clock import Clock
from scheduler.engine import outcomes, runlog
from scheduler.engine.attempts import Attempts
from scheduler.engine.context import ActiveRun, JobContext
from scheduler.engine.deadlines import Deadlines
from scheduler.engine.guard import CrashLoopGuard
from scheduler.engine.isolation import ProcessIsolation
from scheduler.jobs.registry import JobSpec
from scheduler.store import Claimed, Outcome

log = logging.getLogger(__name__)

# Finished runs kept for drain_ended (metrics) between two drains.
ENDED_KEPT = 20_000
# Runs claimed ahead and due this soon count as a backlog (see `backlogged`): work that can wait
# (a watchdog pass) is not started in the second before a burst.
BACKLOG_AHEAD = 1.0


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
        self._deadlines = Deadlines(lambda run: self.isolation.applies(run.spec), note_stack)
        self._attempts = Attempts(clock, stop, self.isolation, began, set_attempt, self._outcome)
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
                self._deadlines.add(active)
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
        return outcomes.held_back(run, failures, until, self.clock.now())

    def _overtaken(self, run: ActiveRun, slot: datetime, why: str) -> Outcome:
        waiting, threads = len(self._waiting) + 1, len(self._threads)
        return outcomes.overtaken(run, slot, why, waiting, threads, self.clock.now())

    def check_deadlines(self) -> float | None:
        """Flag runs past their timeout (cooperative cancel); returns the next deadline."""
        return self._deadlines.check(self.clock.monotonic())

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
            self._deadlines.discard(run.claimed.run_id)
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
            outcome = self._attempts.run(run, buffer)
        except BaseException as exc:  # a bug here must still end the run record
            outcome = self._outcome(run, "failed", 1, buffer, exc)
        finally:
            runlog.bind(None)
            assert outcome is not None
            self._finish(run, outcome)

    def _outcome(
        self,
        run: ActiveRun,
        status: str,
        attempt: int,
        buffer: runlog.LogBuffer | None,
        exc: BaseException | None,
        message: str | None = None,
    ) -> Outcome:
        now, ran_for = self.clock.now(), self.clock.monotonic() - run.started_mono
        return outcomes.ended(run, status, attempt, buffer, exc, now=now, ran_for=ran_for, message=message)

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
            self._deadlines.discard(run.claimed.run_id)
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
