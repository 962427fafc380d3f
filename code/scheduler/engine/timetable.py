"""The loaded jobs' next slots: a heap keyed by when to look at each one.

A job is looked at `claim_ahead` before its next slot (at most half the gap from the
slot decided before it), so that a burst's claims are written before its instant; or
at the slot itself when it is paused or its slot was left undecided. The dispatcher
pops what is due from here and puts each job back once its slot is decided.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from scheduler.clock import Clock
from scheduler.jobs import effective
from scheduler.jobs.registry import JobSpec
from scheduler.jobs.schedules import Schedule
from scheduler.store import JobRow

log = logging.getLogger("scheduler.engine.dispatcher")


@dataclass
class JobState:
    spec: JobSpec
    row: JobRow
    schedule: Schedule
    cursor: datetime  # the last slot decided (run, skipped, missed or let pass)
    next_at: datetime
    recorded: datetime  # the last slot decided with a record (not let pass while paused)
    look_at: datetime = field(init=False)  # when to claim next_at: up to `claim_ahead` before it

    def __post_init__(self) -> None:
        self.look_at = self.next_at


class Timetable:
    def __init__(self, clock: Clock, claim_ahead: timedelta) -> None:
        self.clock = clock
        self.claim_ahead = claim_ahead
        self.states: dict[str, JobState] = {}
        self._heap: list[tuple[datetime, int, str]] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self.wake = threading.Event()  # set when the heap changed: the loop looks again

    def load(
        self, specs: dict[str, JobSpec], rows: dict[str, JobRow], last_slots: dict[str, datetime]
    ) -> None:
        """(Re)build the heap for the loaded, enabled jobs. Keeps cursors of known jobs."""
        now = self.clock.now()
        with self._lock:
            old = self.states
            self.states = {}
            for name, spec in specs.items():
                if not spec.enabled or name not in rows:
                    continue
                row = rows[name]
                if name in old:
                    cursor, recorded = old[name].cursor, old[name].recorded
                else:
                    cursor = recorded = effective.cursor_of(row, last_slots.get(name), now)
                schedule = effective.schedule_of(row)
                state = JobState(spec, row, schedule, cursor, schedule.next_after(cursor), recorded)
                self._aim(state)
                self.states[name] = state
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = [(s.look_at, next(self._seq), n) for n, s in self.states.items()]
        heapq.heapify(self._heap)
        self.wake.set()

    def _aim(self, state: JobState, ahead: bool = True) -> None:
        """Set when to look at the job's next slot: `claim_ahead` before it (at most half the gap
        from the last slot decided), or at the slot itself (`ahead` False, or paused)."""
        state.look_at = state.next_at
        if ahead and self.claim_ahead and not state.row.paused:
            state.look_at -= min(self.claim_ahead, (state.next_at - state.cursor) / 2)

    def _push(self, state: JobState, look_at: datetime | None = None) -> None:
        if look_at is not None:
            state.look_at = look_at
        heapq.heappush(self._heap, (state.look_at, next(self._seq), state.spec.name))

    def apply_rows(self, rows: list[JobRow], now: datetime) -> None:
        """Take operator overrides (pause, schedule) read from the database."""
        with self._lock:
            changed = False
            for row in rows:
                state = self.states.get(row.name)
                if state is None or row == state.row:
                    continue
                schedule = effective.schedule_of(row)
                if not row.paused:
                    # Slots let pass while paused, but after the resume, still run.
                    recorded = state.recorded if state.row.paused else state.cursor
                    state.cursor = effective.cursor_after_change(recorded, row, now)
                if row.paused != state.row.paused or schedule != state.schedule:
                    log.info(
                        "job %s: %s, schedule %s",
                        row.name,
                        "paused" if row.paused else "active",
                        schedule.describe(),
                        extra={"job": row.name, "action": "override"},
                    )
                state.row, state.schedule = row, schedule
                state.next_at = state.schedule.next_after(state.cursor)
                self._aim(state)
                changed = True
            if changed:
                self._rebuild_heap()

    def rewind(self, now: datetime) -> None:
        """After the wall clock stepped back: recompute from now instead of stalling.

        Slots that already ran are not run again: their rows exist, so a claim loses.
        """
        with self._lock:
            for state in self.states.values():
                state.cursor = min(state.cursor, now)
                state.recorded = min(state.recorded, now)
                state.next_at = state.schedule.next_after(state.cursor)
                self._aim(state)
            self._rebuild_heap()

    def _pop_due(self, now: datetime) -> list[JobState]:
        """The jobs whose look-at time has come (the lock is held)."""
        due: list[JobState] = []
        while self._heap and self._heap[0][0] <= now:
            at, _, name = heapq.heappop(self._heap)
            state = self.states.get(name)
            if state is not None and state.look_at == at:
                due.append(state)
        return due
