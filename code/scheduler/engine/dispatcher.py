"""The timing loop: a heap of next slots, claimed in batches, handed to the runner.

`tick(now)` is the whole decision for an instant: which slots are due, what the
catch-up policy makes of late ones, and one claim transaction for all of them.
Only the slots this instance wins go to the runner. The loop in `run()` only
adds waiting (on the monotonic clock) and periodic polls around `tick`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from scheduler.clock import Clock
from scheduler.cluster.health import Health
from scheduler.engine.runner import Runner
from scheduler.errors import SchedulerError
from scheduler.jobs import effective
from scheduler.jobs.registry import JobSpec
from scheduler.jobs.schedules import Schedule, recent_slots
from scheduler.store import Claim, Claimed, JobRow, Owner, Store

log = logging.getLogger(__name__)

# A slot this late is no longer "on time": catch-up policies decide about it.
MISFIRE_GRACE = timedelta(seconds=30)
# A wall clock that moves this far from the monotonic clock between two loops has been stepped.
CLOCK_STEP = timedelta(seconds=2)
MAX_WAIT = 1.0
MIN_BACKOFF = 0.25
MAX_BACKOFF = 5.0
# An instance whose pool is full leaves due slots to its peers, retrying every DEFER_STEP;
# after DEFER_LIMIT it claims them anyway and the pool queues them.
DEFER_STEP = timedelta(seconds=0.1)
DEFER_LIMIT = timedelta(seconds=0.5)
# Jobs per claim transaction: each chunk's runs start as soon as it commits.
CLAIM_CHUNK = 500
# While runs are in flight the loop looks this often whether one ended (a queued slot may be free).
ENDED_CHECK = 0.05


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


class Dispatcher:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        runner: Runner,
        owner: Owner,
        lease_ttl: timedelta,
        catchup_limit: int,
        poll_interval: float,
        health: Health,
        capacity: int | None = None,
        unwritten: Callable[[], set[int]] = set,
        claim_ahead: timedelta = timedelta(0),
    ) -> None:
        self.store = store
        self.clock = clock
        self.runner = runner
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.catchup_limit = catchup_limit
        self.poll_interval = poll_interval
        self.health = health
        self.capacity = capacity  # threads of the pool; None: never leave slots to peers
        self.unwritten = unwritten  # runs ended here whose end is not written yet (not busy)
        # Slots are claimed this long before they are due (at most half the gap to the previous
        # slot), so a burst's claims are written before its instant and its runs start on time.
        self.claim_ahead = claim_ahead
        self._ended_seen = 0
        self.states: dict[str, JobState] = {}
        self._heap: list[tuple[datetime, int, str]] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self.wake = threading.Event()
        self._last_poll: datetime | None = None
        self._backoff = MIN_BACKOFF
        self._backing_off: set[str] = set()
        health.when_recovered(self.wake.set)
        # Catch-up decisions are logged once their claim is written, not at every retry of an outage.
        self._catchup_notes: list[tuple[str, int, bool, datetime, str]] = []

    # -- state ------------------------------------------------------------

    def load(
        self, specs: dict[str, JobSpec], rows: dict[str, JobRow], last_slots: dict[str, datetime]
    ) -> None:
        """(Re)build the heap for the loaded, enabled jobs. Keeps cursors of known jobs."""
        now = self.clock.now()
        # Changes made after these rows were read are the first poll's news.
        self._last_poll = self._last_poll or now
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

    def next_due(self) -> datetime | None:
        """The next instant the loop has something to do: a slot to claim, or a run claimed
        ahead to release."""
        with self._lock:
            due = self._heap[0][0] if self._heap else None
        release = self.runner.next_release()
        if due is None or (release is not None and release < due):
            return release
        return due

    # -- decisions --------------------------------------------------------

    def tick(self, now: datetime) -> list[Claimed]:
        """Claim every slot due at `now`; start the runs won. Returns what was won.

        The due jobs are decided, claimed and started CLAIM_CHUNK at a time, each chunk in
        its own short transaction, so the first runs of a burst start while the rest is
        still being claimed. On PostgreSQL the chunks are taken in a random order and locked
        with SKIP LOCKED: instances claiming one burst at once each take a share instead of
        queuing behind the first one's locks.

        Slots up to `claim_ahead` ahead are claimed now too, if their job is not busy: their
        runs wait in the runner until `now` reaches the slot (released here, first thing).

        Raises nothing: a database error leaves the due slots undecided, to be
        retried (and caught up per policy) on a later tick.
        """
        self.runner.release(now)
        with self._lock:
            if self._backing_off and self.health.database_up:
                # The database answers again (a heartbeat or a record got through):
                # retry the slots left undecided at once rather than after the backoff.
                for name in self._backing_off:
                    state = self.states.get(name)
                    if state is not None:
                        state.next_at = now
                        self._push(state, now)
                self._backing_off.clear()
            due: list[JobState] = []
            while self._heap and self._heap[0][0] <= now:
                at, _, name = heapq.heappop(self._heap)
                state = self.states.get(name)
                if state is not None and state.look_at == at:
                    due.append(state)
            due, deferred = self._within_capacity(due, now)
            for state in deferred:
                if state.next_at > now:  # a slot ahead: claimed at its time instead
                    self._push(state, state.next_at)
                    continue
                state.next_at = now + DEFER_STEP  # the cursor stays: the slot is still undecided
                self._push(state, state.next_at)
        if not self.store.is_sqlite:
            random.shuffle(due)
        won: list[Claimed] = []
        failed = False
        for start in range(0, len(due), CLAIM_CHUNK):
            chunk = due[start : start + CLAIM_CHUNK]
            if failed:  # the database failed on an earlier chunk: the rest stays undecided too
                self._settle(chunk, now, {}, set(), failed=True)
                continue
            got, failed = self._tick_chunk(chunk, now)
            won += got
        if not failed and not deferred:
            self.health.mark_caught_up()  # the first decided tick after start-up did the catch-up
        return won

    def _tick_chunk(self, chunk: list[JobState], now: datetime) -> tuple[list[Claimed], bool]:
        """Decide, claim and start one chunk of due jobs; returns (won, whether the database failed)."""
        with self._lock:
            claims, decided = self._decide(chunk, now)
            notes, self._catchup_notes = self._catchup_notes, []
        due = {name: slot for name, slot in decided.items() if slot <= now}
        if due:
            # A run still waiting for a thread when its job's next slot is due has been overtaken:
            # it is recorded missed ("overloaded: ..."), and the new slot is claimed instead.
            # (A slot claimed ahead overtakes it when it is released, in the runner.)
            self.runner.supersede(due, "the instance fell behind")
        won: list[Claimed] = []
        left: set[str] = set()
        if claims:
            idle = self.runner.waiting_ids() | self.unwritten()
            try:
                won, left = self.store.runs.claim_some(claims, self.owner, now, now + self.lease_ttl, idle)
            except SchedulerError as exc:
                self.health.database(False, str(exc))
                self._backoff = min(MAX_BACKOFF, self._backoff * 2)
                log.debug("claim failed, slots stay undecided: %s", exc)
                self._settle(chunk, now, decided, left, failed=True)
                return [], True
            self.health.database(True, "")
            self._backoff = MIN_BACKOFF
            self._log_catchup(notes)
            self._start(won)
        self._settle(chunk, now, decided, left, failed=False)
        return won, False

    def _settle(
        self,
        chunk: list[JobState],
        now: datetime,
        decided: dict[str, datetime],
        left: set[str],
        *,
        failed: bool,
    ) -> None:
        """Move the cursors of a chunk's decided jobs and put every job of the chunk back on the heap."""
        with self._lock:
            for state in chunk:
                name = state.spec.name
                if state.next_at > now and (failed or name in left):
                    # A slot ahead left undecided (its job is busy, a peer is claiming it, or the
                    # database failed): it is claimed at its time, as any other.
                    self._aim(state, ahead=False)
                elif failed:
                    # Undecided: retry soon; the catch-up policy applies if it stays down.
                    state.next_at = now + timedelta(seconds=self._backoff)
                    self._backing_off.add(name)
                    self._aim(state, ahead=False)
                elif name in left:
                    state.next_at = now + DEFER_STEP  # a peer is claiming it: look again shortly
                    self._aim(state, ahead=False)
                else:
                    self._backing_off.discard(name)
                    state.cursor = decided.get(name, state.cursor)
                    if not state.row.paused:
                        state.recorded = state.cursor
                    state.next_at = state.schedule.next_after(state.cursor)
                    self._aim(state)
                self._push(state)

    def _within_capacity(self, due: list[JobState], now: datetime) -> tuple[list[JobState], list[JobState]]:
        """Split due jobs into those to claim now and those left to less busy peers for a moment.

        Only an instance whose every thread is executing (long runs) leaves due slots to
        its peers, for up to DEFER_LIMIT: then it claims them anyway and they wait in its
        queue. An instance with a free thread claims the whole burst (its queue drains
        it); a burst is split between instances by claiming, not by deferring.
        """
        if self.capacity is None or not due or self.runner.executing() < self.capacity:
            return due, []
        take = [s for s in due if s.row.paused]
        deferred: list[JobState] = []
        for state in due:
            if state.row.paused:
                continue
            slot = state.schedule.next_after(state.cursor)
            (take if now - slot >= DEFER_LIMIT else deferred).append(state)  # ahead: deferred
        return take, deferred

    def _decide(self, due: list[JobState], now: datetime) -> tuple[list[Claim], dict[str, datetime]]:
        claims: list[Claim] = []
        decided: dict[str, datetime] = {}
        for state in due:
            if state.next_at > now:  # claimed ahead: its one next slot, left undecided if busy
                decided[state.spec.name] = state.next_at
                spec = state.spec
                claims.append(Claim(spec.name, state.next_at, "schedule", "running", spec.overlap, True))
                continue
            slots, cut = recent_slots(state.schedule, state.cursor, now, self.catchup_limit)
            if not slots:
                continue
            decided[state.spec.name] = slots[-1]
            if state.row.paused:
                continue  # a paused job lets its slots pass, unrecorded
            claims += self._claims_for(state.spec, slots, now, cut)
        return claims, decided

    def _claims_for(self, spec: JobSpec, slots: list[datetime], now: datetime, cut: bool) -> list[Claim]:
        overlap = spec.overlap  # applied by the store, which sees the runs executing in the cluster
        latest = slots[-1]
        on_time = now - latest <= MISFIRE_GRACE
        if len(slots) == 1 and on_time:
            return [Claim(spec.name, latest, "schedule", "running", overlap)]
        self._catchup_notes.append((spec.name, len(slots) - (1 if on_time else 0), cut, latest, spec.catchup))
        if spec.catchup == "all":
            first, rest = slots[0], slots[1:]
            return [Claim(spec.name, first, "catchup", "running", "queue")] + [
                Claim(spec.name, s, "catchup", "queued") for s in rest
            ]
        missed = [Claim(spec.name, s, "catchup", "missed") for s in slots[:-1]]
        if spec.catchup == "latest" or on_time:
            trigger = "schedule" if on_time else "catchup"
            return missed + [Claim(spec.name, latest, trigger, "running", overlap)]
        return missed + [Claim(spec.name, latest, "catchup", "missed")]

    def _log_catchup(self, notes: list[tuple[str, int, bool, datetime, str]]) -> None:
        for name, missed, cut, latest, policy in notes:
            log.info(
                "job %s: %d%s slots missed up to %s, catch-up policy %r",
                name,
                missed,
                "+" if cut else "",
                latest.isoformat(),
                policy,
                extra={"job": name, "action": "catchup"},
            )

    def take_queued(self, now: datetime) -> list[Claimed]:
        """Start queued runs (manual triggers, queued overlaps, catch-up, retries) of known jobs."""
        try:
            # Asked after every run: listing 10,000 job names each time cost a third of the CPU.
            if not self.store.runs.any_queued():
                return []
            with self._lock:
                names = [n for n, s in self.states.items() if not s.row.paused]
            idle = self.runner.waiting_ids() | self.unwritten()
            won = self.store.runs.take_queued(names, self.owner, now, now + self.lease_ttl, idle)
        except SchedulerError as exc:
            self.health.database(False, str(exc))
            return []
        self._start(won)
        return won

    def _start(self, won: list[Claimed]) -> None:
        start = []
        for claimed in won:
            if claimed.status != "running":
                log.info(
                    "job %s slot %s %s: %s",
                    claimed.job,
                    claimed.scheduled_for.isoformat(),
                    claimed.status,
                    not_run_reason(claimed),
                    extra={"job": claimed.job, "run_id": claimed.run_id, "action": claimed.status},
                )
                continue
            state = self.states.get(claimed.job)
            if state is not None:
                start.append((claimed, state.spec))
        self.runner.start_many(start, hold=True)  # a slot claimed ahead waits for its instant

    # -- the loop -----------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop`; waits on the monotonic clock, polls the database periodically."""
        last_wall, last_mono = self.clock.now(), self.clock.monotonic()
        next_poll = last_mono
        while not stop.is_set():
            now, mono = self.clock.now(), self.clock.monotonic()
            self.health.loop_alive()
            drift = (now - last_wall) - timedelta(seconds=mono - last_mono)
            if abs(drift) > CLOCK_STEP:
                log.warning("wall clock stepped by %+.1fs; rescheduling from now", drift.total_seconds())
                if drift < timedelta(0):
                    self.rewind(now)
            last_wall, last_mono = now, mono
            try:
                ended = self.runner.ended_count
                if mono >= next_poll:
                    self._ended_seen = ended
                    next_poll = mono + self.poll_interval
                    self.poll(now)
                elif ended != self._ended_seen:
                    # Runs ended: only their queued slots are news. Overrides wait for the periodic
                    # poll, so a busy instance does not re-read them after every run.
                    self._ended_seen = ended
                    self.take_queued(now)
                self.tick(now)
                deadline = self.runner.check_deadlines()
            except Exception:
                log.exception("dispatcher cycle failed; carrying on")
                deadline = None
            self.clock.wait(self._timeout(now, mono, next_poll, deadline), self.wake)
            self.wake.clear()

    def _timeout(self, now: datetime, mono: float, next_poll: float, deadline: float | None) -> float:
        # While runs are in flight, look every ENDED_CHECK whether one ended (nothing calls in).
        waits = [ENDED_CHECK if self.runner.has_runs() else MAX_WAIT, next_poll - mono]
        due = self.next_due()
        if due is not None:
            waits.append((due - now).total_seconds())
        if deadline is not None:
            waits.append(deadline - mono)
        return max(0.0, min(waits))

    def poll(self, now: datetime) -> None:
        """Read overrides changed since the last poll and start queued runs."""
        since = self._last_poll or now
        try:
            rows = self.store.jobs.changed_since(since)
        except SchedulerError as exc:
            self.health.database(False, str(exc))
            return
        self._last_poll = now
        self.apply_rows(rows, now)
        self.take_queued(now)


def not_run_reason(claimed: Claimed) -> str:
    """Why a won slot is not started now, for its log line: only an overlap is 'still going'."""
    if claimed.trigger == "catchup":
        if claimed.status == "queued":
            return "queued to catch up after downtime"
        return "passed while the scheduler was not running (outside the catch-up policy)"
    if claimed.status in ("skipped", "queued"):
        return "previous run still going"
    return "not run"
