"""A real daemon with runs that crash, hang and fork: it keeps scheduling, a crash under thread
isolation is named at the next start, and nothing a run started outlives `stop`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scheduler.store import Store

from tests.support.sandbox import Sandbox, process_gone, wait_until

pytestmark = pytest.mark.system

CRASHING = """
import ctypes
from datetime import timedelta
from scheduler import job


@job(interval=timedelta(seconds=1), isolation="process")
def segfault():
    ctypes.string_at(0)


@job(interval=timedelta(seconds=1))
def steady():
    pass
"""

LEFTOVERS = """
import os, signal, time
from datetime import timedelta
from scheduler import job

PIDS = PIDS_FILE


def note(pid):
    with open(PIDS, "a") as fh:
        fh.write(f"{pid}\\n")


@job(interval=timedelta(hours=1))
def forks_in_a_thread():
    pid = os.fork()
    if pid == 0:
        note(os.getpid())
        return  # the child returns into a copy of the daemon


@job(interval=timedelta(hours=1), isolation="process")
def hangs_in_a_process():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note(os.getpid())
    while True:
        time.sleep(0.1)
"""

EXITS = """
import os, time
from datetime import timedelta
from scheduler import job


@job(interval=timedelta(seconds=1))
def exits():
    time.sleep(0.2)
    os._exit(3)
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    yield box
    box.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_segfaulting_process_runs_are_recorded_failed_while_the_daemon_keeps_scheduling(
    sandbox: Sandbox,
) -> None:
    sandbox.write_job("crashing", CRASHING)
    daemon = sandbox.daemon()
    wait_until(lambda: len([r for r in sandbox.runs("crashing.segfault") if r.status == "failed"]) >= 3, 30)
    wait_until(lambda: len([r for r in sandbox.runs("crashing.steady") if r.status == "succeeded"]) >= 3, 30)
    failed = [r for r in sandbox.runs("crashing.segfault") if r.status == "failed"]
    assert {r.error_message for r in failed} == {"killed by signal 11 (SIGSEGV)"}
    assert daemon.alive()
    assert "Traceback" not in daemon.output()


def test_stop_leaves_no_process_a_run_started_and_titles_show_the_state(sandbox: Sandbox) -> None:
    pids_file = sandbox.root / "pids"
    sandbox.write_job("leftovers", LEFTOVERS.replace("PIDS_FILE", repr(str(pids_file))))
    started = sandbox.control("start", grace_period="2s")
    assert started.returncode == 0, started.stdout + started.stderr

    def noted() -> list[int]:
        pids = [int(p) for p in pids_file.read_text().split()] if pids_file.exists() else []
        return pids if len(pids) == 2 else []

    pids = wait_until(noted, 20)
    daemon_pid = sandbox.pidfile_pid()
    assert daemon_pid is not None
    title = wait_until(lambda: "busy]" in _cmdline(daemon_pid) and _cmdline(daemon_pid), 10)
    assert "scheduler/control.py start [scheduler " in title
    assert any("[scheduler run leftovers.hangs_in_a_process #" in _cmdline(pid) for pid in pids)
    stopped = sandbox.control("stop", grace_period="2s")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_until(lambda: all(process_gone(pid) for pid in pids), 10)
    hung = [r for r in sandbox.runs("leftovers.hangs_in_a_process")]
    assert [r.status for r in hung] == ["abandoned"]


def test_check_shows_which_jobs_run_in_a_process(sandbox: Sandbox) -> None:
    sandbox.write_job("crashing", CRASHING)
    checked = sandbox.control("check")
    assert "ok    crashing.segfault: every 1s (process isolation)" in checked.stdout
    steady = next(line for line in checked.stdout.splitlines() if line.startswith("ok    crashing.steady:"))
    assert "(process isolation)" not in steady
    everything = sandbox.control("check", default_isolation="process")
    assert "ok    crashing.steady: every 1s (process isolation)" in everything.stdout


def test_os_exit_in_a_thread_run_kills_the_daemon_and_the_next_start_names_the_run(sandbox: Sandbox) -> None:
    sandbox.write_job("exits", EXITS)
    first = sandbox.daemon()
    assert first.wait_exit(30) == 3
    (in_flight,) = [r for r in sandbox.runs("exits.exits") if r.status == "running"]
    sandbox.write_job("exits", EXITS.replace("os._exit(3)", "pass"))
    second = sandbox.daemon()
    second.wait_for_output(
        f"the previous daemon (pid {first.pid}) died while run {in_flight.id} of exits.exits"
    )
    assert sandbox.runs("exits.exits")[0].status == "abandoned"
    # The watchdog reports the crash: one `crashed` incident for the host (no Slack here: recorded, logged).
    second.wait_for_output("incident opened: crashed ", timeout=60)
    store = Store(sandbox.db_url)
    try:
        [crashed] = store.incidents.open_incidents(("crashed",))
    finally:
        store.dispose()
    assert f"(pid {first.pid}) died while run {in_flight.id} of exits.exits was in flight" in crashed.summary
