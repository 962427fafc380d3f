"""The tables. Alembic migrations in `scheduler/migrations` create and evolve them.

Instants are stored as UTC; on SQLite (no time zone type) as naive UTC text,
read back tz-aware by `UTCDateTime`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# Their home is `reads` (which the CLI imports without SQLAlchemy); imported from here too.
from scheduler.store.reads import FINAL_STATUSES as FINAL_STATUSES
from scheduler.store.reads import RUN_STATUSES as RUN_STATUSES
from scheduler.store.reads import as_utc as as_utc

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A tz-aware UTC datetime on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use tz-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("schedule", sa.String(200), nullable=False),
    sa.Column("anchor_at", UTCDateTime, nullable=False),
    sa.Column("defined_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False, index=True),
    sa.Column("loaded_at", UTCDateTime),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("override_interval_seconds", sa.Float),
    sa.Column("override_cron", sa.String(200)),
    sa.Column("override_timezone", sa.String(64)),
    sa.Column("changed_by", sa.String(200)),
    sa.Column("changed_at", UTCDateTime),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("scheduled_for", UTCDateTime, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False, server_default="schedule"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("owner", sa.String(64)),
    sa.Column("fence", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("error_type", sa.String(200)),
    sa.Column("error_message", sa.Text),
    sa.Column("error_traceback", sa.Text),
    sa.Column("log", sa.Text),
    sa.Column("log_truncated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("job", "scheduled_for", name="uq_runs_job_slot"),
    sa.Index("ix_runs_status", "status"),
    sa.Index("ix_runs_scheduled_for", "scheduled_for"),
)


def fenced(run_id: Any, fence: Any) -> sa.ColumnElement[bool]:
    """What every write to a running run matches: its row, still at `fence` and running. An instance
    whose lease was taken away (a reaper moved the fence on) matches nothing and writes nothing."""
    return sa.and_(runs.c.id == run_id, runs.c.fence == fence, runs.c.status == "running")


instances = sa.Table(
    "instances",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("stopped_at", UTCDateTime),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("jobs", sa.JSON, nullable=False),
    sa.Column("problems", sa.JSON, nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(64)),
    sa.Column("term", sa.Integer, nullable=False, server_default="0"),
    sa.Column("acquired_at", UTCDateTime),
    sa.Column("expires_at", UTCDateTime),
)

incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("last_notified_at", UTCDateTime),
    sa.Column("slack_ts", sa.String(64)),
    sa.Index(
        "uq_incidents_open",
        "subject",
        "kind",
        unique=True,
        sqlite_where=sa.text("closed_at IS NULL"),
        postgresql_where=sa.text("closed_at IS NULL"),
    ),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("incident_id", BigId, sa.ForeignKey("incidents.id", ondelete="CASCADE")),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claimed_until", UTCDateTime),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("slack_ts", sa.String(64)),
    sa.Index("ix_outbox_status", "status", "next_attempt_at"),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("job", sa.String(200)),
    sa.Column("details", sa.JSON, nullable=False),
)
