"""The dispatcher on a FakeClock, a real SQLite store and a real Runner.

Each test drives time by hand: `clock.advance(...)`, then `dispatcher.tick(clock.now())`,
then waits for the pool with `runner.wait_idle(...)`.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.engine.context import JobContext
from scheduler.engine.dispatcher import Dispatcher
from scheduler.engine.runner import Runner
from scheduler.errors import JobDefinitionError
from scheduler.jobs.registry import JobSpec, make_spec
from scheduler.operator import queries
from scheduler.store import Claimed, Outcome, Owner, RunRow, Store

START = datetime(2026, 3, 1, 11, 59, 59, tzinfo=UTC)
ANCHOR = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)  # sync anchors at the next whole second
OWNER = Owner("dispatch-test", "test-host", 4242)
IDLE_TIMEOUT = 10.0


class Calls:
    """What the job functions saw, in order, from the pool threads."""

    def __init__(self) -> None:
        self.slots: list[datetime] = []
        self._lock = threading.Lock()

    def add(self, ctx: JobContext) -> None:
        with self._lock:
            self.slots.append(ctx.scheduled_for)


class Harness:
    def __init__(self, tmp_path: Path, clock: FakeClock, catchup_limit: int = 100) -> None:
        self.clock = clock
        self.store = Store(f"sqlite:///{tmp_path / 'dispatch.db'}")
        self.store.upgrade()
        self.stop = threading.Event()
        self.runner = Runner(
            clock, 4, 64 * 1024, self._record, self._set_attempt, self.stop, began=self._began
        )
        self.health = Health(clock)
        self.dispatcher = Dispatcher(
            self.store,
            clock,
            self.runner,
            OWNER,
            lease_ttl=timedelta(seconds=60),
            catchup_limit=catchup_limit,
            poll_interval=1.0,
            health=self.health,
        )
        self.lost: list[int] = []

    def _record(self, outcome: Outcome) -> None:
        self.lost += self.store.runs.finish([outcome])

    def _began(self, claimed: Claimed, at: datetime) -> None:
        # written at once here; the daemon's recorder writes it if the run is still going 50 ms on
        self.store.runs.mark_started([(claimed.run_id, claimed.fence, at)])

    def _set_attempt(self, claimed: Claimed, attempt: int) -> None:
        self.store.runs.set_attempt(claimed.run_id, claimed.fence, attempt)

    def load(self, *specs: JobSpec) -> None:
        rows = self.store.jobs.sync(specs, self.clock.now())
        self.dispatcher.load({s.name: s for s in specs}, rows, self.store.runs.last_slots())

    def tick(self) -> list[Claimed]:
        won = self.dispatcher.tick(self.clock.now())
        self.idle()
        return won

    def advance_and_tick(self, delta: timedelta) -> list[Claimed]:
        self.clock.advance(delta)
        return self.tick()

    def take_queued(self) -> list[Claimed]:
        taken = self.dispatcher.take_queued(self.clock.now())
        self.idle()
        return taken

    def idle(self) -> None:
        assert self.runner.wait_idle(IDLE_TIMEOUT), "runs did not finish in time"

    def runs(self, job: str) -> list[RunRow]:
        return sorted(self.store.runs.history(job=job, limit=10_000), key=lambda r: r.scheduled_for)

    def close(self) -> None:
        self.stop.set()
        self.runner.cancel_all()
        self.runner.wait_idle(IDLE_TIMEOUT)
        self.runner.shutdown()
        self.store.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def harness(tmp_path: Path, clock: FakeClock) -> Iterator[Harness]:
    h = Harness(tmp_path, clock)
    yield h
    h.close()


def interval_job(name: str, seconds: float, func: Callable[..., Any], **options: Any) -> JobSpec:
    return make_spec(func, name=name, interval=timedelta(seconds=seconds), **options)


def at(seconds: float) -> datetime:
    return ANCHOR + timedelta(seconds=seconds)


def statuses(rows: list[RunRow]) -> list[tuple[datetime, str]]:
    return [(r.scheduled_for, r.status) for r in rows]


# -- the grid ---------------------------------------------------------------------------


def test_interval_slots_are_recorded_exactly_on_the_grid(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("grid.job", 10, calls.add))
    assert harness.dispatcher.next_due() == ANCHOR

    # Ticks land irregularly (a busy loop, a slow database): slots stay on the grid.
    for step in (1, 3, 9.5, 7, 10, 0.5, 12, 4, 8, 6):
        harness.advance_and_tick(timedelta(seconds=step))

    expected = [at(s) for s in range(0, 61, 10)]
    rows = harness.runs("grid.job")
    assert [r.scheduled_for for r in rows] == expected
    assert all(r.status == "succeeded" and r.trigger == "schedule" for r in rows)
    assert calls.slots == expected
    assert harness.dispatcher.next_due() == at(70)


def test_a_slot_is_not_claimed_before_it_is_due(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("early.job", 10, calls.add))
    harness.advance_and_tick(timedelta(seconds=1))  # 12:00:00, the anchor
    assert harness.advance_and_tick(timedelta(seconds=9, microseconds=999_999)) == []
    assert [c.scheduled_for for c in harness.advance_and_tick(timedelta(microseconds=1))] == [at(10)]


def test_a_run_records_its_start_on_the_clock_and_its_lateness(harness: Harness) -> None:
    harness.load(interval_job("late.job", 60, lambda: None))
    harness.advance_and_tick(timedelta(seconds=4))  # three seconds after the slot
    (row,) = harness.runs("late.job")
    assert row.scheduled_for == ANCHOR
    assert row.started_at == at(3) and row.lateness_seconds == 3.0
    assert (row.owner, row.host, row.pid) == (OWNER.instance, OWNER.host, OWNER.pid)


def test_cursor_resumes_after_the_last_recorded_slot_on_restart(tmp_path: Path, clock: FakeClock) -> None:
    calls = Calls()
    spec = interval_job("restart.job", 10, calls.add)
    first = Harness(tmp_path, clock)
    first.load(spec)
    for _ in range(3):
        first.advance_and_tick(timedelta(seconds=10))
    first.close()

    clock.advance(timedelta(seconds=5))
    second = Harness(tmp_path, clock)  # same database: a restarted daemon
    try:
        second.load(spec)
        assert second.dispatcher.next_due() == at(30)
        second.advance_and_tick(timedelta(seconds=3))
        assert [r.scheduled_for for r in second.runs("restart.job")] == [at(0), at(10), at(20), at(30)]
        assert calls.slots == [at(0), at(10), at(20), at(30)]
    finally:
        second.close()


# -- catch-up after downtime ------------------------------------------------------------


def _downtime(harness: Harness, job: JobSpec, gap: timedelta) -> list[RunRow]:
    harness.load(job)
    harness.advance_and_tick(timedelta(seconds=1))  # the anchor slot runs on time
    harness.advance_and_tick(gap)  # the daemon was away: many slots passed
    return harness.runs(job.name)


def test_catchup_latest_runs_the_latest_slot_once_and_records_the_rest_missed(harness: Harness) -> None:
    calls = Calls()
    rows = _downtime(harness, interval_job("latest.job", 60, calls.add), timedelta(minutes=10, seconds=45))

    assert statuses(rows) == [(ANCHOR, "succeeded")] + [(at(60 * m), "missed") for m in range(1, 10)] + [
        (at(600), "succeeded")
    ]
    assert rows[-1].trigger == "catchup"
    assert all(r.trigger == "catchup" for r in rows[1:-1])
    assert calls.slots == [ANCHOR, at(600)]


def test_catchup_when_now_is_on_a_slot_runs_it_as_scheduled(harness: Harness) -> None:
    calls = Calls()
    rows = _downtime(harness, interval_job("ontime.job", 60, calls.add), timedelta(minutes=5))
    assert [r.status for r in rows] == ["succeeded", "missed", "missed", "missed", "missed", "succeeded"]
    assert rows[-1].trigger == "schedule"


def test_catchup_all_runs_every_missed_slot_in_order(harness: Harness) -> None:
    calls = Calls()
    rows = _downtime(
        harness, interval_job("all.job", 60, calls.add, catchup="all"), timedelta(minutes=5, seconds=40)
    )
    assert statuses(rows) == [(ANCHOR, "succeeded"), (at(60), "succeeded")] + [
        (at(60 * m), "queued") for m in range(2, 6)
    ]

    # The queued slots are taken one after another, each when the previous has ended.
    for _ in range(4):
        assert len(harness.take_queued()) == 1
    assert harness.take_queued() == []

    rows = harness.runs("all.job")
    assert [r.status for r in rows] == ["succeeded"] * 6
    assert all(r.trigger == "catchup" for r in rows[1:])
    assert calls.slots == [ANCHOR] + [at(60 * m) for m in range(1, 6)]


def test_catchup_skip_records_missed_slots_and_runs_nothing(harness: Harness) -> None:
    calls = Calls()
    spec = interval_job("skip.job", 60, calls.add, catchup="skip")
    rows = _downtime(harness, spec, timedelta(minutes=5, seconds=40))
    assert statuses(rows) == [(ANCHOR, "succeeded")] + [(at(60 * m), "missed") for m in range(1, 6)]
    assert calls.slots == [ANCHOR]
    # And the schedule simply continues.
    harness.advance_and_tick(timedelta(seconds=20))
    assert calls.slots == [ANCHOR, at(360)]


def test_catchup_limit_bounds_the_missed_rows(tmp_path: Path, clock: FakeClock) -> None:
    harness = Harness(tmp_path, clock, catchup_limit=5)
    try:
        calls = Calls()
        rows = _downtime(harness, interval_job("bounded.job", 60, calls.add), timedelta(hours=2, seconds=45))
        assert statuses(rows) == [(ANCHOR, "succeeded")] + [
            (at(60 * m), "missed") for m in range(116, 120)
        ] + [(at(7200), "succeeded")]
        assert calls.slots == [ANCHOR, at(7200)]
    finally:
        harness.close()


# -- overlap -----------------------------------------------------------------------------


class Blocker:
    """A job that waits until released, so a test controls when a run ends."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.slots: list[datetime] = []

    def __call__(self, ctx: JobContext) -> None:
        self.slots.append(ctx.scheduled_for)
        self.started.release()
        assert self.release.wait(IDLE_TIMEOUT), "test forgot to release the job"


def test_overlapping_run_is_recorded_as_skipped(harness: Harness) -> None:
    blocker = Blocker()
    harness.load(interval_job("slow.job", 10, blocker))
    harness.clock.advance(timedelta(seconds=1))
    harness.dispatcher.tick(harness.clock.now())
    assert blocker.started.acquire(timeout=IDLE_TIMEOUT)

    harness.clock.advance(timedelta(seconds=10))
    (won,) = harness.dispatcher.tick(harness.clock.now())
    assert (won.scheduled_for, won.status) == (at(10), "skipped")

    blocker.release.set()
    harness.idle()
    harness.advance_and_tick(timedelta(seconds=10))
    assert statuses(harness.runs("slow.job")) == [
        (ANCHOR, "succeeded"),
        (at(10), "skipped"),
        (at(20), "succeeded"),
    ]
    assert blocker.slots == [ANCHOR, at(20)]


def test_overlap_queue_runs_the_waiting_slot_once_right_after(harness: Harness) -> None:
    blocker = Blocker()
    harness.load(interval_job("queue.job", 10, blocker, overlap="queue"))
    harness.clock.advance(timedelta(seconds=1))
    harness.dispatcher.tick(harness.clock.now())
    assert blocker.started.acquire(timeout=IDLE_TIMEOUT)

    for _ in range(2):  # two slots pass while it runs: one waits, the other is skipped
        harness.clock.advance(timedelta(seconds=10))
        harness.dispatcher.tick(harness.clock.now())
    assert statuses(harness.runs("queue.job")) == [
        (ANCHOR, "running"),
        (at(10), "queued"),
        (at(20), "skipped"),
    ]

    # Still busy: the queued slot waits.
    assert harness.dispatcher.take_queued(harness.clock.now()) == []

    blocker.release.set()
    harness.idle()
    harness.clock.advance(timedelta(seconds=2))
    harness.dispatcher.poll(harness.clock.now())  # what the loop does when a run ends
    harness.idle()
    assert harness.take_queued() == []

    rows = harness.runs("queue.job")
    assert statuses(rows) == [(ANCHOR, "succeeded"), (at(10), "succeeded"), (at(20), "skipped")]
    assert rows[1].started_at == at(22)
    assert blocker.slots == [ANCHOR, at(10)]


# -- operator overrides ----------------------------------------------------------------


def test_paused_job_lets_slots_pass_unrecorded_and_resumes_without_catchup(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("pause.job", 10, calls.add))
    harness.advance_and_tick(timedelta(seconds=1))

    harness.store.jobs.set_paused("pause.job", True, "ops", harness.clock.now())
    harness.dispatcher.poll(harness.clock.now())
    for _ in range(6):
        harness.advance_and_tick(timedelta(seconds=10))
    assert [r.scheduled_for for r in harness.runs("pause.job")] == [ANCHOR]

    harness.clock.advance(timedelta(seconds=5))  # 12:01:05
    harness.store.jobs.set_paused("pause.job", False, "ops", harness.clock.now())
    harness.dispatcher.poll(harness.clock.now())
    assert harness.tick() == []  # nothing caught up for the pause
    harness.advance_and_tick(timedelta(seconds=5))

    assert statuses(harness.runs("pause.job")) == [(ANCHOR, "succeeded"), (at(70), "succeeded")]
    assert calls.slots == [ANCHOR, at(70)]


def test_slots_that_fell_due_while_paused_do_not_run_at_resume(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("resume.job", 10, calls.add))
    harness.advance_and_tick(timedelta(seconds=1))
    harness.store.jobs.set_paused("resume.job", True, "ops", harness.clock.now())
    harness.dispatcher.poll(harness.clock.now())

    harness.clock.advance(timedelta(seconds=25))  # 12:00:10 and 12:00:20 fall due, no tick yet
    harness.store.jobs.set_paused("resume.job", False, "ops", harness.clock.now())
    harness.dispatcher.poll(harness.clock.now())  # the loop polls before it ticks
    assert harness.tick() == []
    harness.advance_and_tick(timedelta(seconds=5))

    assert statuses(harness.runs("resume.job")) == [(ANCHOR, "succeeded"), (at(30), "succeeded")]


def test_a_paused_job_ignores_manual_triggers_until_resumed(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("manual.job", 3600, calls.add))
    harness.store.jobs.set_paused("manual.job", True, "ops", harness.clock.now())
    harness.dispatcher.poll(harness.clock.now())
    run_id = harness.store.runs.enqueue("manual.job", harness.clock.now())
    assert harness.take_queued() == []
    harness.store.jobs.set_paused("manual.job", False, "ops", harness.clock.now())
    harness.dispatcher.poll(harness.clock.now())
    harness.idle()
    assert harness.store.runs.get(run_id).status == "succeeded"
    assert len(calls.slots) == 1


def test_schedule_override_is_applied_on_poll(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("override.job", 60, calls.add))
    harness.advance_and_tick(timedelta(seconds=1))

    harness.store.jobs.set_schedule(
        "override.job", "ops", harness.clock.now(), interval=timedelta(seconds=15)
    )
    harness.dispatcher.poll(harness.clock.now())
    assert harness.dispatcher.next_due() == at(15)
    for _ in range(4):
        harness.advance_and_tick(timedelta(seconds=15))
    assert calls.slots == [ANCHOR, at(15), at(30), at(45), at(60)]

    harness.store.jobs.set_schedule("override.job", "ops", harness.clock.now())  # back to the code's 1m
    harness.dispatcher.poll(harness.clock.now())
    assert harness.dispatcher.next_due() == at(120)


def test_shortening_an_interval_does_not_catch_up_slots_before_the_change(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("shorten.job", 3600, calls.add))
    harness.advance_and_tick(timedelta(seconds=1))
    harness.clock.advance(timedelta(minutes=31))  # 12:31:00, long after the last slot

    harness.store.jobs.set_schedule("shorten.job", "ops", harness.clock.now(), interval=timedelta(minutes=5))
    harness.dispatcher.poll(harness.clock.now())
    assert harness.tick() == []  # 12:05 ... 12:30 on the new grid were never due
    assert harness.dispatcher.next_due() == at(35 * 60)
    harness.advance_and_tick(timedelta(minutes=4))

    assert statuses(harness.runs("shorten.job")) == [(ANCHOR, "succeeded"), (at(35 * 60), "succeeded")]
    assert calls.slots == [ANCHOR, at(35 * 60)]


def test_a_manual_trigger_runs_once_on_poll(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("trigger.job", 3600, calls.add))
    harness.clock.advance(timedelta(seconds=30))
    run_id = harness.store.runs.enqueue("trigger.job", harness.clock.now())
    harness.dispatcher.poll(harness.clock.now())
    harness.idle()
    harness.dispatcher.poll(harness.clock.now())
    harness.idle()
    row = harness.store.runs.get(run_id)
    assert (row.status, row.trigger) == ("succeeded", "manual")
    assert calls.slots == [at(29)]


# -- the wall clock steps back --------------------------------------------------------


def test_wall_clock_stepped_back_reschedules_from_now_and_no_slot_runs_twice(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("ntp.job", 10, calls.add))
    harness.advance_and_tick(timedelta(seconds=1))
    for _ in range(3):
        harness.advance_and_tick(timedelta(seconds=10))
    assert harness.dispatcher.next_due() == at(40)

    harness.clock.set(at(5))  # NTP steps the clock back 25 s
    harness.dispatcher.rewind(harness.clock.now())
    assert harness.dispatcher.next_due() == at(10)  # rescheduled from now, not stalled until 12:00:40

    for _ in range(5):
        harness.advance_and_tick(timedelta(seconds=10))  # 12:00:15 ... 12:00:55

    slots = [r.scheduled_for for r in harness.runs("ntp.job")]
    assert slots == [at(s) for s in range(0, 51, 10)]
    assert calls.slots == slots  # 10, 20, 30 did not run a second time
    assert harness.lost == []


def test_dispatcher_loop_detects_a_backward_step_and_rewinds(harness: Harness) -> None:
    """Run the real loop: the FakeClock's `wait` advances time, so the loop runs at full speed."""
    calls = Calls()
    harness.load(interval_job("loop.job", 10, calls.add))
    stepped = threading.Event()
    stop = threading.Event()
    original_wait = harness.clock.wait
    due_after_step: list[datetime | None] = []

    def wait(seconds: float, event: threading.Event) -> bool:
        now = harness.clock.now()
        if stepped.is_set() and not due_after_step:
            due_after_step.append(harness.dispatcher.next_due())
        if not stepped.is_set() and now >= at(35):
            stepped.set()
            harness.clock.set(at(12))  # wall clock jumps back; monotonic does not
            return False
        if now >= at(60):
            stop.set()
            return True
        harness.runner.wait_idle(IDLE_TIMEOUT)
        return original_wait(seconds, event)

    harness.clock.wait = wait  # type: ignore[method-assign]
    loop = threading.Thread(target=harness.dispatcher.run, args=(stop,), daemon=True)
    loop.start()
    loop.join(timeout=30)
    assert not loop.is_alive()
    harness.idle()
    slots = [r.scheduled_for for r in harness.runs("loop.job")]
    assert slots == [at(s) for s in range(0, 61, 10)][: len(slots)]
    assert len(slots) >= 6
    assert calls.slots == slots
    assert due_after_step == [at(20)]  # rescheduled from the stepped-back now, not left at 12:00:40


# -- cron across DST ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "expected_local"),
    [
        pytest.param(
            datetime(2026, 10, 24, 23, 0, tzinfo=UTC), ["2026-10-25T01:30:00+01:00"], id="fall-back-runs-once"
        ),
        pytest.param(
            datetime(2026, 3, 28, 23, 0, tzinfo=UTC),
            ["2026-03-29T02:00:00+01:00"],
            id="spring-forward-at-0200",
        ),
    ],
)
def test_daily_cron_job_across_dst_through_the_dispatcher(
    tmp_path: Path, start: datetime, expected_local: list[str]
) -> None:
    from zoneinfo import ZoneInfo

    clock = FakeClock(start)
    harness = Harness(tmp_path, clock)
    try:
        calls = Calls()
        harness.load(make_spec(calls.add, name="dst.daily", cron="30 1 * * *", timezone="Europe/London"))
        for _ in range(5 * 12):  # five hours in five-minute ticks
            harness.advance_and_tick(timedelta(minutes=5))
        rows = harness.runs("dst.daily")
        local = [r.scheduled_for.astimezone(ZoneInfo("Europe/London")).isoformat() for r in rows]
        assert local == expected_local
        assert [r.status for r in rows] == ["succeeded"]
        assert len(calls.slots) == 1
    finally:
        harness.close()


def test_quarter_hour_cron_runs_in_both_folds_through_the_dispatcher(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 10, 24, 23, 50, tzinfo=UTC))
    harness = Harness(tmp_path, clock)
    try:
        harness.load(
            make_spec(lambda: None, name="dst.quarter", cron="*/15 * * * *", timezone="Europe/London")
        )
        for _ in range(26):  # to 02:00 UTC in five-minute ticks
            harness.advance_and_tick(timedelta(minutes=5))
        rows = harness.runs("dst.quarter")
        expected = [datetime(2026, 10, 25, 0, 0, tzinfo=UTC) + timedelta(minutes=15 * k) for k in range(9)]
        assert [r.scheduled_for for r in rows] == expected  # 01:00-01:45 BST, then 01:00-01:45 GMT, 02:00
        assert all(r.status == "succeeded" for r in rows)
    finally:
        harness.close()


def test_a_fall_back_slot_missed_during_downtime_is_caught_up_not_lost(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 10, 25, 0, 0, tzinfo=UTC))
    harness = Harness(tmp_path, clock)
    try:
        calls = Calls()
        harness.load(make_spec(calls.add, name="dst.caught", cron="30 1 * * *", timezone="Europe/London"))
        # Down from 00:00 to 01:10 UTC: 01:30 BST (00:30 UTC) passed; now it is 01:10 GMT.
        harness.advance_and_tick(timedelta(minutes=70))
        rows = harness.runs("dst.caught")
        assert statuses(rows) == [(datetime(2026, 10, 25, 0, 30, tzinfo=UTC), "succeeded")]
        assert rows[0].trigger == "catchup"
        # The second 01:30 (GMT) is not a second run.
        for _ in range(12):
            harness.advance_and_tick(timedelta(minutes=5))
        assert len(harness.runs("dst.caught")) == 1
    finally:
        harness.close()


# -- database trouble ---------------------------------------------------------------------


def test_claim_failure_leaves_slots_undecided_and_they_run_when_the_database_answers(
    harness: Harness, tmp_path: Path
) -> None:
    calls = Calls()
    harness.load(interval_job("flaky.job", 10, calls.add))
    harness.advance_and_tick(timedelta(seconds=1))

    # Swap in a store that cannot be reached (a closed port), as if the database went away.
    good = harness.dispatcher.store
    harness.dispatcher.store = Store("postgresql://postgres@127.0.0.1:1/none")
    try:
        assert harness.advance_and_tick(timedelta(seconds=10)) == []
        assert not harness.health.database_up
        assert harness.dispatcher.next_due() is not None
        assert harness.dispatcher.next_due() <= harness.clock.now() + timedelta(seconds=5)
    finally:
        harness.dispatcher.store.dispose()
        harness.dispatcher.store = good

    harness.advance_and_tick(timedelta(seconds=1))
    assert harness.health.database_up
    assert statuses(harness.runs("flaky.job")) == [(ANCHOR, "succeeded"), (at(10), "succeeded")]
    assert calls.slots == [ANCHOR, at(10)]


def test_slots_backing_off_are_retried_at_once_when_the_database_is_seen_again(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("backoff.job", 10, calls.add))
    harness.advance_and_tick(timedelta(seconds=1))

    good = harness.dispatcher.store
    harness.dispatcher.store = Store("postgresql://postgres@127.0.0.1:1/none")
    try:
        for _ in range(4):  # failures grow the backoff
            harness.clock.advance(timedelta(seconds=10))
            assert harness.dispatcher.tick(harness.clock.now()) == []
        retry_at = harness.dispatcher.next_due()
        assert retry_at is not None and retry_at > harness.clock.now() + timedelta(seconds=1)
    finally:
        harness.dispatcher.store.dispose()
        harness.dispatcher.store = good

    harness.health.database(True)  # a heartbeat got through: the database answers again
    assert harness.dispatcher.wake.is_set()  # the loop is woken, not left to its backoff
    won = harness.tick()  # same instant: no backoff waited
    assert [(c.job, c.status) for c in won if c.status != "missed"] == [("backoff.job", "running")]
    assert calls.slots == [ANCHOR, at(40)]
    assert {r.scheduled_for for r in harness.runs("backoff.job") if r.status == "missed"} == {
        at(10),
        at(20),
        at(30),
    }


# -- two instances on one database --------------------------------------------------------


def test_two_dispatchers_on_one_database_run_each_slot_once(tmp_path: Path, clock: FakeClock) -> None:
    calls = Calls()
    spec = interval_job("shared.job", 10, calls.add)
    first = Harness(tmp_path, clock)
    second = Harness(tmp_path, clock)
    second.dispatcher.owner = Owner("dispatch-peer", "peer-host", 4343)
    try:
        first.load(spec)
        second.load(spec)
        clock.advance(timedelta(seconds=1))
        for i in range(6):
            pair = (first, second) if i % 2 == 0 else (second, first)  # either may tick first
            won = pair[0].dispatcher.tick(clock.now()) + pair[1].dispatcher.tick(clock.now())
            assert len(won) == 1
            first.idle()
            second.idle()
            clock.advance(timedelta(seconds=10))
        rows = first.runs("shared.job")
        assert [r.scheduled_for for r in rows] == [at(s) for s in range(0, 51, 10)]
        assert calls.slots == [r.scheduled_for for r in rows]
        # The first to tick wins the slot; the other's claim finds the row and wins nothing.
        assert [r.owner for r in rows] == [OWNER.instance, "dispatch-peer"] * 3
    finally:
        second.close()
        first.close()


# -- one owner of "when does this job run next" (scheduler.jobs.effective) -----------------
# `next` and `jobs` (scheduler.operator.queries) and the dispatcher both take the effective
# schedule and the cursor from scheduler.jobs.effective; these tests compare them.

NAME = "prop.job"


def _prop_noop() -> None: ...


def shown_next(harness: Harness) -> datetime | None:
    """What `jobs` (and the API, dashboard, metrics) shows as the next run."""
    view = queries.show_job(harness.store, NAME, harness.clock.now())
    return datetime.fromisoformat(view["next_run"]["at"]) if view["next_run"] else None


def test_resume_while_no_daemon_runs_records_no_missed_rows_and_next_matches_the_claim(
    tmp_path: Path,
) -> None:
    clock = FakeClock(START)
    first = Harness(tmp_path, clock)
    first.load(interval_job(NAME, 10, _prop_noop))
    first.advance_and_tick(timedelta(seconds=1))
    first.store.jobs.set_paused(NAME, True, "ops", clock.now())
    first.close()  # the daemon stops while the job is paused

    clock.advance(timedelta(minutes=10))
    resumed_at = clock.now()
    Harness(tmp_path, clock).store.jobs.set_paused(NAME, False, "ops", resumed_at)
    clock.advance(timedelta(seconds=25))  # resumed 25 s before the daemon starts again

    second = Harness(tmp_path, clock)
    try:
        second.load(interval_job(NAME, 10, _prop_noop))
        expected = shown_next(second)
        assert expected is not None and second.dispatcher.next_due() == expected
        won = second.tick()
        assert won[0].scheduled_for == expected
        rows = second.runs(NAME)
        assert not [r for r in rows if r.status == "missed" and r.scheduled_for <= resumed_at]
        # Only the slots since the resume (12:10:10 missed, 12:10:20 run) are caught up.
        assert [r.status for r in rows] == ["succeeded", "missed", "succeeded"]
    finally:
        second.close()


def _step(harness: Harness, rng: random.Random) -> str:
    """One random operator action or passage of time; returns what it did."""
    now = harness.clock.now()
    action = rng.choice(["pause", "resume", "set", "cron", "clear", "wait", "wait", "run"])
    if action == "pause":
        harness.store.jobs.set_paused(NAME, True, "ops", now)
    elif action == "resume":
        harness.store.jobs.set_paused(NAME, False, "ops", now)
    elif action == "set":
        seconds = rng.choice([7, 15, 60, 90])
        harness.store.jobs.set_schedule(NAME, "ops", now, interval=timedelta(seconds=seconds))
    elif action == "cron":
        harness.store.jobs.set_schedule(NAME, "ops", now, cron=rng.choice(["* * * * *", "*/2 * * * *"]))
    elif action == "clear":
        harness.store.jobs.set_schedule(NAME, "ops", now)
    elif action == "wait":
        harness.clock.advance(timedelta(seconds=rng.uniform(0.1, 200)))
    return action


def _check_agreement(harness: Harness, history: list[str]) -> None:
    """The next slot shown is the one the dispatcher claims next, and no pause made `missed` rows."""
    harness.dispatcher.poll(harness.clock.now())
    harness.tick()  # the daemon decides what is due now; the rest is the future
    shown = shown_next(harness)
    state = harness.dispatcher.states[NAME]
    if shown is None:
        assert state.row.paused, history
        return
    assert state.next_at == shown, history
    listed = queries.next_slots(harness.store, NAME, harness.clock.now(), 1)["slots"][0]["at"]
    assert datetime.fromisoformat(listed) == shown, history
    harness.clock.set(shown)
    won = harness.tick()
    assert [c.scheduled_for for c in won] == [shown], history


def test_random_pause_resume_set_clear_restart_sequences_agree_on_the_next_slot(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    for case in range(12):
        clock = FakeClock(START)
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        harness = Harness(folder, clock)
        spec = interval_job(NAME, rng.choice([10, 30, 60]), _prop_noop, catchup="latest")
        harness.load(spec)
        history: list[str] = []
        paused_since: datetime | None = None
        pauses: list[tuple[datetime, datetime]] = []
        try:
            for _ in range(25):
                action = _step(harness, rng)
                history.append(action)
                row = harness.store.jobs.get(NAME)
                if row.paused and paused_since is None:
                    paused_since = clock.now()
                elif not row.paused and paused_since is not None:
                    pauses.append((paused_since, clock.now()))
                    paused_since = None
                if action == "run" or rng.random() < 0.3:
                    _check_agreement(harness, history)
                if rng.random() < 0.15:  # a restart: a new dispatcher on the same database
                    history.append("restart")
                    harness.close()
                    harness = Harness(folder, clock)
                    harness.load(spec)
            _check_agreement(harness, history)
            missed = [r.scheduled_for for r in harness.runs(NAME) if r.status == "missed"]
            for begin, end in pauses:
                assert not [m for m in missed if begin < m <= end], history
        finally:
            harness.close()


def test_first_run_interval_waits_one_interval_like_timeloop_and_next_shows_it(harness: Harness) -> None:
    calls = Calls()
    harness.load(interval_job("later.job", 10, calls.add, first_run="interval"))
    view = queries.show_job(harness.store, "later.job", harness.clock.now())
    assert view["next_run"]["at"] == at(10).isoformat()
    assert harness.dispatcher.next_due() == at(10)
    harness.advance_and_tick(timedelta(seconds=1))  # the anchor passes unrun
    harness.advance_and_tick(timedelta(seconds=10))
    assert calls.slots == [at(10)]


def test_first_run_interval_applies_to_interval_jobs_only() -> None:
    with pytest.raises(JobDefinitionError, match="first_run='interval' applies to interval jobs only"):
        make_spec(_prop_noop, name="cron.later", cron="0 6 * * *", first_run="interval")


# -- the log line of a slot not started says why: downtime is not an overlap ------------


def not_run_lines(caplog: pytest.LogCaptureFixture, job: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"job {job} slot ")]


def test_slots_missed_during_downtime_are_not_logged_as_overlaps(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.engine.dispatcher")
    harness.load(interval_job("down.job", 60, Calls().add))
    harness.advance_and_tick(timedelta(seconds=1))
    harness.advance_and_tick(timedelta(minutes=5, seconds=30))  # the disk was full, the daemon away

    lines = not_run_lines(caplog, "down.job")
    assert len(lines) == 4
    assert all(
        line.endswith("missed: passed while the scheduler was not running (outside the catch-up policy)")
        for line in lines
    ), lines
    assert not any("still going" in line for line in lines)


def test_catchup_all_slots_are_logged_as_queued_to_catch_up(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.engine.dispatcher")
    harness.load(interval_job("all.job", 60, Calls().add, catchup="all"))
    harness.advance_and_tick(timedelta(seconds=1))
    harness.advance_and_tick(timedelta(minutes=3, seconds=30))

    lines = not_run_lines(caplog, "all.job")
    assert lines and all(line.endswith("queued: queued to catch up after downtime") for line in lines), lines
