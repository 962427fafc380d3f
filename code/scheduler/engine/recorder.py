"""Write-behind for run outcomes: the end of a run is never lost and never blocks a job.

Outcomes queue in memory and a single thread writes them in batches. While the
database is away the batch is kept and retried with backoff. At shutdown, what
still cannot be written is spooled to a JSON-lines file and replayed at the
next start.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from scheduler.clock import Clock
from scheduler.errors import SchedulerError, StoreUnavailable
from scheduler.store import Claimed, Outcome

log = logging.getLogger(__name__)

BATCH = 500
MIN_BACKOFF = 0.2
MAX_BACKOFF = 10.0
# How long close() waits, past its deadline, for a write in flight: the database's own
# timeouts (connect 3 s, statement 15 s) end it, and its batch must not be dropped.
IN_FLIGHT_WAIT = 30.0
# A run still executing this long after it began gets its start written (other instances then
# see its job busy) and its start line logged; a shorter run's start is written with its end, in
# the same batch, and its end line (with its slot and duration) is its one line in the log.
BEGUN_DELAY = 0.05
# After the first end of a burst, wait this long for more before writing: ends go in batches,
# not one transaction each.
GATHER = 0.02


class Recorder:
    def __init__(
        self,
        clock: Clock,
        write: Callable[[Sequence[Outcome]], list[int]],
        spool: Path,
        on_health: Callable[[bool, str], None] = lambda ok, why: None,
        mark_started: Callable[[Sequence[tuple[int, int, datetime]]], None] | None = None,
        write_attempt: Callable[[int, int, int], bool] = lambda run_id, fence, attempt: True,
    ) -> None:
        self.clock = clock
        self._write = write
        self._mark_started = mark_started
        self._begun: dict[int, tuple[Claimed, datetime, float]] = {}  # run_id -> (run, began at, mono)
        self._write_attempt = write_attempt
        self._attempts: dict[int, tuple[int, int]] = {}  # run_id -> (fence, attempt) of a retry begun
        self.spool = spool
        self._on_health = on_health
        self._queue: deque[Outcome] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._nudged = False
        self._thread: threading.Thread | None = None
        self._writing: set[int] = set()
        self.written = 0
        self.lost_leases = 0

    def record(self, outcome: Outcome) -> None:
        with self._cond:
            self._begun.pop(outcome.run_id, None)
            self._queue.append(outcome)
            if len(self._queue) in (1, BATCH):  # the writer waits for the first, or gathers up to BATCH
                self._cond.notify()

    def began(self, claimed: Claimed, at: datetime) -> None:
        """A run's function is starting; its start is written if it is still going BEGUN_DELAY later."""
        if self._mark_started is None:
            return
        with self._cond:
            first = not self._begun
            self._begun[claimed.run_id] = (claimed, at, time.monotonic())
            if first:  # the writer's wait now has a deadline; otherwise it already has one
                self._cond.notify()

    def _due_marks(self, take: bool) -> list[tuple[Claimed, datetime]] | float | None:
        """The starts to write now (`take`: removed), else the seconds until the next is due (None: none)."""
        if not self._begun:
            return None
        cutoff = time.monotonic() - BEGUN_DELAY
        due = [(claimed, at) for claimed, at, mono in self._begun.values() if mono <= cutoff]
        if not due:
            return max(0.0, min(mono for _, _, mono in self._begun.values()) - cutoff)
        if take:
            for claimed, _ in due:
                del self._begun[claimed.run_id]
        return due

    def _log_started(self, runs: list[Claimed]) -> None:
        for claimed in runs:
            log.info(
                "run %s of %s started (slot %s)",
                claimed.run_id,
                claimed.job,
                claimed.scheduled_for.isoformat(),
                extra={"job": claimed.job, "run_id": claimed.run_id, "action": "start"},
            )

    def _write_marks(self) -> None:
        with self._cond:
            due = self._due_marks(take=True)
        if not isinstance(due, list):
            return
        self._log_started([claimed for claimed, _ in due])
        if self._mark_started is None:
            return
        marks = [(claimed.run_id, claimed.fence, at) for claimed, at in due]
        try:
            self._mark_started(marks)
        except SchedulerError as exc:  # only a hint to the peers' skip-if-running check
            log.debug("could not write %d run starts: %s", len(marks), exc)

    def record_attempt(self, run_id: int, fence: int, attempt: int) -> None:
        """A retry began: its attempt number is written behind the job, like the ends."""
        with self._cond:
            self._attempts[run_id] = (fence, attempt)
            self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def pending_runs(self) -> set[int]:
        """Ids of the runs whose outcome is not written yet (their leases must stay renewed)."""
        with self._cond:
            return {o.run_id for o in self._queue} | self._writing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="recorder", daemon=True)
        self._thread.start()

    def flush_once(self) -> bool:
        """Write what is queued now; False if the database did not take it."""
        if not self._flush_attempts():
            return False
        with self._cond:
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            self._writing = {o.run_id for o in batch}
        if not batch:
            self._write_marks()
            return True
        try:
            lost = self._write(batch)
        except (StoreUnavailable, SchedulerError) as exc:
            with self._cond:
                self._queue.extendleft(reversed(batch))
                self._writing = set()
            self._on_health(False, str(exc))
            return False
        with self._cond:
            self._writing = set()
        self._write_marks()
        self._on_health(True, "")
        self.written += len(batch) - len(lost)
        for run_id in lost:
            self.lost_leases += 1
            log.warning(
                "run %s: result not recorded, another instance owns it now (lease lost)",
                run_id,
                extra={"run_id": run_id, "action": "lease-lost"},
            )
        return True

    def _flush_attempts(self) -> bool:
        with self._cond:
            attempts, self._attempts = self._attempts, {}
            ending = {o.run_id for o in self._queue}
        try:
            for run_id, (fence, attempt) in attempts.items():
                if run_id not in ending:  # an end queued already carries its attempt
                    self._write_attempt(run_id, fence, attempt)
        except (StoreUnavailable, SchedulerError) as exc:
            with self._cond:
                for run_id, value in attempts.items():
                    self._attempts.setdefault(run_id, value)
            self._on_health(False, str(exc))
            return False
        return True

    def _loop(self) -> None:
        backoff = MIN_BACKOFF
        failing = False
        while True:
            with self._cond:
                while not (self._queue or self._attempts or self._closing):
                    marks = self._due_marks(take=False)
                    if isinstance(marks, list):
                        break
                    self._cond.wait(marks)
                if self._closing:
                    return
                if 0 < len(self._queue) < BATCH:
                    self._cond.wait_for(lambda: len(self._queue) >= BATCH or self._closing, GATHER)
            if self.flush_once():
                if failing:
                    log.info("run records are being written again")
                failing, backoff = False, MIN_BACKOFF
                continue
            if not failing:
                log.warning("cannot write run records, keeping %d in memory and retrying", self.pending)
            failing = True
            with self._cond:
                nudged = self._cond.wait_for(lambda: self._closing or self._nudged, backoff)
                self._nudged = False
            backoff = MIN_BACKOFF if nudged else min(MAX_BACKOFF, backoff * 2)

    def nudge(self) -> None:
        """The database answers again (seen elsewhere): retry now instead of after the backoff."""
        with self._cond:
            self._nudged = True
            self._cond.notify_all()

    def close(self, deadline: float) -> None:
        """Stop the thread, try to write the rest until `deadline` (monotonic), spool leftovers."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - self.clock.monotonic()))
            if self._thread.is_alive():
                # A batch is in flight, out of the queue: wait for it to land or come back.
                self._thread.join(timeout=IN_FLIGHT_WAIT)
        while self.pending and self.clock.monotonic() < deadline:
            if not self.flush_once():
                # Wait on the injected clock, whose monotonic time is what the deadline is on.
                self.clock.wait(min(0.5, max(0.0, deadline - self.clock.monotonic())), threading.Event())
        self._spool_rest()

    def _spool_rest(self) -> None:
        with self._cond:
            rest = list(self._queue)
            self._queue.clear()
        if not rest:
            return
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with self.spool.open("a") as fh:
            for outcome in rest:
                fh.write(json.dumps(_encode(outcome)) + "\n")
        log.error("database unreachable at exit: %d run records spooled to %s", len(rest), self.spool)

    def replay_spool(self) -> int:
        """Queue outcomes spooled by an earlier process; returns how many."""
        if not self.spool.exists():
            return 0
        lines = self.spool.read_text().splitlines()
        for line in lines:
            if line.strip():
                self.record(_decode(json.loads(line)))
        self.spool.unlink()
        if lines:
            log.info("replaying %d run records spooled at the last exit", len(lines))
        return len(lines)


def _encode(outcome: Outcome) -> dict[str, object]:
    data = asdict(outcome)
    for key in ("finished_at", "started_at"):
        value = getattr(outcome, key)
        data[key] = value.isoformat() if value else None
    return data


def _decode(data: dict[str, object]) -> Outcome:
    data = dict(data)
    for key in ("finished_at", "started_at"):
        if data.get(key):
            data[key] = datetime.fromisoformat(str(data[key]))
    return Outcome(**data)  # type: ignore[arg-type]
