"""A job module that never finishes importing: `start` gives up after its wait and names the module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox, process_gone, wait_until

pytestmark = pytest.mark.system

GOOD = """
from datetime import timedelta
from scheduler import job

@job(interval=timedelta(seconds=30))
def fine(ctx):
    pass
"""

LOOPS = """
while True:
    pass
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    yield box
    box.close()


def test_start_gives_up_after_its_wait_naming_the_module_stuck_at_import_and_stops_that_daemon(
    sandbox: Sandbox,
) -> None:
    sandbox.write_job("a_fine", GOOD)
    stuck = sandbox.write_job("b_loops", LOOPS)

    started = sandbox.control("start", "--wait", "5", timeout=60)

    assert started.returncode == 1, started.stdout + started.stderr
    assert started.stderr == (
        "error: the daemon did not finish starting within 5s; "
        f"stuck importing job module {stuck}; stopped it\n"
    )
    log = sandbox.info_log.read_text()
    assert f"importing job module scheduler_jobs.b_loops ({stuck})" in log
    pid = sandbox.pidfile_pid()
    if pid is not None:
        wait_until(lambda: process_gone(pid), 10)
    status = sandbox.control("status")
    assert status.stdout.startswith("not running"), status.stdout


def test_start_waits_for_slow_modules_within_its_wait(sandbox: Sandbox) -> None:
    sandbox.write_job("slow", "import time\ntime.sleep(2)\n" + GOOD)

    started = sandbox.control("start", "--wait", "30", timeout=60)

    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("started (pid ")
    stopped = sandbox.control("stop")
    assert stopped.returncode == 0, stopped.stderr
