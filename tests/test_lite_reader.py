"""The CLI's lean SQLite reader (sqlite3, no SQLAlchemy) reads what the store reads, and the read
commands print the same bytes through it as through the store."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from scheduler import control
from scheduler.clock import FakeClock
from scheduler.errors import NotFoundError, StoreError
from scheduler.jobs.registry import make_spec
from scheduler.operator import cli as commands
from scheduler.store import Claim, Outcome, Owner, Store, lite, reads, schema

NOW = datetime(2026, 3, 27, 12, 0, 0, tzinfo=UTC)
OWNER = Owner("inst-a", "host-a", 4242)


def work(ctx: Any = None) -> None:
    """A job function; never called here."""


@pytest.fixture
def seeded(sqlite_url: str) -> Iterator[Store]:
    """Jobs of every kind (interval, cron in a zone, paused, disabled, overridden, non-ASCII name) and
    runs of every shape (ended with an error and a log, running, queued manual, microsecond instants)."""
    store = Store(sqlite_url)
    store.upgrade()
    store.jobs.sync(
        [
            make_spec(work, name="etl.load", interval=timedelta(minutes=10), timeout=timedelta(seconds=90)),
            make_spec(work, name="reports.nightly", cron="30 1 * * *", timezone="Europe/London"),
            make_spec(work, name="x.paused", interval=timedelta(hours=1), first_run="interval"),
            make_spec(work, name="x.disabled", interval=timedelta(hours=1), enabled=False),
            make_spec(work, name="x.over", interval=timedelta(minutes=5), overlap="queue"),
            make_spec(work, name="ünï.cödé", cron="*/7 * * * *", timezone="America/New_York"),
        ],
        NOW - timedelta(hours=1),
    )
    anchor = store.jobs.get("etl.load").anchor_at
    for i, status in enumerate(["succeeded", "failed", "succeeded", "timed_out"]):
        slot = anchor + timedelta(minutes=10 * i)
        won = store.runs.claim(
            [Claim("etl.load", slot), Claim("x.over", slot)], OWNER, slot, slot + timedelta(1)
        )
        store.runs.finish(
            [
                Outcome(
                    c.run_id,
                    c.fence,
                    status,
                    finished_at=slot + timedelta(seconds=2.25),
                    started_at=slot + timedelta(seconds=0.5),
                    error_type="OSError" if status != "succeeded" else None,
                    error_message="disk full" if status != "succeeded" else None,
                    error_traceback="Traceback:\nOSError: disk full\n" if status != "succeeded" else None,
                    log=f"line from run {i} ✓\n",
                )
                for c in won
            ]
        )
    store.runs.claim([Claim("x.over", anchor + timedelta(hours=1))], OWNER, NOW, NOW + timedelta(minutes=1))
    store.runs.enqueue("etl.load", NOW - timedelta(minutes=3))
    store.jobs.set_paused("x.paused", True, "bob@host", NOW - timedelta(minutes=20))
    store.jobs.set_schedule(
        "x.over", "al@host", NOW - timedelta(minutes=15), cron="0 9 * * 1-5", timezone="Asia/Tokyo"
    )
    yield store
    store.dispose()


def reader_of(store: Store) -> lite.LiteReader:
    file = lite.file_of(store.db.url)
    assert file is not None
    return lite.LiteReader(store.db.url, file)


def same(lean: Any, stored: Any) -> bool:
    """Equal, and of the same types too (0 == False, but JSON prints them apart)."""
    return bool(lean == stored and repr(lean) == repr(stored))


def test_the_lean_reader_returns_the_rows_the_store_returns(seeded: Store) -> None:
    reader = reader_of(seeded)
    try:
        assert same(reader.jobs.all(), seeded.jobs.all()) and len(reader.jobs.all()) == 6
        assert same(reader.jobs.get("ünï.cödé"), seeded.jobs.get("ünï.cödé"))
        assert same(reader.runs.last_slots(), seeded.runs.last_slots())
        assert same(reader.runs.latest_per_job(), seeded.runs.latest_per_job())
        for job, status, limit in [
            (None, None, 50),
            ("etl.load", None, 2),
            (None, "failed", 50),
            ("x.over", "running", 5),
        ]:
            found = reader.runs.history(job, status, limit)
            assert found and same(found, seeded.runs.history(job, status, limit)), (job, status, limit)
        for run in seeded.runs.history(limit=100):
            assert same(reader.runs.get(run.id), seeded.runs.get(run.id))
        assert reader.current_revision() == seeded.db.current_revision() is not None
        with pytest.raises(NotFoundError, match="no job named 'nope'"):
            reader.jobs.get("nope")
        with pytest.raises(NotFoundError, match="no run with id 999"):
            reader.runs.get(999)
    finally:
        reader.dispose()


def test_the_column_kinds_the_lean_reader_decodes_by_are_the_tables_types() -> None:
    def kind(column: sa.Column[Any]) -> str | None:
        if isinstance(column.type, schema.UTCDateTime):
            return reads.INSTANT
        if isinstance(column.type, sa.JSON):
            return reads.JSON
        return reads.FLAG if isinstance(column.type, sa.Boolean) else None

    for table, columns in (("jobs", reads.JOB_COLUMNS), ("runs", reads.RUN_COLUMNS)):
        typed = schema.metadata.tables[table].c
        assert columns == tuple(typed.keys()), table  # the store types the text's columns by position
        expected = {c.name: kind(c) for c in typed if kind(c) is not None}
        assert reads.COLUMN_KINDS[table] == expected, table


@pytest.mark.parametrize(
    ("url", "file"),
    [
        ("sqlite:////var/lib/s.db", Path("/var/lib/s.db")),
        ("sqlite:///var/s.db", Path("var/s.db")),
        ("sqlite:///:memory:", None),
        ("sqlite:////var/s.db?timeout=5", None),
        ("sqlite:////var/a%20b.db", None),
        ("sqlite:///file:s.db?uri=true", None),
        ("sqlite+pysqlite:////var/s.db", None),
        ("postgresql://u@h/db", None),
    ],
)
def test_only_a_plain_sqlite_file_url_is_read_without_the_store(url: str, file: Path | None) -> None:
    assert lite.file_of(url) == file


def test_a_file_that_is_not_a_database_is_the_stores_one_line_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 100)
    reader = lite.LiteReader(f"sqlite:///{junk}", junk)
    with pytest.raises(StoreError, match="^database error: file is not a database$"):
        reader.current_revision()
    reader.dispose()


READ_COMMANDS = [
    ["jobs"],
    ["jobs", "--json"],
    ["history"],
    ["history", "--limit", "3"],
    ["history", "etl.load", "--status", "failed", "--json"],
    ["history", "nope"],
    ["show", "etl.load"],
    ["show", "x.over", "--json"],
    ["show", "x.paused"],
    ["show", "ünï.cödé"],
    ["show", "nope"],
    ["next", "reports.nightly", "-n", "3"],
    ["next", "x.over", "--json"],
    ["logs", "2"],
    ["logs", "3", "--json"],
    ["logs", "999"],
]


def run_cli(url: str, args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = control.main(["--database-url", url, *args])
    return code, out.getvalue(), err.getvalue()


def test_read_commands_print_the_same_bytes_through_the_lean_reader_as_through_the_store(
    seeded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "clock", FakeClock(NOW))
    url = seeded.db.url
    opened: list[str] = []
    real_open = commands._open

    @contextlib.contextmanager
    def store_open(settings: Any, **kw: Any) -> Iterator[Any]:
        opened.append(settings.database_url)
        with real_open(settings, **kw) as store:
            yield store

    monkeypatch.setattr(commands, "_open", store_open)
    lean = {" ".join(a): run_cli(url, a) for a in READ_COMMANDS}
    assert opened == []  # none of them opened the store
    monkeypatch.setattr(lite, "file_of", lambda url: None)  # now every read goes through the store
    through_store = {" ".join(a): run_cli(url, a) for a in READ_COMMANDS}
    assert len(opened) == len(READ_COMMANDS)
    assert lean == through_store
    assert lean["show etl.load"][0] == 0 and "etl.load" in lean["show etl.load"][1]
    assert lean["logs 999"] == (1, "", "error: no run with id 999\n")
