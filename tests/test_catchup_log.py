"""The log line of a slot that is not started says why: downtime is not an overlap."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from scheduler.clock import FakeClock

from tests.test_dispatcher import START, Calls, Harness, interval_job


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, FakeClock(START))
    yield h
    h.close()


def not_run_lines(caplog: pytest.LogCaptureFixture, job: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"job {job} slot ")]


def test_slots_missed_during_downtime_are_not_logged_as_overlaps(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.engine.dispatcher")
    harness.load(interval_job("down.job", 60, Calls().add))
    harness.advance_and_tick(timedelta(seconds=1))
    harness.advance_and_tick(timedelta(minutes=5, seconds=30))  # the disk was full, the daemon away

    lines = not_run_lines(caplog, "down.job")
    assert len(lines) == 4
    assert all(
        line.endswith("missed: passed while the scheduler was not running (outside the catch-up policy)")
        for line in lines
    ), lines
    assert not any("still going" in line for line in lines)


def test_catchup_all_slots_are_logged_as_queued_to_catch_up(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.engine.dispatcher")
    harness.load(interval_job("all.job", 60, Calls().add, catchup="all"))
    harness.advance_and_tick(timedelta(seconds=1))
    harness.advance_and_tick(timedelta(minutes=3, seconds=30))

    lines = not_run_lines(caplog, "all.job")
    assert lines and all(line.endswith("queued: queued to catch up after downtime") for line in lines), lines
