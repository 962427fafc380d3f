"""Retries: one policy for the runner and the leader, and attempt numbers written through the
recorder (behind the job, on the recorder's thread), never from the job thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scheduler.clock import SystemClock
from scheduler.engine.recorder import Recorder
from scheduler.engine.runner import Runner
from scheduler.errors import StoreUnavailable
from scheduler.jobs.registry import make_spec, retries_in, retry_allowed
from scheduler.store import Claim, Claimed, Owner, Store

from tests.support.polling import wait_until

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OWNER = Owner("attempts-test", "test-host", 777)


def test_one_retry_policy_reads_the_declaration_and_the_stored_definition() -> None:
    spec = make_spec(print, name="j", interval=timedelta(minutes=1), retries=2)
    assert retries_in(spec.definition()) == 2 and retries_in({}) == 0
    assert [retry_allowed(a, spec.retries) for a in (1, 2, 3)] == [True, True, False]


def test_retry_attempts_are_written_by_the_recorder_thread_not_the_job_thread(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'attempts.db'}")
    store.upgrade()
    writers: list[str] = []
    release = threading.Event()

    def write_attempt(run_id: int, fence: int, attempt: int) -> bool:
        writers.append(threading.current_thread().name)
        return store.runs.set_attempt(run_id, fence, attempt)

    clock = SystemClock()
    recorder = Recorder(clock, store.runs.finish, tmp_path / "spool.jsonl", write_attempt=write_attempt)
    recorder.start()
    stop = threading.Event()

    def set_attempt(claimed: Claimed, attempt: int) -> None:
        recorder.record_attempt(claimed.run_id, claimed.fence, attempt)

    runner = Runner(clock, 1, 4096, recorder.record, set_attempt, stop)
    calls = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        release.wait(30)

    spec = make_spec(flaky, name="flaky", interval=timedelta(hours=1), retries=1, retry_delay=timedelta(0))
    (claimed,) = store.runs.claim([Claim(spec.name, NOW)], OWNER, NOW, NOW + timedelta(hours=1))
    try:
        runner.start(claimed, spec)
        wait_until(lambda: store.runs.get(claimed.run_id).attempt == 2)  # while attempt 2 still runs
        assert writers == ["recorder"]
    finally:
        release.set()
        runner.wait_idle(10)
        runner.shutdown()
        recorder.close(clock.monotonic() + 5)
    assert store.runs.get(claimed.run_id).status == "succeeded"
    store.dispose()


def test_an_attempt_the_database_refused_is_written_at_the_next_flush(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'attempts.db'}")
    store.upgrade()
    down = [True]

    def write_attempt(run_id: int, fence: int, attempt: int) -> bool:
        if down[0]:
            raise StoreUnavailable("database is locked")
        return store.runs.set_attempt(run_id, fence, attempt)

    recorder = Recorder(SystemClock(), store.runs.finish, tmp_path / "s.jsonl", write_attempt=write_attempt)
    (claimed,) = store.runs.claim([Claim("j", NOW)], OWNER, NOW, NOW + timedelta(hours=1))
    recorder.record_attempt(claimed.run_id, claimed.fence, 2)
    assert recorder.flush_once() is False
    down[0] = False
    assert recorder.flush_once() is True
    assert store.runs.get(claimed.run_id).attempt == 2
    store.dispose()
