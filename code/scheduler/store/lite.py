"""The read commands' reader of a SQLite file, through the standard library's sqlite3.

`scheduler jobs`, `history`, `show`, `next` and `logs` would spend longer
importing SQLAlchemy than their whole budget, so on a plain SQLite file they
read through this instead. It runs the statements of `reads`, the same text
the store runs, and decodes the raw values as the tables' types do
(`reads.COLUMN_KINDS`): the rows it returns equal the store's. Every read is
its own transaction, as with `Database.read()`.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from scheduler import writable
from scheduler.config import redact_url
from scheduler.errors import NotFoundError, StoreError, StoreUnavailable, first_line
from scheduler.store import reads
from scheduler.store.reads import INSTANT, JSON, JobRow, RunRow, instant

BUSY_TIMEOUT = 10.0  # seconds, as the store waits on a writer's lock


def file_of(url: str) -> Path | None:
    """The file of a plain `sqlite:///path` URL; None for anything the store must open itself.

    A query string (driver options, `uri=true`), an escaped character (which
    SQLAlchemy unquotes) or `:memory:` is left to the store.
    """
    if not url.startswith("sqlite:///") or "?" in url or "%" in url:
        return None
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


class LiteReader:
    """A `reads.Reader` on one SQLite file. Raises StoreError or StoreUnavailable as the store does."""

    def __init__(self, url: str, file: Path) -> None:
        self.safe_url = redact_url(url)
        self.file = file
        self.jobs = _Jobs(self)
        self.runs = _Runs(self)
        self._conn: sqlite3.Connection | None = None

    def current_revision(self) -> str | None:
        """The schema revision in the database; None if unmigrated."""
        if not self.rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"):
            return None
        found = self.rows(reads.VERSION)
        return str(found[0][0]) if found else None

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[sqlite3.Row]:
        """The rows of one statement, in its own read transaction (autocommit)."""
        try:
            if self._conn is None:
                writable.database_folder(self.file.parent)  # as the store checks before it connects
                self._conn = sqlite3.connect(self.file, timeout=BUSY_TIMEOUT, isolation_level=None)
                self._conn.row_factory = sqlite3.Row
            return self._conn.execute(sql, params or {}).fetchall()
        except sqlite3.Error as error:  # mapped as the store maps what SQLAlchemy wraps
            if isinstance(error, sqlite3.OperationalError | sqlite3.InterfaceError):
                raise StoreUnavailable(f"database unavailable: {first_line(error)}") from None
            raise StoreError(f"database error: {first_line(error)}") from None

    def dispose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Jobs:
    def __init__(self, reader: LiteReader) -> None:
        self.reader = reader

    def all(self) -> list[JobRow]:
        return [JobRow.from_mapping(_decode("jobs", r)) for r in self.reader.rows(reads.JOBS_ALL)]

    def get(self, name: str) -> JobRow:
        """Raises NotFoundError naming the job."""
        found = self.reader.rows(reads.JOB_BY_NAME, {"name": name})
        if not found:
            raise NotFoundError(f"no job named {name!r}")
        return JobRow.from_mapping(_decode("jobs", found[0]))


class _Runs:
    def __init__(self, reader: LiteReader) -> None:
        self.reader = reader

    def last_slots(self) -> dict[str, datetime]:
        return {job: instant(at) for job, at in self.reader.rows(reads.LAST_SLOTS)}

    def get(self, run_id: int) -> RunRow:
        """Raises NotFoundError."""
        found = self.reader.rows(reads.RUN_BY_ID, {"id": run_id})
        if not found:
            raise NotFoundError(f"no run with id {run_id}")
        return RunRow.from_mapping(_decode("runs", found[0]))

    def history(self, job: str | None = None, status: str | None = None, limit: int = 50) -> list[RunRow]:
        sql = reads.history_sql(job is not None, status is not None)
        found = self.reader.rows(sql, {"job": job, "status": status, "limit": limit})
        return [RunRow.from_mapping(_decode("runs", r)) for r in found]

    def latest_per_job(self) -> dict[str, RunRow]:
        found = self.reader.rows(reads.LATEST_PER_JOB)
        return {r["job"]: RunRow.from_mapping(_decode("runs", r)) for r in found}


def _decode(table: str, row: sqlite3.Row) -> dict[str, Any]:
    kinds = reads.COLUMN_KINDS[table]
    decoded = {}
    for name in row.keys():
        value, kind = row[name], kinds.get(name)
        if value is not None and kind is not None:
            value = instant(value) if kind == INSTANT else json.loads(value) if kind == JSON else bool(value)
        decoded[name] = value
    return decoded
