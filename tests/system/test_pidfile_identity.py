"""The pidfile names our daemon, not just a live pid: a recycled or bogus pid is never signalled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox, process_gone, wait_until

pytestmark = pytest.mark.system


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process, as if the kernel had given a dead daemon's pid to it."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def test_pidfile_naming_an_unrelated_live_process_is_stale_and_that_process_is_never_signalled(
    sandbox: Sandbox, stranger: subprocess.Popen[bytes]
) -> None:
    sandbox.pidfile.parent.mkdir(parents=True)
    sandbox.pidfile.write_text(f"{stranger.pid}\n")

    status = sandbox.control("status")
    assert (status.returncode, status.stdout) == (1, f"not running (stale pidfile {sandbox.pidfile})\n")
    stop = sandbox.control("stop")
    assert (stop.returncode, stop.stdout) == (0, "not running\n")
    assert stranger.poll() is None and not sandbox.pidfile.exists()

    sandbox.pidfile.write_text(f"{stranger.pid}\n")
    started = sandbox.control("start")
    assert started.returncode == 0, started.stderr
    daemon = sandbox.pidfile_pid()
    assert daemon is not None and daemon != stranger.pid
    assert sandbox.control("stop").returncode == 0
    wait_until(lambda: process_gone(daemon), 10)
    assert stranger.poll() is None


def test_pidfile_whose_start_time_does_not_match_is_stale_even_if_the_command_looks_like_ours(
    sandbox: Sandbox,
) -> None:
    # A process whose command line says "scheduler" but started after the pidfile was written.
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "scheduler"])
    try:
        sandbox.pidfile.parent.mkdir(parents=True)
        sandbox.pidfile.write_text(f"{fake.pid}\nstart 1\n")
        assert sandbox.control("status").returncode == 1
        assert sandbox.control("stop").stdout == "not running\n"
        assert fake.poll() is None
    finally:
        fake.kill()
        fake.wait(10)


@pytest.mark.parametrize("content", ["0\n", " 1 \n", "-5\n", "99999999999999999999999\n", "1e3\n", ""])
def test_pidfile_with_a_pid_that_is_not_above_1_or_out_of_range_is_stale_and_nothing_is_signalled(
    sandbox: Sandbox, content: str
) -> None:
    sandbox.pidfile.parent.mkdir(parents=True)
    sandbox.pidfile.write_text(content)

    status = sandbox.control("status")
    assert status.returncode == 1 and "stale pidfile" in status.stdout, status
    # `stop` with pid 0 would signal our own process group (this test), with 1 init.
    stop = sandbox.control("stop")
    assert (stop.returncode, stop.stdout, stop.stderr) == (0, "not running\n", "")
    assert not sandbox.pidfile.exists()


def test_pidfile_records_the_daemon_start_time_and_status_json_reports_it_running(sandbox: Sandbox) -> None:
    assert sandbox.control("start").returncode == 0
    pid = sandbox.pidfile_pid()
    assert pid is not None
    lines = sandbox.pidfile.read_text().splitlines()
    ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    assert lines == [str(pid), f"start {ticks}"]

    status = sandbox.control("status", "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout) == {
        "state": "running",
        "running": True,
        "pid": pid,
        "pidfile": str(sandbox.pidfile),
    }
    assert sandbox.control("stop").returncode == 0
    stopped = sandbox.control("status", "--json")
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["state"] == "stopped"
