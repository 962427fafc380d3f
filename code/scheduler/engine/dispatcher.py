"""The timing loop: a heap of next slots, claimed in batches, handed to the runner.

`tick(now)` is the whole decision for an instant: which slots are due, what the
catch-up policy makes of late ones, and one claim transaction for all of them.
Only the slots this instance wins go to the runner. The loop in `run()` only
adds waiting (on the monotonic clock) and periodic polls around `tick`.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from scheduler.clock import Clock
from scheduler.cluster.health import Health
from scheduler.engine import catchup
from scheduler.engine.runner import Runner
from scheduler.engine.timetable import JobState, Timetable
from scheduler.errors import SchedulerError
from scheduler.jobs.registry import JobSpec
from scheduler.jobs.schedules import recent_slots
from scheduler.store import Claim, Claimed, JobRow, Owner, Store

log = logging.getLogger(__name__)

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


class Dispatcher(Timetable):
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
        # Slots are claimed up to claim_ahead before they are due (see Timetable).
        super().__init__(clock, claim_ahead)
        self.store = store
        self.runner = runner
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.catchup_limit = catchup_limit
        self.poll_interval = poll_interval
        self.health = health
        self.capacity = capacity  # threads of the pool; None: never leave slots to peers
        self.unwritten = unwritten  # runs ended here whose end is not written yet (not busy)
        self._ended_seen = 0
        self._last_poll: datetime | None = None
        self._backoff = MIN_BACKOFF
        self._backing_off: set[str] = set()
        health.when_recovered(self.wake.set)
        # Catch-up decisions are logged once their claim is written, not at every retry of an outage.
        self._catchup_notes: list[catchup.CatchupNote] = []

    def load(
        self, specs: dict[str, JobSpec], rows: dict[str, JobRow], last_slots: dict[str, datetime]
    ) -> None:
        """(Re)build the heap for the loaded, enabled jobs. Keeps cursors of known jobs."""
        # Changes made after these rows were read are the first poll's news.
        self._last_poll = self._last_poll or self.clock.now()
        super().load(specs, rows, last_slots)

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
            due, deferred = self._within_capacity(self._pop_due(now), now)
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
            catchup.log_catchup(notes)
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
            more, note = catchup.claims_for(state.spec, slots, now, cut)
            claims += more
            if note is not None:
                self._catchup_notes.append(note)
        return claims, decided

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
                    catchup.not_run_reason(claimed),
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
