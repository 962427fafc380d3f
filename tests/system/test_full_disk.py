"""A log folder on a full disk (/dev/full): one clear line, and run logs keep only what the jobs said."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox, wait_until

pytestmark = pytest.mark.system

CHATTY = """
import logging
from datetime import timedelta
from scheduler import job

@job(interval=timedelta(seconds=1))
def chatty(ctx):
    for i in range(3):
        ctx.log.info("step %d", i)
    logging.getLogger("jobs.other").warning("from another logger")
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    box.write_job("chatty", CHATTY)
    box.log_dir.mkdir(parents=True)
    box.info_log.symlink_to("/dev/full")  # every write fails with ENOSPC
    yield box
    box.close()


def test_runs_logged_while_the_log_disk_is_full_keep_clean_logs_and_the_failure_is_one_line(
    sandbox: Sandbox,
) -> None:
    daemon = sandbox.daemon()
    done = wait_until(lambda: [r for r in sandbox.runs("chatty.chatty") if r.status == "succeeded"][2:], 20)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0

    for run in done:
        assert "Logging error" not in (run.log or "") and "Traceback" not in (run.log or ""), run.log
        lines = [line.split(": ", 1)[1] for line in (run.log or "").splitlines()]
        assert lines[0].startswith(f"run {run.id} of chatty.chatty started")
        assert lines[1:] == [
            "step 0",
            "step 1",
            "step 2",
            "from another logger",
        ]
    output = daemon.output()
    assert "--- Logging error ---" not in output
    failures = [line for line in output.splitlines() if line.startswith("scheduler: cannot write ")]
    reason = "No space left on device; log lines are dropped until it can"
    assert failures == [f"scheduler: cannot write {sandbox.info_log}: {reason}"]
