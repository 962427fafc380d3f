"""The crash-loop guard on a fake clock: backoff after N failures in a row, auto-pause at the limit
(in the database, in the audit trail, as a watchdog incident), and `resume` starting over."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from scheduler.alerting.findings import Snapshot, detect_jobs
from scheduler.clock import FakeClock
from scheduler.engine.guard import AUTO_PAUSE_ACTOR, CrashLoopGuard, pauser
from scheduler.engine.runner import Runner
from scheduler.jobs.registry import make_spec
from scheduler.store import Claim, Outcome, Owner, Store
from scheduler.store.runfacts import Activity

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OWNER = Owner("guard-test", "test-host", 777)


def test_backoff_doubles_from_the_threshold_up_to_the_cap(clock: FakeClock) -> None:
    guard = CrashLoopGuard(clock, after=5, max_backoff=timedelta(minutes=2))
    assert [guard.backoff(n).total_seconds() for n in range(3, 11)] == [0, 0, 10, 20, 40, 80, 120, 120]


def test_a_job_is_held_after_n_failures_in_a_row_until_its_backoff_has_passed(clock: FakeClock) -> None:
    guard = CrashLoopGuard(clock, after=3, pause_after=0)
    for _ in range(2):
        guard.observe("j", "failed")
    assert guard.held_until("j") is None
    guard.observe("j", "timed_out")
    assert guard.held_until("j") == clock.now() + timedelta(seconds=10)
    clock.advance(timedelta(seconds=9))
    assert guard.held_until("j") is not None
    clock.advance(timedelta(seconds=1))
    assert guard.held_until("j") is None
    guard.observe("j", "failed")
    assert guard.held_until("j") == clock.now() + timedelta(seconds=20)


def test_a_success_ends_the_streak_and_other_ends_leave_it(clock: FakeClock) -> None:
    guard = CrashLoopGuard(clock, after=2, pause_after=0)
    guard.observe("j", "failed")
    guard.observe("j", "skipped")
    guard.observe("j", "abandoned")
    assert guard.failures("j") == 1
    guard.observe("j", "succeeded")
    guard.observe("j", "failed")
    assert guard.failures("j") == 1 and guard.held_until("j") is None


def test_the_job_is_paused_once_at_the_limit_and_its_count_starts_over(clock: FakeClock) -> None:
    paused: list[tuple[str, int, str]] = []
    guard = CrashLoopGuard(clock, after=2, pause_after=4, on_pause=lambda *a: paused.append(a))
    for n in range(4):
        guard.observe("j", "failed", f"boom {n}")
    assert paused == [("j", 4, "boom 3")]
    assert guard.failures("j") == 0 and guard.held_until("j") is None


def test_the_guard_off_never_holds(clock: FakeClock) -> None:
    guard = CrashLoopGuard(clock, after=0)
    for _ in range(50):
        guard.observe("j", "failed")
    assert guard.held_until("j") is None


class Harness:
    def __init__(self, tmp_path: Path, clock: FakeClock) -> None:
        self.clock = clock
        self.store = Store(f"sqlite:///{tmp_path / 'guard.db'}")
        self.store.upgrade()
        self.stop = threading.Event()
        self.guard = CrashLoopGuard(clock, after=2, pause_after=4, on_pause=pauser(self.store, clock))
        self.runner = Runner(clock, 1, 4096, self._record, lambda c, a: None, self.stop, guard=self.guard)

        def fail() -> None:
            raise RuntimeError("always broken")

        self.spec = make_spec(fail, name="broken.job", interval=timedelta(minutes=1))
        self.store.jobs.sync([self.spec], NOW)

    def _record(self, outcome: Outcome) -> None:
        assert self.store.runs.finish([outcome]) == []

    def run_slot(self, slot: datetime) -> str:
        far = slot + timedelta(minutes=5)
        (claimed,) = self.store.runs.claim([Claim(self.spec.name, slot)], OWNER, slot, far)
        self.runner.start(claimed, self.spec)
        assert self.runner.wait_idle(10)
        return self.store.runs.get(claimed.run_id).status

    def close(self) -> None:
        self.stop.set()
        self.runner.shutdown()
        self.store.dispose()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, FakeClock(NOW))
    yield h
    h.close()


def test_slots_due_during_the_backoff_are_recorded_skipped_with_the_reason(harness: Harness) -> None:
    slot = NOW
    assert [harness.run_slot(slot := slot + timedelta(minutes=1)) for _ in range(2)] == ["failed"] * 2
    harness.clock.advance(timedelta(seconds=5))
    assert harness.run_slot(slot + timedelta(minutes=1)) == "skipped"
    skipped = harness.store.runs.history("broken.job", limit=1)[0]
    assert skipped.error_type == "CrashLoop"
    assert "2 failures in a row; next run not before" in (skipped.error_message or "")
    harness.clock.advance(timedelta(seconds=5))
    assert harness.run_slot(slot + timedelta(minutes=2)) == "failed"


def test_auto_pause_is_in_the_database_the_audit_trail_and_a_watchdog_incident(harness: Harness) -> None:
    slot = NOW
    for _ in range(4):
        harness.clock.advance(timedelta(hours=1))  # past any backoff
        slot += timedelta(minutes=1)
        assert harness.run_slot(slot) == "failed"
    row = harness.store.jobs.get("broken.job")
    assert row.paused and row.changed_by == AUTO_PAUSE_ACTOR
    audit = harness.store.jobs.audit_log("broken.job")
    assert [(a.actor, a.action) for a in audit][:2] == [
        (AUTO_PAUSE_ACTOR, "auto-pause"),
        (AUTO_PAUSE_ACTOR, "pause"),
    ]
    assert audit[0].details["failures"] == 4
    findings = detect_jobs(Snapshot(harness.clock.now(), [row], Activity(), []))
    (paused,) = [f for f in findings if f.kind == "paused"]
    assert paused.action == "scheduler resume broken.job"
    resumed = harness.store.jobs.set_paused("broken.job", False, "ops", harness.clock.now())
    assert not [
        f for f in detect_jobs(Snapshot(harness.clock.now(), [resumed], Activity(), [])) if f.kind == "paused"
    ]
