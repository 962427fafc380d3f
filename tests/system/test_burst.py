"""A real daemon SIGKILLed in the middle of a burst: no run lost, none run twice, none left running."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox, query, wait_until

JOBS = 1200


@pytest.fixture
def box(tmp_path: Path, db_url: str) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path, db_url)
    yield sandbox
    sandbox.close()


def burst_jobs(box: Sandbox) -> Path:
    """JOBS jobs on one grid (the default anchor): their first slot is one burst at start-up.

    Each run appends `job slot pid` to a sink file, then takes 10 ms.
    """
    sink = box.root / "sink.txt"
    lines = [
        "import os, time",
        "from datetime import timedelta",
        "from scheduler import job",
        f"SINK = {str(sink)!r}",
        "def _run(ctx):",
        "    fd = os.open(SINK, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)",
        "    os.write(fd, f'{ctx.job} {ctx.scheduled_for.isoformat()} {os.getpid()}\\n'.encode())",
        "    os.close(fd)",
        "    time.sleep(0.01)",
    ]
    for i in range(JOBS):
        lines += [
            f"@job(interval=timedelta(minutes=10), name='burst.j{i:04d}')",
            f"def j{i:04d}(ctx):",
            "    _run(ctx)",
        ]
    box.write_job("burst", "\n".join(lines) + "\n")
    return sink


def executions(sink: Path) -> Counter[tuple[str, str]]:
    text = sink.read_text() if sink.exists() else ""
    return Counter((job, slot) for job, slot, _ in (line.split() for line in text.splitlines()))


def test_sigkill_in_the_middle_of_a_burst_loses_no_run_runs_none_twice_leaves_none_running(
    box: Sandbox,
) -> None:
    sink = burst_jobs(box)
    first = box.daemon(pool_size="4")
    wait_until(lambda: 100 <= sum(executions(sink).values()), 60)
    first.signal(signal.SIGKILL)
    assert first.wait_exit(10) == -signal.SIGKILL
    killed_after = sum(executions(sink).values())
    assert killed_after < JOBS, "the burst was over before the kill: make it longer"

    second = box.daemon(pool_size="4")

    def settled() -> list[dict[str, object]] | None:
        rows = query(box.db_url, "SELECT job, scheduled_for, status, pid FROM runs")
        per_job = Counter(str(r["job"]) for r in rows)
        done = all(r["status"] not in ("running", "queued") for r in rows)
        return rows if done and len(per_job) == JOBS else None

    rows = wait_until(settled, 120)
    per_job = Counter(str(r["job"]) for r in rows)
    assert set(per_job.values()) == {1}, "a slot has two rows"  # one slot per job in this test
    statuses = Counter(str(r["status"]) for r in rows)
    assert set(statuses) <= {"succeeded", "abandoned"}, statuses
    # the runs the killed process held (executing, or claimed and waiting for a thread) are
    # abandoned by the next start, never run again; the rest ran once
    assert statuses["abandoned"] >= 1
    ran = executions(sink)
    assert max(ran.values()) == 1, "a run executed twice"
    succeeded = {str(r["job"]) for r in rows if r["status"] == "succeeded"}
    assert succeeded <= {job for job, _ in ran}, "a run recorded succeeded never executed"
    second.signal(signal.SIGTERM)
    assert second.wait_exit(60) == 0
    assert os.path.exists(box.info_log)
