"""The engine, transactions, error mapping and schema migrations.

Every operation runs in one short transaction (`read()` or `write()`). On
SQLite writes take the lock up front (BEGIN IMMEDIATE), so two writers queue
on `busy_timeout` instead of failing half-way with 'database is locked'.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc

from scheduler import writable
from scheduler.config import redact_url
from scheduler.errors import StoreError, StoreUnavailable, first_line

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_VERSION_TABLE = "alembic_version"
_MIGRATION_LOCK = 7_210_425  # pg_advisory_xact_lock key: one migrator at a time


class Database:
    """An engine plus the transaction helpers every repository uses."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.url = _normalise(url)
        self.safe_url = redact_url(self.url)
        self.is_sqlite = self.url.startswith("sqlite")
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file first opened
        try:
            file = sa.engine.make_url(self.url).database if self.is_sqlite else None
            self.file = Path(file) if file and file != ":memory:" else None
            self.engine = self._create_engine(busy_timeout_ms)
        except (exc.ArgumentError, ImportError) as error:
            raise StoreError(f"database URL {self.safe_url}: {error}") from None
        except ValueError:  # SQLAlchemy: a port that is not a number; its text may hold URL parts
            raise StoreError(f"database URL {self.safe_url}: the port is not a number") from None

    def _create_engine(self, busy_timeout_ms: int) -> sa.Engine:
        if not self.is_sqlite:
            return sa.create_engine(
                self.url,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=10,
                pool_recycle=300,
                connect_args={
                    "connect_timeout": 3,
                    "keepalives": 1,
                    "keepalives_idle": 5,
                    "keepalives_interval": 2,
                    "keepalives_count": 2,
                    "application_name": "scheduler",
                    # A process frozen mid-transaction (SIGSTOP) must not hold row locks that
                    # stall its peers' claims: the server ends such a session after 5 s.
                    "options": "-c statement_timeout=15000 -c lock_timeout=10000"
                    " -c idle_in_transaction_session_timeout=5000",
                },
            )
        if self.file is not None:
            writable.database_folder(self.file.parent)
        engine = sa.create_engine(self.url, connect_args={"timeout": busy_timeout_ms / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself (below): pysqlite's own BEGIN is deferred.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            _enable_wal(cursor, busy_timeout_ms / 1000)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
            if self.file is not None and self._identity is None:
                with suppress(OSError):  # a URI filename SQLite resolves its own way: no check
                    info = os.stat(self.file)
                    self._identity = (info.st_dev, info.st_ino)

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            write = conn.get_execution_options().get("scheduler_write", True)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """One write transaction. Raises StoreUnavailable on a transient failure."""
        self.check_file()
        with translate_errors(self.safe_url), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        self.check_file()
        with translate_errors(self.safe_url), self.engine.connect() as raw:
            conn = raw.execution_options(scheduler_write=False)
            with conn.begin():
                yield conn

    def check_file(self) -> None:
        """Raises StoreUnavailable if the SQLite file was deleted or replaced since first opened.

        Open connections would go on writing to the unlinked inode, and every record
        written there is lost at the next start. Refusing instead makes the daemon
        unhealthy (so the watchdog's database alert fires) and stops it claiming slots
        into a file nobody will read.
        """
        if self.file is None or self._identity is None:
            return
        try:
            info = os.stat(self.file)
        except OSError:
            info = None
        if info is None or (info.st_dev, info.st_ino) != self._identity:
            raise StoreUnavailable(
                f"database unavailable: SQLite file {self.file} was deleted or replaced while in use;"
                " restart the daemon to create it again"
            )

    def dispose(self) -> None:
        self.engine.dispose()

    # -- migrations ---------------------------------------------------------

    # Alembic is imported by the methods that need it: the operator's read commands open
    # the store and check current_revision() without loading it.

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        assert head is not None
        return head

    def current_revision(self) -> str | None:
        """The schema revision in the database (Alembic's version table); None if unmigrated."""
        with self.read() as conn:
            if not sa.inspect(conn).has_table(_VERSION_TABLE):
                return None
            rows = conn.execute(sa.text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalars().all()
        return str(rows[0]) if rows else None

    def upgrade(self) -> None:
        """Create or upgrade the schema to this code's head.

        Raises StoreError when the database was written by newer code.
        """
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        script = ScriptDirectory(str(MIGRATIONS))
        with self.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            current = MigrationContext.configure(conn).get_current_revision()
            known = {r.revision for r in script.walk_revisions()}
            if current is not None and current not in known:
                raise StoreError(
                    f"database {self.safe_url} has schema revision {current!r}, newer than this "
                    f"code knows (head {self.head_revision()!r}); upgrade the scheduler"
                )
            if current != script.get_current_head():
                log.info("migrating schema from %s to %s", current, script.get_current_head())
                cfg = Config()
                cfg.set_main_option("script_location", str(MIGRATIONS))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")


def upsert_insert(dialect: str, table: sa.Table) -> Any:
    """An INSERT that takes ON CONFLICT clauses, on PostgreSQL or SQLite."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def _enable_wal(cursor: Any, timeout: float) -> None:
    """Switch to WAL. Two processes opening a new file at once can find it locked while
    the other switches, and SQLite does not wait on its busy handler for that: retry."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # no event to wait on: the lock is in another process


def _normalise(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


_TRANSIENT_SQLSTATES = ("08", "53", "57", "40")  # connection, resources, operator, rollback


@contextmanager
def translate_errors(safe_url: str) -> Iterator[None]:
    """Map driver errors to StoreUnavailable (retry later) or StoreError (give up)."""
    try:
        yield
    except exc.DBAPIError as error:
        code = getattr(error.orig, "pgcode", None) or ""
        transient = (
            error.connection_invalidated
            or isinstance(error, exc.OperationalError | exc.InterfaceError)
            or code.startswith(_TRANSIENT_SQLSTATES)
        )
        reason = first_line(error.orig)
        if transient:
            raise StoreUnavailable(f"database unavailable: {reason}") from None
        raise StoreError(f"database error: {reason}") from None
