"""The runner: retries, timeouts, errors and log capture, recorded on real run rows."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scheduler.clock import FakeClock
from scheduler.engine import runlog
from scheduler.engine.context import JobContext
from scheduler.engine.runner import Runner
from scheduler.jobs.registry import JobSpec, make_spec
from scheduler.store import Claim, Claimed, Outcome, Owner, RunRow, Store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OWNER = Owner("runner-test", "test-host", 777)
WAIT = 10.0


class Harness:
    def __init__(self, tmp_path: Path, clock: FakeClock, max_log_bytes: int = 64 * 1024) -> None:
        self.clock = clock
        self.store = Store(f"sqlite:///{tmp_path / 'runner.db'}")
        self.store.upgrade()
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.runner = Runner(clock, 2, max_log_bytes, self._record, self._set_attempt, self.stop)

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        assert self.store.runs.finish([outcome]) == []

    def _set_attempt(self, claimed: Claimed, attempt: int) -> None:
        self.store.runs.set_attempt(claimed.run_id, claimed.fence, attempt)

    def start(self, spec: JobSpec, slot: datetime = NOW) -> Claimed:
        (claimed,) = self.store.runs.claim([Claim(spec.name, slot)], OWNER, NOW, NOW + timedelta(minutes=5))
        self.runner.start(claimed, spec)
        return claimed

    def run(self, spec: JobSpec) -> RunRow:
        claimed = self.start(spec)
        assert self.runner.wait_idle(WAIT)
        return self.store.runs.get(claimed.run_id)

    def close(self) -> None:
        self.stop.set()
        self.runner.cancel_all()
        self.runner.wait_idle(WAIT)
        self.runner.shutdown()
        self.store.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def harness(tmp_path: Path, clock: FakeClock) -> Iterator[Harness]:
    h = Harness(tmp_path, clock)
    yield h
    h.close()


@pytest.fixture
def capture(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[[], None]]:
    """Install run-log capture (root handler, routed stdout/stderr) for this test only.

    Called from the test body: pytest swaps sys.stdout for its own at the start of each phase.
    """
    caplog.set_level(logging.INFO)
    before = list(logging.getLogger().handlers)

    def install() -> None:
        monkeypatch.setattr(runlog, "_installed", False)
        monkeypatch.setattr(sys, "stdout", sys.stdout)
        monkeypatch.setattr(sys, "stderr", sys.stderr)
        runlog.install()

    yield install
    for handler in logging.getLogger().handlers:
        if handler not in before:
            logging.getLogger().removeHandler(handler)


def job(name: str, func: Callable[..., Any], **options: Any) -> JobSpec:
    return make_spec(func, name=name, interval=timedelta(seconds=60), **options)


# -- success and context -------------------------------------------------------------------


def test_a_successful_run_is_recorded_with_its_context(harness: Harness) -> None:
    seen: list[JobContext] = []
    row = harness.run(job("ok.job", seen.append))
    (ctx,) = seen
    assert (ctx.job, ctx.scheduled_for, ctx.run_id, ctx.attempt) == ("ok.job", NOW, row.id, 1)
    assert ctx.stopping is False
    assert (row.status, row.attempt, row.error_type) == ("succeeded", 1, None)
    assert row.started_at == NOW and row.finished_at == NOW
    assert len(harness.runner.drain_ended()) == 1 and harness.runner.active() == []


def test_a_job_without_a_parameter_is_called_without_one(harness: Harness) -> None:
    calls: list[str] = []
    row = harness.run(job("plain.job", lambda: calls.append("called")))
    assert calls == ["called"] and row.status == "succeeded"


def test_timeloop_style_args_are_passed(harness: Harness) -> None:
    received: list[tuple[Any, ...]] = []
    spec = make_spec(
        lambda a, b, c=None: received.append((a, b, c)),
        name="args.job",
        interval=timedelta(seconds=5),
        args=(1, 2),
        kwargs={"c": 3},
    )
    assert harness.run(spec).status == "succeeded"
    assert received == [(1, 2, 3)]


# -- failures and retries -------------------------------------------------------------------


def _fail_in_depth(row_id: int) -> None:
    raise ValueError(f"bad row {row_id}")


def test_exception_type_message_and_traceback_are_stored(harness: Harness) -> None:
    row = harness.run(job("boom.job", lambda: _fail_in_depth(42)))
    assert (row.status, row.error_type, row.error_message) == ("failed", "ValueError", "bad row 42")
    assert row.error_traceback is not None
    assert "_fail_in_depth" in row.error_traceback
    assert row.error_traceback.rstrip().endswith("ValueError: bad row 42")


def test_retries_until_success_record_the_attempt_and_log_earlier_failures(harness: Harness) -> None:
    attempts_in_db: list[int] = []

    def flaky(ctx: JobContext) -> None:
        attempts_in_db.append(harness.store.runs.get(ctx.run_id).attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"upstream down on attempt {ctx.attempt}")

    start_mono = harness.clock.monotonic()
    row = harness.run(job("flaky.job", flaky, retries=3, retry_delay=timedelta(seconds=2)))

    assert (row.status, row.attempt, row.error_type) == ("succeeded", 3, None)
    assert attempts_in_db == [1, 2, 3]  # each attempt is visible on the row while it runs
    assert row.log is not None
    assert "attempt 1 failed: ConnectionError: upstream down on attempt 1" in row.log
    assert "attempt 2 failed: ConnectionError: upstream down on attempt 2" in row.log
    assert harness.clock.monotonic() - start_mono == 4.0  # two retry delays, on the injected clock


def test_exhausted_retries_store_the_last_error_and_earlier_ones_in_the_log(harness: Harness) -> None:
    def always(ctx: JobContext) -> None:
        raise RuntimeError(f"failure number {ctx.attempt}")

    row = harness.run(job("doomed.job", always, retries=2, retry_delay=timedelta(seconds=1)))
    assert (row.status, row.attempt) == ("failed", 3)
    assert (row.error_type, row.error_message) == ("RuntimeError", "failure number 3")
    assert row.log is not None
    assert "attempt 1 failed: RuntimeError: failure number 1" in row.log
    assert "attempt 2 failed: RuntimeError: failure number 2" in row.log
    assert "attempt 3 failed" not in row.log


def test_a_run_retried_after_its_owner_died_continues_the_attempt_count(harness: Harness) -> None:
    seen: list[int] = []

    def always(ctx: JobContext) -> None:
        seen.append(ctx.attempt)
        raise RuntimeError(f"failure number {ctx.attempt}")

    spec = job("orphan.job", always, retries=2, retry_delay=timedelta(seconds=1))
    first = harness.store.runs.claim([Claim(spec.name, NOW)], OWNER, NOW, NOW + timedelta(seconds=1))
    harness.store.runs.reap(NOW + timedelta(minutes=1), reason="owner died")  # attempt 1 was lost
    assert harness.store.runs.requeue([first[0].run_id]) == 1
    (taken,) = harness.store.runs.take_queued([spec.name], OWNER, NOW, NOW + timedelta(minutes=5))
    harness.runner.start(taken, spec)
    assert harness.runner.wait_idle(WAIT)

    row = harness.store.runs.get(taken.run_id)
    assert seen == [2, 3]  # one attempt left of the three, after the lost one
    assert (row.status, row.attempt, row.error_message) == ("failed", 3, "failure number 3")


def test_no_retry_once_the_daemon_is_stopping(harness: Harness) -> None:
    def fails_then_stops(ctx: JobContext) -> None:
        harness.stop.set()
        raise OSError("disk full")

    row = harness.run(job("stopping.job", fails_then_stops, retries=5))
    assert (row.status, row.attempt, row.error_message) == ("failed", 1, "disk full")


def test_a_job_calling_sys_exit_is_recorded_failed_and_the_pool_survives(harness: Harness) -> None:
    row = harness.run(job("exit.job", lambda: sys.exit(4)))
    assert (row.status, row.error_type) == ("failed", "SystemExit")
    assert harness.run(job("after.job", lambda: None)).status == "succeeded"


# -- timeouts -------------------------------------------------------------------------------


def test_a_cooperative_job_past_its_timeout_is_told_to_stop_and_recorded_timed_out(harness: Harness) -> None:
    started = threading.Event()
    saw_stopping: list[bool] = []

    def cooperative(ctx: JobContext) -> None:
        started.set()
        ctx.cancelled.wait(WAIT)
        saw_stopping.append(ctx.stopping)

    claimed = harness.start(job("slow.job", cooperative, timeout=timedelta(seconds=5)))
    assert started.wait(WAIT)
    assert harness.runner.check_deadlines() == harness.clock.monotonic() + 5  # the next deadline
    harness.clock.advance(timedelta(seconds=6))
    assert harness.runner.check_deadlines() is None
    assert harness.runner.wait_idle(WAIT)

    row = harness.store.runs.get(claimed.run_id)
    assert saw_stopping == [True]
    assert (row.status, row.error_type) == ("timed_out", "Timeout")
    assert row.error_message == "ran 6.0s, over its timeout of 5s"


def test_a_job_that_raises_after_its_timeout_is_timed_out_with_the_error(harness: Harness) -> None:
    started = threading.Event()

    def raises_when_stopped(ctx: JobContext) -> None:
        started.set()
        ctx.cancelled.wait(WAIT)
        raise InterruptedError("gave up half way")

    claimed = harness.start(job("raise.job", raises_when_stopped, timeout=timedelta(seconds=2), retries=3))
    assert started.wait(WAIT)
    harness.clock.advance(timedelta(seconds=3))
    harness.runner.check_deadlines()
    assert harness.runner.wait_idle(WAIT)
    row = harness.store.runs.get(claimed.run_id)
    assert (row.status, row.attempt, row.error_type) == ("timed_out", 1, "InterruptedError")  # no retry
    assert row.error_message == "ran 3.0s, over its timeout of 2s; then raised: gave up half way"


def test_a_job_that_ignores_its_timeout_is_still_recorded_timed_out(harness: Harness) -> None:
    release = threading.Event()
    started = threading.Event()

    def stubborn() -> None:
        started.set()
        release.wait(WAIT)

    claimed = harness.start(job("stubborn.job", stubborn, timeout=timedelta(seconds=1)))
    assert started.wait(WAIT)
    harness.clock.advance(timedelta(seconds=90))
    harness.runner.check_deadlines()
    assert harness.runner.active()  # still running: cancellation is cooperative
    release.set()
    assert harness.runner.wait_idle(WAIT)
    assert harness.store.runs.get(claimed.run_id).status == "timed_out"


def test_no_retry_starts_after_the_timeout_has_passed(harness: Harness) -> None:
    calls: list[int] = []

    def fails(ctx: JobContext) -> None:
        calls.append(ctx.attempt)
        raise TimeoutError(f"remote slow on attempt {ctx.attempt}")

    spec = job(
        "late.retry", fails, timeout=timedelta(seconds=5), retries=3, retry_delay=timedelta(seconds=10)
    )
    row = harness.run(spec)
    assert calls == [1]
    assert (row.status, row.attempt, row.error_type) == ("timed_out", 1, "TimeoutError")
    assert row.error_message == "ran 10.0s, over its timeout of 5s; then raised: remote slow on attempt 1"


def test_a_run_within_its_timeout_succeeds(harness: Harness) -> None:
    row = harness.run(job("quick.job", lambda ctx: harness.clock.advance(4), timeout=timedelta(seconds=5)))
    assert row.status == "succeeded"


# -- jitter ------------------------------------------------------------------------------------


def test_jitter_delays_the_start_within_its_bound(harness: Harness) -> None:
    row = harness.run(job("jitter.job", lambda: None, jitter=timedelta(seconds=30)))
    assert row.status == "succeeded"
    assert row.started_at is not None
    assert NOW <= row.started_at <= NOW + timedelta(seconds=30)


def test_shutdown_during_jitter_abandons_the_run_before_it_begins(harness: Harness) -> None:
    calls: list[int] = []
    harness.stop.set()
    row = harness.run(job("never.job", lambda: calls.append(1), jitter=timedelta(seconds=30)))
    assert calls == []
    assert (row.status, row.error_type, row.error_message) == (
        "abandoned",
        "Abandoned",
        "shut down before the run began",
    )


# -- log capture ------------------------------------------------------------------------------


def test_ctx_log_and_print_output_land_in_the_runs_log(harness: Harness, capture: Callable[[], None]) -> None:
    capture()

    def chatty(ctx: JobContext) -> None:
        ctx.log.info("processing %d items", 3)
        print("printed to stdout")
        print("printed to stderr", file=sys.stderr)
        logging.getLogger("some.library").warning("library warning")

    row = harness.run(job("chatty.job", chatty))
    assert row.log is not None
    assert "INFO scheduler.job.chatty.job: processing 3 items" in row.log
    assert "printed to stdout\n" in row.log
    assert "printed to stderr\n" in row.log
    assert "WARNING some.library: library warning" in row.log
    assert row.log_truncated is False


def test_logs_of_concurrent_runs_do_not_mix(harness: Harness, capture: Callable[[], None]) -> None:
    capture()
    barrier = threading.Barrier(2)

    def talker(ctx: JobContext) -> None:
        barrier.wait(WAIT)
        for i in range(50):
            print(f"{ctx.job} line {i}")

    first = harness.start(job("left.job", talker))
    second = harness.start(job("right.job", talker))
    assert harness.runner.wait_idle(WAIT)
    left = harness.store.runs.get(first.run_id).log or ""
    right = harness.store.runs.get(second.run_id).log or ""
    assert "left.job line 49" in left and "right.job" not in left
    assert "right.job line 49" in right and "left.job" not in right


def test_log_is_bounded_by_max_log_bytes_and_marked_truncated(
    tmp_path: Path, clock: FakeClock, capture: Callable[[], None]
) -> None:
    capture()
    harness = Harness(tmp_path, clock, max_log_bytes=1024)
    try:

        def flood() -> None:
            for i in range(500):
                print(f"line {i:04d} " + "x" * 40)

        row = harness.run(job("flood.job", flood))
        assert row.status == "succeeded"
        assert row.log is not None
        assert len(row.log.encode()) <= 1024
        assert row.log_truncated is True
        assert "line 0000" in row.log and "line 0499" not in row.log
    finally:
        harness.close()


def test_the_log_of_a_failed_run_keeps_what_it_printed_before_failing(
    harness: Harness, capture: Callable[[], None]
) -> None:
    capture()

    def half_way() -> None:
        print("step 1 done")
        raise KeyError("step 2")

    row = harness.run(job("half.job", half_way))
    assert row.status == "failed"
    assert row.log is not None and "step 1 done" in row.log
