"""Shared fixtures: a store on SQLite and on PostgreSQL, a fake clock, a fake Slack.

PostgreSQL tests use a fresh database per test on 127.0.0.1:5432. Where it
cannot be reached they skip with a loud reason, except under CI=true, where
they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from scheduler.clock import FakeClock
from scheduler.store import Store

from tests.support.fakeslack import fake_slack_fixture  # noqa: F401  (the `fake_slack` fixture)
from tests.support.required import missing

PG_HOST = os.environ.get("SCHEDULER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SCHEDULER_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("SCHEDULER_TEST_PG_USER", "postgres")


def _admin() -> Any:
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3)
    conn.autocommit = True
    return conn


def _pg_unreachable() -> str | None:
    try:
        _admin().close()
    except psycopg2.OperationalError as exc:
        return str(exc).strip().splitlines()[0]
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    problem = _pg_unreachable()
    if problem is not None:
        missing("PostgreSQL test", f"PostgreSQL on {PG_HOST}:{PG_PORT} unreachable: {problem}")
    name = f"sched_test_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'scheduler.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'scheduler.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.upgrade()
    yield s
    s.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))
