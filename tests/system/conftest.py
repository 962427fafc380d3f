"""Fixtures shared by the system tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox

TICK = """
from datetime import timedelta
from scheduler import job

@job(interval=timedelta(seconds=1))
def tick():
    pass
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A daemon sandbox with one job that ticks every second (test modules may define their own)."""
    box = Sandbox(tmp_path)
    box.write_job("tick", TICK)
    yield box
    box.close()
