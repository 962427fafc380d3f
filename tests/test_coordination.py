"""Coordinator.step (and claim spreading) on a FakeClock against the real store (SQLite and PostgreSQL).

Several coordinators share one database, as instances do; time moves only
with `clock.advance`, so lease expiry, settle time and take-over are exact.
An outage is a real unreachable database (a store pointed at a closed port).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from scheduler.clock import FakeClock
from scheduler.cluster.coordination import Coordinator
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.engine.dispatcher import DEFER_LIMIT, Dispatcher
from scheduler.engine.runner import Runner
from scheduler.errors import AlreadyRunningError
from scheduler.jobs.registry import make_spec
from scheduler.store import Claim, Outcome, Owner, Store
from scheduler.store.cluster import LEADER

from tests.support.polling import wait_until

HEARTBEAT = timedelta(seconds=1)
TTL = timedelta(seconds=3)
SETTLE = timedelta(seconds=2)
SETTINGS = Settings(heartbeat=HEARTBEAT, lease_ttl=TTL, settle_time=SETTLE)


def _noop() -> None:
    pass


@pytest.fixture
def down_store() -> Iterator[Store]:
    """A store whose database does not answer (nothing listens on port 1)."""
    s = Store("postgresql://postgres@127.0.0.1:1/none")
    yield s
    s.dispose()


def make(
    store: Store, clock: FakeClock, name: str, active: set[int] | None = None, jobs: tuple[str, ...] = ()
) -> Coordinator:
    owner = Owner(f"id-{name}", name, 4_000_000 + len(name))
    c = Coordinator(store, clock, SETTINGS, owner, Health(clock), None if active is None else lambda: active)
    c.register(list(jobs), [], clock.now())
    return c


def sync_job(store: Store, now: datetime, name: str, retries: int = 0) -> None:
    spec = make_spec(_noop, name=name, interval=timedelta(minutes=1), retries=retries)
    store.jobs.sync([spec], now)


def claim_for(store: Store, coordinator: Coordinator, job: str, now: datetime) -> int:
    won = store.runs.claim([Claim(job, now)], coordinator.owner, now, now + TTL)
    assert len(won) == 1
    return won[0].run_id


def test_first_instance_leads_and_a_peer_follows(store: Store, clock: FakeClock) -> None:
    a, b = make(store, clock, "a"), make(store, clock, "b")
    assert a.step(clock.now()).startswith("leader")
    assert b.step(clock.now()) == "follower: another instance leads"
    assert a.is_leader and not b.is_leader
    lease = store.cluster.lease(LEADER)
    assert lease is not None and lease.holder == "id-a"


def test_leader_that_stops_renewing_is_replaced_after_the_ttl_with_a_new_term(
    store: Store, clock: FakeClock
) -> None:
    a, b = make(store, clock, "a"), make(store, clock, "b")
    a.step(clock.now())
    first_term = a.term
    clock.advance(TTL - timedelta(milliseconds=1))
    assert b.step(clock.now()).startswith("follower"), "took over before the lease expired"
    clock.advance(timedelta(milliseconds=2))
    assert b.step(clock.now()).startswith("leader")
    assert b.term == (first_term or 0) + 1
    assert not a.holds_lease(), "the old leader still believes its lease after the TTL"
    assert a.step(clock.now()).startswith("follower")
    assert not a.is_leader


def test_step_down_hands_the_lead_over_at_once(store: Store, clock: FakeClock) -> None:
    a, b = make(store, clock, "a"), make(store, clock, "b")
    a.step(clock.now())
    a.step_down()
    assert a.step(clock.now()).startswith("draining")
    assert b.step(clock.now()).startswith("leader"), "peer had to wait for the TTL"
    assert not a.is_leader


def test_draining_instance_keeps_its_runs_leases(store: Store, clock: FakeClock) -> None:
    sync_job(store, clock.now(), "j.long")
    a, b = make(store, clock, "a"), make(store, clock, "b")
    a.step(clock.now())
    run_id = claim_for(store, a, "j.long", clock.now())
    a.step_down()
    for _ in range(6):  # two TTLs of draining, one heartbeat at a time
        clock.advance(HEARTBEAT)
        a.step(clock.now())
        b.step(clock.now())
    assert b.is_leader
    assert store.runs.get(run_id).status == "running", "a draining instance's run was reaped"


def test_run_of_a_lost_instance_is_reaped_after_its_lease(store: Store, clock: FakeClock) -> None:
    sync_job(store, clock.now(), "j.once")
    a, b = make(store, clock, "a"), make(store, clock, "b")
    b.step(clock.now())
    a.step(clock.now())
    run_id = claim_for(store, a, "j.once", clock.now())
    clock.advance(TTL - HEARTBEAT)
    b.step(clock.now())
    assert store.runs.get(run_id).status == "running"
    clock.advance(HEARTBEAT + timedelta(milliseconds=1))
    assert "reaped 1 runs (0 requeued)" in b.step(clock.now())
    row = store.runs.get(run_id)
    assert (row.status, row.fence, row.error_type) == ("abandoned", 2, "Abandoned")
    dead = [i for i in store.cluster.recent() if i.id == "id-a"]
    assert dead[0].status == "dead"


def test_reaped_run_with_retries_left_is_requeued(store: Store, clock: FakeClock) -> None:
    sync_job(store, clock.now(), "j.retry", retries=1)
    sync_job(store, clock.now(), "j.noretry", retries=0)
    a, b = make(store, clock, "a"), make(store, clock, "b")
    b.step(clock.now())
    a.step(clock.now())
    retried = claim_for(store, a, "j.retry", clock.now())
    dropped = claim_for(store, a, "j.noretry", clock.now())
    clock.advance(TTL + HEARTBEAT)
    assert "reaped 2 runs (1 requeued)" in b.step(clock.now())
    assert store.runs.get(retried).status == "queued"
    assert store.runs.get(dropped).status == "abandoned"
    taken = store.runs.take_queued(["j.retry"], b.owner, clock.now(), clock.now() + TTL)
    assert [(t.run_id, t.status, t.fence) for t in taken] == [(retried, "running", 3)]
    assert store.runs.get(retried).attempt == 2


def test_late_result_of_a_reaped_run_does_not_overwrite_the_record(store: Store, clock: FakeClock) -> None:
    sync_job(store, clock.now(), "j.fenced", retries=1)
    a, b = make(store, clock, "a"), make(store, clock, "b")
    b.step(clock.now())
    run_id = claim_for(store, a, "j.fenced", clock.now())
    clock.advance(TTL + HEARTBEAT)
    b.step(clock.now())
    store.runs.take_queued(["j.fenced"], b.owner, clock.now(), clock.now() + TTL)
    late = Outcome(run_id=run_id, fence=1, status="failed", finished_at=clock.now(), error_type="Late")
    assert store.runs.finish([late]) == [run_id]
    row = store.runs.get(run_id)
    assert (row.status, row.owner, row.fence) == ("running", "id-b", 3)


def test_settle_time_after_an_outage_blocks_reaping(
    store: Store, down_store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    sync_job(store, clock.now(), "j.cut")
    a, b = make(store, clock, "a"), make(store, clock, "b")
    b.step(clock.now())
    run_id = claim_for(store, a, "j.cut", clock.now())
    b.store = down_store
    with caplog.at_level(logging.WARNING):
        for _ in range(5):  # an outage longer than the TTL, seen by b
            clock.advance(HEARTBEAT)
            assert b.step(clock.now()).startswith("database unavailable")
    assert not b.is_leader and not b.health.database_up
    assert [r.message for r in caplog.records].count("stopped leading: cannot reach the database") == 1
    b.store = store
    assert "settling" in b.step(clock.now())
    assert b.health.database_up
    assert store.runs.get(run_id).status == "running", "reaped before peers could renew"
    clock.advance(SETTLE - timedelta(milliseconds=1))
    assert "settling" in b.step(clock.now())
    clock.advance(timedelta(milliseconds=2))
    assert "reaped 1 runs" in b.step(clock.now())


def test_peer_that_renews_during_the_settle_time_keeps_its_run(
    store: Store, down_store: Store, clock: FakeClock
) -> None:
    sync_job(store, clock.now(), "j.kept")
    active: set[int] = set()
    a, b = make(store, clock, "a", active), make(store, clock, "b")
    b.step(clock.now())
    active.add(claim_for(store, a, "j.kept", clock.now()))
    a.store = b.store = down_store
    for _ in range(5):
        clock.advance(HEARTBEAT)
        a.step(clock.now())
        b.step(clock.now())
    a.store = b.store = store
    b.step(clock.now())  # back first: settles
    clock.advance(HEARTBEAT)
    assert a.step(clock.now()).startswith("follower")  # renews, and rejoins if declared dead
    clock.advance(SETTLE)
    assert "reaped" not in b.step(clock.now())
    assert store.runs.get(next(iter(active))).status == "running"


def test_only_runs_the_process_still_has_are_renewed(store: Store, clock: FakeClock) -> None:
    """A claim whose commit reply was lost leaves a row this process never ran: it must expire."""
    sync_job(store, clock.now(), "j.mine")
    sync_job(store, clock.now(), "j.orphan")
    active: set[int] = set()
    a, b = make(store, clock, "a", active), make(store, clock, "b")
    b.step(clock.now())
    active.add(claim_for(store, a, "j.mine", clock.now()))
    orphan = claim_for(store, a, "j.orphan", clock.now())
    for _ in range(5):
        clock.advance(HEARTBEAT)
        a.step(clock.now())
        b.step(clock.now())
    assert store.runs.get(next(iter(active))).status == "running"
    assert store.runs.get(orphan).status == "abandoned"


def test_deposed_leader_reap_is_fenced_by_its_term(store: Store, clock: FakeClock) -> None:
    sync_job(store, clock.now(), "j.fence")
    a, b, c = make(store, clock, "a"), make(store, clock, "b"), make(store, clock, "c")
    a.step(clock.now())
    run_id = claim_for(store, c, "j.fence", clock.now())
    clock.advance(TTL + HEARTBEAT)
    b.step(clock.now())  # b takes the lead (and reaps c's run)
    assert b.is_leader and store.runs.get(run_id).status == "abandoned"
    run2 = claim_for(store, c, "j.fence", clock.now() + timedelta(minutes=1))
    clock.advance(TTL + HEARTBEAT)
    b.store.cluster.acquire(LEADER, b.owner.instance, clock.now(), clock.now() + TTL)
    # a still believes it leads under its old term: its fenced writes change nothing.
    assert a.is_leader and a.term is not None
    assert a._reap(clock.now()) == ""
    assert store.runs.get(run2).status == "running"


def test_unknown_job_is_reported_once_and_orphans_are_left_to_the_watchdog(
    store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    sync_job(store, clock.now(), "j.here")
    sync_job(store, clock.now(), "j.elsewhere")
    sync_job(store, clock.now(), "j.nowhere")
    make(store, clock, "other", jobs=("j.here", "j.elsewhere"))
    me = make(store, clock, "me", jobs=("j.here",))
    with caplog.at_level(logging.WARNING):
        me.step(clock.now())
        clock.advance(HEARTBEAT)
        me.step(clock.now())
    messages = [r.getMessage() for r in caplog.records]
    unknown = "job j.elsewhere is not loaded on this instance (its code is not here); left to: other"
    assert messages.count(unknown) == 1
    # A job no live instance loads is one "broken" incident (alerting/findings.py), not also a log line here.
    assert not [m for m in messages if "j.nowhere" in m and "no live instance" in m]


def test_sqlite_refuses_a_second_live_instance_but_not_a_dead_ones_row(
    sqlite_url: str, clock: FakeClock
) -> None:
    store = Store(sqlite_url)
    store.upgrade()
    try:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
        dead = Coordinator(store, clock, SETTINGS, Owner("id-dead", "host", int(gone.stdout)), Health(clock))
        dead.register([], [], clock.now())
        me = Coordinator(store, clock, SETTINGS, Owner("id-me", "host", os.getpid()), Health(clock))
        me.check_single_node(clock.now())  # the crashed process's row is no obstacle
        assert [i.status for i in store.cluster.recent() if i.id == "id-dead"] == ["dead"]
        me.register([], [], clock.now())
        other = Coordinator(store, clock, SETTINGS, Owner("id-other", "host", os.getpid() + 1), Health(clock))
        with pytest.raises(AlreadyRunningError, match="SQLite is single-node"):
            other.check_single_node(clock.now())
    finally:
        store.dispose()


# -- spreading claims over the cluster ----------------------------------------------------


def _dispatcher(
    store: Store, clock: FakeClock, name: str, capacity: int, stop: threading.Event
) -> Dispatcher:
    runner = Runner(
        clock,
        capacity,
        64 * 1024,
        lambda outcome: store.runs.finish([outcome]) and None,
        lambda claimed, attempt: None,
        stop,
        began=lambda claimed, at: store.runs.mark_started([(claimed.run_id, claimed.fence, at)]),
    )
    owner = Owner(f"id-{name}", name, 4_100_000 + capacity)
    return Dispatcher(store, clock, runner, owner, TTL, 100, 1.0, Health(clock), capacity)


def test_saturated_instance_leaves_due_slots_to_a_peer(sqlite_url: str, clock: FakeClock) -> None:
    """An instance whose every thread is executing leaves the next slots to a peer; its runs
    still waiting for a thread are overtaken (recorded missed, "overloaded: ...")."""
    release, stop = threading.Event(), threading.Event()
    executing = threading.Semaphore(0)

    def block(ctx: object) -> None:
        executing.release()
        release.wait(10)

    specs = {
        s.name: s for s in (make_spec(block, name=f"j.{i}", interval=timedelta(minutes=1)) for i in range(5))
    }
    store = Store(sqlite_url)
    store.upgrade()
    busy, idle = _dispatcher(store, clock, "busy", 2, stop), _dispatcher(store, clock, "idle", 8, stop)
    try:
        rows = store.jobs.sync(specs.values(), clock.now())
        for d in (busy, idle):
            d.load(specs, rows, {})
        clock.advance(timedelta(seconds=1))  # the first slot of every job is due
        assert len(busy.tick(clock.now())) == 5, "a free thread: the whole burst is claimed and queued"
        assert executing.acquire(timeout=10) and executing.acquire(timeout=10)
        assert busy.runner.executing() == 2 and len(busy.runner.waiting_ids()) == 3
        slot = clock.advance(timedelta(minutes=1))  # the second slot
        assert busy.tick(clock.now()) == [], "every thread executing: the slots are left to the peer"
        won = idle.tick(clock.now())
        # two jobs are executing on `busy`: skipped; three only wait there: they run on the peer
        assert sorted(c.status for c in won) == ["running"] * 3 + ["skipped"] * 2
        clock.advance(DEFER_LIMIT)
        assert busy.tick(clock.now()) == []  # past the limit it claims, and loses to the peer
        firsts = [r for r in store.runs.history() if r.scheduled_for < slot]
        wait_until(lambda: sum(store.runs.get(r.id).status == "missed" for r in firsts) == 3)
        missed = [store.runs.get(r.id) for r in firsts if store.runs.get(r.id).status == "missed"]
        assert all((m.error_message or "").startswith("overloaded: ") for m in missed)
        assert busy.next_due() == slot + timedelta(minutes=1)
    finally:
        release.set()
        stop.set()
        for d in (busy, idle):
            d.runner.wait_idle(10)
            d.runner.shutdown()
        store.dispose()
