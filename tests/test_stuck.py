"""A thread run stuck well past its timeout: its stack is noted on its run row while it runs, and the
watchdog's "overrunning" finding names where the thread is stuck."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scheduler.alerting.findings import overrunning
from scheduler.clock import FakeClock
from scheduler.engine.deadlines import STUCK_MARGIN
from scheduler.engine.runner import Runner
from scheduler.jobs.registry import make_spec
from scheduler.store import Claim, Claimed, Outcome, Owner, Store

from tests.support.polling import wait_until

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OWNER = Owner("stuck-test", "test-host", 777)
release = threading.Event()


def stuck_in_here() -> None:
    release.wait(60)


def test_a_stuck_thread_run_gets_an_overrunning_finding_naming_its_stack(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    store = Store(f"sqlite:///{tmp_path / 'stuck.db'}")
    store.upgrade()
    stop = threading.Event()

    def record(outcome: Outcome) -> None:
        store.runs.finish([outcome])

    def note(claimed: object, stack: str) -> None:
        store.runs.note_stack(claimed.run_id, claimed.fence, stack)  # type: ignore[attr-defined]

    def began(claimed: Claimed, at: datetime) -> None:  # the daemon's recorder writes it 50 ms in
        store.runs.mark_started([(claimed.run_id, claimed.fence, at)])

    runner = Runner(clock, 1, 4096, record, lambda c, a: None, stop, began=began, note_stack=note)
    spec = make_spec(
        stuck_in_here, name="stuck.job", interval=timedelta(hours=1), timeout=timedelta(seconds=1)
    )
    rows = store.jobs.sync([spec], NOW)
    (claimed,) = store.runs.claim([Claim(spec.name, NOW)], OWNER, NOW, NOW + timedelta(hours=1))
    try:
        runner.start(claimed, spec)
        wait_until(lambda: all(r.thread_id for r in runner.active()))
        clock.advance(timedelta(seconds=2))
        runner.check_deadlines()
        assert store.runs.get(claimed.run_id).error_traceback is None  # past its timeout, not stuck yet
        clock.advance(timedelta(seconds=STUCK_MARGIN))
        runner.check_deadlines()
        row = store.runs.get(claimed.run_id)
        assert row.status == "running"
        assert "in stuck_in_here" in (row.error_traceback or "")
        finding = overrunning(rows[spec.name], row, clock.now())
        assert finding is not None
        assert "its thread is stuck at File" in finding.summary
        assert "in stuck_in_here: release.wait(60)" in (finding.last_error or "")
        assert finding.details["stack"] == row.error_traceback
    finally:
        release.set()
        assert runner.wait_idle(10)
        runner.shutdown()
    ended = store.runs.get(claimed.run_id)
    assert ended.status == "timed_out" and ended.error_traceback is None
    store.dispose()
