"""The hot path for bursts: bulk claims in chunks, the runner's queue, ends in batches, the log writer.

Real SQLite and PostgreSQL (db_url), time from FakeClock; nothing here is timed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from scheduler.clock import FakeClock, SystemClock
from scheduler.cluster.coordination import Coordinator
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.daemon import logsetup
from scheduler.engine.dispatcher import CLAIM_CHUNK, DEFER_LIMIT, Dispatcher
from scheduler.engine.recorder import Recorder
from scheduler.engine.runner import Runner
from scheduler.jobs.registry import JobSpec, make_spec
from scheduler.store import Claim, Claimed, Outcome, Owner, Store
from scheduler.store.schema import jobs, runs

from tests.support.polling import wait_until

OWNER = Owner("hot-a", "host-a", 4_200_001)
PEER = Owner("hot-b", "host-b", 4_200_002)
WAIT = 30.0


class Harness:
    """A dispatcher with a runner of `threads` threads and a recorder writing ends in batches."""

    def __init__(
        self,
        url: str,
        tmp_path: Path,
        clock: FakeClock,
        threads: int = 4,
        start: bool = True,
        claim_ahead: timedelta = timedelta(0),
    ) -> None:
        self.clock = clock
        self.store = Store(url)
        self.store.upgrade()
        self.stop = threading.Event()
        self.writes: list[int] = []
        self.recorder = Recorder(
            clock, self._write, tmp_path / "spool.jsonl", mark_started=self.store.runs.mark_started
        )
        if start:
            self.recorder.start()
        self.runner = Runner(
            clock, threads, 64 * 1024, self.recorder.record, lambda c, a: None, self.stop, self.recorder.began
        )
        self.dispatcher = Dispatcher(
            self.store,
            clock,
            self.runner,
            OWNER,
            timedelta(seconds=60),
            100,
            1.0,
            Health(clock),
            threads,
            unwritten=self.recorder.pending_runs,
            claim_ahead=claim_ahead,
        )

    def _write(self, outcomes: Sequence[Outcome]) -> list[int]:
        self.writes.append(len(outcomes))
        return self.store.runs.finish(outcomes)

    def load(self, *specs: JobSpec) -> None:
        rows = self.store.jobs.sync(specs, self.clock.now())
        self.dispatcher.load({s.name: s for s in specs}, rows, self.store.runs.last_slots())

    def statuses(self) -> dict[str, int]:
        with self.store.db.read() as conn:
            query = sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
            return {status: int(n) for status, n in conn.execute(query)}

    def close(self) -> None:
        self.stop.set()
        self.runner.cancel_all()
        self.runner.wait_idle(WAIT)
        self.runner.shutdown()
        self.recorder.close(self.clock.monotonic() + 5)
        self.store.dispose()


@pytest.fixture
def harness(db_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Harness]:
    h = Harness(db_url, tmp_path, clock)
    yield h
    h.close()


def noop() -> None:
    return None


def every(name: str, seconds: float, func: object = noop, **options: object) -> JobSpec:
    return make_spec(func, name=name, interval=timedelta(seconds=seconds), **options)  # type: ignore[arg-type]


def test_a_burst_larger_than_a_claim_chunk_runs_every_job_once_and_records_each(harness: Harness) -> None:
    count = CLAIM_CHUNK * 2 + 37
    harness.load(*(every(f"burst.j{i:04d}", 30) for i in range(count)))
    harness.clock.advance(timedelta(seconds=1))  # every job's first slot, all at one instant
    won = harness.dispatcher.tick(harness.clock.now())
    assert len(won) == count and {c.status for c in won} == {"running"}
    assert harness.runner.wait_idle(WAIT)
    wait_until(lambda: harness.statuses() == {"succeeded": count}, WAIT)
    with harness.store.db.read() as conn:
        slots = conn.execute(sa.select(runs.c.job, runs.c.scheduled_for, runs.c.started_at)).all()
    assert len({job for job, _, _ in slots}) == count  # one row per job, none twice
    assert all(started is not None for _, _, started in slots)  # the start came with the end
    assert len(harness.writes) < count / 10, "ends were not written in batches"


def test_a_run_waiting_for_a_thread_is_overtaken_by_its_next_slot_and_recorded_overloaded(
    db_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    release = threading.Event()
    h = Harness(db_url, tmp_path, clock, threads=1)
    try:
        hold = every("hold.job", 60, lambda: release.wait(WAIT))
        h.load(hold)
        clock.advance(timedelta(seconds=1))
        h.dispatcher.tick(clock.now())  # the only thread holds hold.job
        wait_until(lambda: h.runner.executing() == 1)
        h.load(hold, every("queued.job", 10))
        clock.advance(timedelta(seconds=1))  # queued.job's first slot
        assert h.dispatcher.tick(clock.now()) == []  # every thread busy: left to peers for a moment
        clock.advance(DEFER_LIMIT)
        (first,) = h.dispatcher.tick(clock.now())  # then claimed anyway: it waits for the thread
        assert first.job == "queued.job" and h.runner.waiting_ids() == {first.run_id}
        clock.advance(timedelta(seconds=10))  # the next slot (already DEFER_LIMIT late: no deferral)
        (won,) = h.dispatcher.tick(clock.now())
        # still waiting is not "still running": the new slot is claimed to run, not skipped
        assert (won.job, won.status) == ("queued.job", "running")
        release.set()
        assert h.runner.wait_idle(WAIT)
        wait_until(lambda: "running" not in h.statuses(), WAIT)
        rows = h.store.runs.history(job="queued.job", limit=10)
        by_slot = sorted(rows, key=lambda r: r.scheduled_for)
        assert [r.status for r in by_slot] == ["missed", "succeeded"]
        assert (by_slot[0].error_message or "").startswith("overloaded: ")
    finally:
        release.set()
        h.close()


def test_a_manual_run_ended_but_not_yet_written_does_not_skip_the_next_slot(
    db_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    """A manual trigger of a 10 us job made just before its slot: the slot runs, it is not skipped."""
    h = Harness(db_url, tmp_path, clock, start=False)  # ends stay unwritten until flushed
    try:
        h.load(every("quick.job", 60))
        clock.advance(timedelta(seconds=1))
        h.dispatcher.tick(clock.now())  # the first slot
        assert h.runner.wait_idle(WAIT)
        assert h.recorder.flush_once()
        clock.advance(timedelta(seconds=59.55))
        h.store.runs.enqueue("quick.job", clock.now())
        (manual,) = h.dispatcher.take_queued(clock.now())
        assert manual.status == "running" and h.runner.wait_idle(WAIT)
        assert h.recorder.pending == 1  # ended, its end not written yet
        clock.advance(timedelta(seconds=0.45))  # the next slot
        (won,) = h.dispatcher.tick(clock.now())
        assert won.status == "running"
    finally:
        h.close()


def test_a_run_still_executing_after_a_moment_has_its_start_written_so_peers_skip_its_job(
    harness: Harness,
) -> None:
    release = threading.Event()
    try:
        harness.load(every("long.job", 60, lambda: release.wait(WAIT)))
        harness.clock.advance(timedelta(seconds=1))
        (first,) = harness.dispatcher.tick(harness.clock.now())
        wait_until(lambda: harness.store.runs.get(first.run_id).started_at is not None, WAIT)
        slot = harness.clock.now() + timedelta(seconds=60)
        (peer,) = harness.store.runs.claim([Claim("long.job", slot)], PEER, slot, slot + timedelta(minutes=1))
        assert peer.status == "skipped"
    finally:
        release.set()


def test_a_peer_claiming_the_same_burst_gets_the_jobs_this_instance_has_locked_left_to_it(
    pg_url: str,
) -> None:
    store, peer = Store(pg_url), Store(pg_url)
    store.upgrade()
    try:
        names = [f"split.j{i:03d}" for i in range(20)]
        now = datetime(2026, 3, 1, 12, tzinfo=UTC)
        with store.db.engine.begin() as conn:
            conn.execute(
                jobs.insert(),
                [
                    {"name": n, "definition": {}, "schedule": "every 60s", "anchor_at": now}
                    | {"defined_at": now, "updated_at": now}
                    for n in names
                ],
            )
        claims = [Claim(n, now) for n in names]
        lease = now + timedelta(minutes=1)
        with store.db.engine.connect() as holder, holder.begin():  # another claim in flight
            holder.execute(sa.select(jobs.c.name).where(jobs.c.name.in_(names[:8])).with_for_update())
            won, left = peer.runs.claim_some(claims, PEER, now, lease)
            assert left == set(names[:8]) and sorted(c.job for c in won) == names[8:]
        won, left = store.runs.claim_some(claims, OWNER, now, lease)  # the first claim comes back
        assert left == set() and sorted(c.job for c in won) == names[:8]
    finally:
        store.dispose()
        peer.dispose()


def test_sqlite_bulk_claims_store_instants_exactly_as_the_orm_does(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    store.upgrade()
    try:
        slot = datetime(2026, 3, 1, 12, 0, 0, 120, tzinfo=UTC)
        (claimed,) = store.runs.claim([Claim("same.job", slot)], OWNER, slot, slot + timedelta(minutes=1))
        assert claimed.scheduled_for == slot
        assert store.runs.claim([Claim("same.job", slot)], PEER, slot, slot) == []  # UNIQUE(job, slot)
        manual = store.runs.enqueue("same.job", slot)  # through SQLAlchemy: collides, nudged by 1 us
        assert store.runs.get(manual).scheduled_for == slot + timedelta(microseconds=1)
    finally:
        store.dispose()


def test_heartbeats_go_on_while_a_leader_chore_is_stuck(sqlite_url: str, tmp_path: Path) -> None:
    store = Store(sqlite_url)
    store.upgrade()
    settings = Settings(
        database_url=sqlite_url, heartbeat=timedelta(seconds=0.1), lease_ttl=timedelta(seconds=1)
    )
    coordinator = Coordinator(store, SystemClock(), settings, OWNER, Health(SystemClock()))
    stuck, stop = threading.Event(), threading.Event()
    entered = threading.Event()

    def chore(now: datetime) -> None:
        entered.set()
        stuck.wait(WAIT)

    coordinator.chores.append(("stuck", chore))
    coordinator.register([], [], datetime.now(UTC))
    threads = [
        threading.Thread(target=coordinator.run, args=(stop,), daemon=True),
        threading.Thread(target=coordinator.run_chores, args=(stop,), daemon=True),
    ]
    try:
        for thread in threads:
            thread.start()
        assert entered.wait(WAIT)
        (me,) = store.cluster.alive(datetime.now(UTC))
        wait_until(lambda: store.cluster.alive(datetime.now(UTC))[0].heartbeat_at > me.heartbeat_at, WAIT)
    finally:
        stuck.set()
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        store.dispose()


def test_log_records_reach_info_log_through_the_writer_thread(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        path = logsetup.configure(tmp_path, "INFO", 1_000_000, 2, stderr=False)
        outputs = [h for h in root.handlers if not isinstance(h, logsetup.runlog.CaptureHandler)]
        assert [type(h) for h in outputs] == [logsetup.PreparedQueueHandler]  # nothing writes on the caller
        worker = threading.Thread(
            target=lambda: logging.getLogger("scheduler.test").info("run %d of %s started", 7, "x.job")
        )
        worker.start()
        worker.join()
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("scheduler.test").exception("failed")
        logsetup.stop_writer()
        text = path.read_text()
        assert "INFO [Thread-" in text and "scheduler.test: run 7 of x.job started" in text
        assert "ValueError: boom" in text
    finally:
        logsetup.stop_writer()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_renewing_many_runs_renews_exactly_the_ids_given_not_an_unknown_one_between_them(
    store: Store,
) -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    won = store.runs.claim(
        [Claim(f"renew.j{i}", now) for i in range(7)], OWNER, now, now + timedelta(seconds=10)
    )
    ids = sorted(c.run_id for c in won)
    unknown = ids[3]  # e.g. a claim whose commit went through while its reply was lost
    later = now + timedelta(minutes=5)
    assert store.runs.renew(OWNER.instance, later, set(ids) - {unknown}) == 6
    leases = {r.id: r.lease_expires_at for r in store.runs.history(limit=100)}
    assert leases[unknown] == now + timedelta(seconds=10)
    assert all(leases[i] == later for i in ids if i != unknown)


# -- claiming ahead: a burst's claims are written before its instant ---------------------------


AHEAD = timedelta(seconds=2)


def run_first_slot(h: Harness, job: str, func: object = noop) -> datetime:
    """Load a 30 s job, run its first slot (on time) and return its next slot."""
    h.load(every(job, 30, func))
    h.clock.advance(timedelta(seconds=1))
    (first,) = h.dispatcher.tick(h.clock.now())
    assert h.runner.wait_idle(WAIT)
    return first.scheduled_for + timedelta(seconds=30)


def bare_runner(clock: FakeClock, threads: int) -> tuple[Runner, list[Outcome]]:
    """A runner whose outcomes land in the list returned with it (no recorder, no database)."""
    outcomes: list[Outcome] = []
    return Runner(clock, threads, 64 * 1024, outcomes.append, lambda c, a: None, threading.Event()), outcomes


def test_a_slot_is_claimed_ahead_of_its_instant_and_its_run_begins_at_the_instant(
    db_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    began: list[datetime] = []
    h = Harness(db_url, tmp_path, clock, claim_ahead=AHEAD)
    try:
        slot = run_first_slot(h, "ahead.job", lambda: began.append(clock.now()))
        clock.advance(slot - AHEAD - timedelta(seconds=0.5) - clock.now())
        assert h.dispatcher.tick(clock.now()) == []  # not yet within claim_ahead
        clock.advance(timedelta(seconds=1))
        (ahead,) = h.dispatcher.tick(clock.now())
        assert (ahead.scheduled_for, ahead.status) == (slot, "running")
        row = h.store.runs.get(ahead.run_id)
        assert row.status == "running" and row.started_at is None  # written before the instant
        assert h.runner.waiting_ids() == {ahead.run_id} and h.runner.next_release() == slot
        assert h.dispatcher.next_due() == slot  # the loop wakes at the instant to release it
        assert len(began) == 1
        clock.advance(slot - clock.now())
        assert h.dispatcher.tick(clock.now()) == []  # released: nothing new to claim
        assert h.runner.wait_idle(WAIT)
        assert began[-1] == slot
        wait_until(lambda: h.statuses() == {"succeeded": 2}, WAIT)
        assert h.store.runs.get(ahead.run_id).started_at == slot
    finally:
        h.close()


def test_a_slot_ahead_of_a_job_executing_elsewhere_is_left_and_decided_at_its_instant(
    db_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    h = Harness(db_url, tmp_path, clock, claim_ahead=AHEAD)
    try:
        slot = run_first_slot(h, "busy.job")
        assert h.recorder.flush_once()
        clock.advance(slot - timedelta(seconds=5) - clock.now())
        (peer,) = h.store.runs.claim([Claim("busy.job", clock.now())], PEER, clock.now(), slot + AHEAD)
        h.store.runs.mark_started([(peer.run_id, peer.fence, clock.now())])  # executing on the peer
        clock.advance(timedelta(seconds=3.5))  # within claim_ahead of the slot
        assert h.dispatcher.tick(clock.now()) == []  # busy: not claimed ahead, and not skipped yet
        assert [r.scheduled_for for r in h.store.runs.history(job="busy.job", limit=5)] == [
            peer.scheduled_for,
            slot - timedelta(seconds=30),  # the first slot
        ]
        clock.advance(slot - clock.now())
        (won,) = h.dispatcher.tick(clock.now())  # decided at the instant: still busy
        assert (won.scheduled_for, won.status) == (slot, "skipped")
    finally:
        h.close()


def _claimed(run_id: int, spec: JobSpec, slot: datetime) -> Claimed:
    return Claimed(run_id, spec.name, slot, "running", 1, "schedule")


@pytest.mark.parametrize("overlap", ["skip", "queue"])
def test_a_run_released_while_its_job_executes_here_is_skipped_or_waits_for_that_run(
    clock: FakeClock, overlap: str
) -> None:
    release = threading.Event()
    lock, executing, most = threading.Lock(), [0], [0]

    def body() -> None:
        with lock:
            executing[0] += 1
            most[0] = max(most[0], executing[0])
        release.wait(WAIT)
        with lock:
            executing[0] -= 1

    runner, outcomes = bare_runner(clock, 2)
    try:
        spec = every("lap.job", 30, body, overlap=overlap)
        now = clock.now()
        runner.start_many([(_claimed(1, spec, now), spec)])
        wait_until(lambda: runner.executing() == 1)
        runner.start_many(
            [(_claimed(2, spec, now + timedelta(seconds=30)), spec)], hold=True
        )  # claimed ahead
        assert runner.waiting_ids() == {2}
        clock.advance(timedelta(seconds=30))
        runner.release(clock.now())
        if overlap == "skip":
            wait_until(lambda: [o.run_id for o in outcomes] == [2])
            assert (outcomes[0].status, outcomes[0].started_at) == ("skipped", None)
        else:
            assert outcomes == [] and runner.waiting_ids() == {2}  # waits for run 1 to end
        release.set()
        assert runner.wait_idle(WAIT)
        statuses = {o.run_id: o.status for o in outcomes}
        assert statuses == {1: "succeeded", 2: "skipped" if overlap == "skip" else "succeeded"}
        assert most[0] == 1  # never two runs of the job at once
    finally:
        release.set()
        runner.shutdown()


def test_a_run_still_waiting_for_a_thread_is_overtaken_when_the_next_slot_is_released(
    clock: FakeClock,
) -> None:
    release = threading.Event()
    runner, outcomes = bare_runner(clock, 1)
    try:
        hold, quick = every("hold.job", 60, lambda: release.wait(WAIT)), every("quick.job", 10)
        now = clock.now()
        runner.start_many([(_claimed(1, hold, now), hold)])
        wait_until(lambda: runner.executing() == 1)  # the only thread
        runner.start_many([(_claimed(2, quick, now), quick)])  # waits for the thread
        runner.start_many(
            [(_claimed(3, quick, now + timedelta(seconds=10)), quick)], hold=True
        )  # claimed ahead
        clock.advance(timedelta(seconds=10))
        assert runner.release(clock.now()) == 1
        (missed,) = outcomes
        assert (missed.run_id, missed.status) == (2, "missed")
        assert (missed.error_message or "").startswith("overloaded: slot ")
        release.set()
        assert runner.wait_idle(WAIT)
        assert {o.run_id: o.status for o in outcomes} == {1: "succeeded", 2: "missed", 3: "succeeded"}
    finally:
        release.set()
        runner.shutdown()


def test_runs_claimed_ahead_are_handed_back_at_shutdown_and_a_peer_takes_them(
    db_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    h = Harness(db_url, tmp_path, clock, claim_ahead=AHEAD)
    try:
        slot = run_first_slot(h, "later.job")
        clock.advance(slot - timedelta(seconds=1) - clock.now())
        (ahead,) = h.dispatcher.tick(clock.now())
        assert h.runner.backlogged()
        h.runner.cancel_all()  # shutting down before the slot
        assert h.runner.wait_idle(WAIT) and not h.runner.backlogged()
        assert h.recorder.flush_once()
        row = h.store.runs.get(ahead.run_id)
        assert (row.status, row.started_at, row.finished_at) == ("queued", None, None)
        clock.advance(timedelta(seconds=1))  # the slot
        (taken,) = h.store.runs.take_queued(["later.job"], PEER, clock.now(), clock.now() + AHEAD)
        assert (taken.run_id, taken.status, taken.attempt) == (ahead.run_id, "running", 1)
        assert h.runner.release(clock.now()) == 0  # nothing of it is left here
    finally:
        h.close()


def test_the_runner_is_backlogged_while_runs_wait_for_a_thread_or_a_burst_is_a_moment_away(
    clock: FakeClock,
) -> None:
    release = threading.Event()
    runner, outcomes = bare_runner(clock, 1)
    try:
        hold, ahead = every("hold.job", 60, lambda: release.wait(WAIT)), every("ahead.job", 30)
        runner.start_many([(_claimed(1, ahead, clock.now() + timedelta(seconds=5)), ahead)], hold=True)
        assert not runner.backlogged()  # a burst 5 s away: the watchdog may still make its pass
        clock.advance(timedelta(seconds=4.5))
        assert runner.backlogged()
        clock.advance(timedelta(seconds=0.5))
        runner.release(clock.now())
        assert runner.wait_idle(WAIT) and not runner.backlogged()
        runner.start_many([(_claimed(2, hold, clock.now()), hold)])
        wait_until(lambda: runner.executing() == 1)
        assert not runner.backlogged()  # executing is not waiting
        runner.start_many([(_claimed(3, ahead, clock.now()), ahead)])
        assert runner.backlogged()  # waits for the only thread
    finally:
        release.set()
        runner.wait_idle(WAIT)
        runner.shutdown()
