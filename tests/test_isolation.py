"""Process isolation with real child processes: crashes, signals, limits and timeouts of a run
end up on its run row, and the daemon process (this test process) carries on."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from scheduler.clock import SystemClock
from scheduler.engine.isolation import ProcessIsolation
from scheduler.engine.runner import Runner
from scheduler.errors import JobDefinitionError
from scheduler.jobs.discovery import load_jobs
from scheduler.jobs.registry import JobSpec, job
from scheduler.store import Claim, Outcome, Owner, RunRow, Store

from tests.support.polling import wait_until

OWNER = Owner("iso-test", "test-host", os.getpid())
SLOT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

JOBS = """
import ctypes, os, signal, sys, time
from datetime import timedelta
from scheduler import job


@job(interval=timedelta(hours=1), isolation="process")
def hello(ctx):
    print("printed in the child", os.getpid())
    ctx.log.info("logged in the child, attempt %d", ctx.attempt)


@job(interval=timedelta(hours=1), isolation="process")
def exits():
    print("about to _exit")
    os._exit(3)


@job(interval=timedelta(hours=1), isolation="process")
def segfault():
    ctypes.string_at(0)


@job(interval=timedelta(hours=1), memory_limit="200M")
def memory_bomb():
    hog = []
    while True:
        hog.append(bytearray(50 * 1024 * 1024))


@job(interval=timedelta(hours=1), isolation="process", timeout=timedelta(seconds=1))
def ignores_sigterm(ctx):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.path.join(os.path.dirname(__file__), "pids"), "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    while True:
        time.sleep(0.05)


@job(interval=timedelta(hours=1), isolation="process")
def raises():
    raise ValueError("bad input in the child")


@job(interval=timedelta(hours=1), isolation="process", retries=2, retry_delay=timedelta(0))
def exits_nonzero(ctx):
    print("attempt", ctx.attempt)
    sys.exit(1)


@job(interval=timedelta(hours=1), retries=2, retry_delay=timedelta(0))
def thread_exits_nonzero(ctx):
    if ctx.attempt < 3:
        sys.exit(1)


@job(interval=timedelta(hours=1), isolation="process")
def leaves_a_child():
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    with open(os.path.join(os.path.dirname(__file__), "pids"), "a") as fh:
        fh.write(f"{pid}\\n")


@job(interval=timedelta(hours=1), isolation="process")
def cwd(ctx):
    os.chdir("/")
    ctx.log.info("title %s", open(f"/proc/{os.getpid()}/cmdline").read().replace("\\0", " "))
"""


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        folder = tmp_path / "jobs"
        folder.mkdir()
        (folder / "crashy.py").write_text(JOBS)
        self.specs = load_jobs(folder).specs
        self.store = Store(f"sqlite:///{tmp_path / 'iso.db'}")
        self.store.upgrade()
        self.stop = threading.Event()
        self.isolation = ProcessIsolation(folder)
        self.runner = Runner(
            SystemClock(), 4, 64 * 1024, self._record, lambda c, a: None, self.stop,
            isolation=self.isolation,
        )  # fmt: skip

    def _record(self, outcome: Outcome) -> None:
        assert self.store.runs.finish([outcome]) == []

    def run(self, name: str, slot: datetime = SLOT) -> RunRow:
        spec = self.specs[f"crashy.{name}"]
        far = datetime.now(UTC) + timedelta(minutes=5)
        (claimed,) = self.store.runs.claim([Claim(spec.name, slot)], OWNER, datetime.now(UTC), far)
        self.runner.start(claimed, spec)
        wait_until(lambda: self.store.runs.get(claimed.run_id).status != "running", timeout=30)
        return self.store.runs.get(claimed.run_id)

    def close(self) -> None:
        self.stop.set()
        self.runner.cancel_all()
        self.runner.wait_idle(10)
        self.runner.shutdown()
        self.store.dispose()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_process_run_output_and_logging_are_captured_from_the_child(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # the child logs at the daemon's level
    row = harness.run("hello")
    assert row.status == "succeeded", row.error_message
    assert "printed in the child" in (row.log or "")
    assert "logged in the child, attempt 1" in (row.log or "")
    assert f"printed in the child {os.getpid()}" not in (row.log or "")


def test_os_exit_in_a_process_run_is_a_recorded_failure_and_the_daemon_carries_on(harness: Harness) -> None:
    row = harness.run("exits")
    assert row.status == "failed"
    assert row.error_message == "the run's process exited with status 3 without finishing (os._exit?)"
    assert "about to _exit" in (row.log or "")
    assert harness.run("hello", SLOT + timedelta(hours=1)).status == "succeeded"


def test_segfault_in_a_process_run_is_a_recorded_failure_naming_the_signal(harness: Harness) -> None:
    row = harness.run("segfault")
    assert row.status == "failed"
    assert row.error_type == "ChildKilled"
    assert row.error_message == f"killed by signal {signal.SIGSEGV} (SIGSEGV)"
    assert harness.run("hello", SLOT + timedelta(hours=1)).status == "succeeded"


def test_memory_bomb_under_a_memory_limit_fails_the_run_not_the_daemon(harness: Harness) -> None:
    row = harness.run("memory_bomb")
    assert row.status == "failed"
    assert row.error_type == "MemoryError"
    assert "memory_limit=209715200" in (row.error_message or "")
    assert harness.run("hello", SLOT + timedelta(hours=1)).status == "succeeded"


def test_child_ignoring_sigterm_is_killed_at_timeout_and_its_job_runs_the_next_slot(
    harness: Harness, tmp_path: Path
) -> None:
    row = harness.run("ignores_sigterm")
    assert row.status == "timed_out"
    assert "over its timeout of 1s" in (row.error_message or "")
    (pid,) = [int(p) for p in (tmp_path / "jobs" / "pids").read_text().split()]
    wait_until(lambda: not _alive(pid))
    assert harness.run("ignores_sigterm", SLOT + timedelta(hours=1)).status == "timed_out"


def test_exception_in_a_child_is_recorded_with_the_childs_traceback(harness: Harness) -> None:
    row = harness.run("raises")
    assert (row.status, row.error_type) == ("failed", "ValueError")
    assert row.error_message == "bad input in the child"
    assert "crashy.py" in (row.error_traceback or "")
    assert "runner.py" not in (row.error_traceback or "")  # not a traceback of the daemon


def test_sys_exit_nonzero_in_a_process_run_is_retried_like_an_exception(harness: Harness) -> None:
    row = harness.run("exits_nonzero")
    assert (row.status, row.attempt, row.error_type) == ("failed", 3, "SystemExit")
    assert "attempt 1" in (row.log or "") and "attempt 3" in (row.log or "")


def test_sys_exit_nonzero_in_a_thread_run_is_retried_like_an_exception(harness: Harness) -> None:
    row = harness.run("thread_exits_nonzero")
    assert (row.status, row.attempt) == ("succeeded", 3)


def test_what_a_process_run_forks_and_leaves_behind_is_killed_when_the_run_ends(
    harness: Harness, tmp_path: Path
) -> None:
    assert harness.run("leaves_a_child").status == "succeeded"
    (pid,) = [int(p) for p in (tmp_path / "jobs" / "pids").read_text().split()]
    wait_until(lambda: not _alive(pid))


def test_chdir_in_a_process_run_leaves_the_daemon_cwd_and_the_child_shows_its_job(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = os.getcwd()
    row = harness.run("cwd")
    assert row.status == "succeeded"
    assert os.getcwd() == before
    assert "[scheduler run crashy.cwd #" in (row.log or "")


def test_isolation_setting_and_limits_are_validated_at_declaration() -> None:
    def body() -> None: ...

    with pytest.raises(JobDefinitionError, match="isolation must be 'thread' or 'process'"):
        job(interval=timedelta(seconds=1), isolation="fork")(body)  # type: ignore[arg-type]
    with pytest.raises(JobDefinitionError, match="need isolation='process'"):
        job(interval=timedelta(seconds=1), isolation="thread", memory_limit="1G")(body)
    with pytest.raises(JobDefinitionError, match="memory_limit must be bytes"):
        job(interval=timedelta(seconds=1), memory_limit="lots")(body)


def test_a_limit_or_the_default_setting_makes_a_job_run_in_a_process() -> None:
    plain = JobSpec(name="a", func=print, module="m", interval=timedelta(seconds=1))
    assert not plain.isolated("thread")
    assert plain.isolated("process")
    limited = JobSpec(name="b", func=print, module="m", interval=timedelta(seconds=1), memory_limit=2**30)
    assert limited.isolated("thread")
    pinned = JobSpec(name="c", func=print, module="m", interval=timedelta(seconds=1), isolation="thread")
    assert not pinned.isolated("process")
