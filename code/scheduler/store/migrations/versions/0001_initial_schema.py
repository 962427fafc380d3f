"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 08:07:44.709357
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.store.schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Created by concern; the outbox refers to incidents, which come first.
    _jobs_tables()
    _runs_table()
    _cluster_tables()
    _alerting_tables()


def _jobs_tables() -> None:
    """The declared jobs with their operator overrides, and the audit of operator actions."""
    op.create_table(
        "jobs",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("schedule", sa.String(length=200), nullable=False),
        sa.Column("anchor_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("defined_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("loaded_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("override_interval_seconds", sa.Float(), nullable=True),
        sa.Column("override_cron", sa.String(length=200), nullable=True),
        sa.Column("override_timezone", sa.String(length=64), nullable=True),
        sa.Column("changed_by", sa.String(length=200), nullable=True),
        sa.Column("changed_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "audit",
        _id_column(),
        sa.Column("at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def _runs_table() -> None:
    """One row per claimed slot: UNIQUE(job, scheduled_for) makes each slot exactly-once."""
    op.create_table(
        "runs",
        _id_column(),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("scheduled_for", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(length=16), server_default="schedule", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("fence", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_expires_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("claimed_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("started_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error_type", sa.String(length=200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_traceback", sa.Text(), nullable=True),
        sa.Column("log", sa.Text(), nullable=True),
        sa.Column("log_truncated", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job", "scheduled_for", name="uq_runs_job_slot"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_scheduled_for", ["scheduled_for"], unique=False)
        batch_op.create_index("ix_runs_status", ["status"], unique=False)


def _cluster_tables() -> None:
    """The instances' membership and the named leases (the leader lease among them)."""
    op.create_table(
        "instances",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("started_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("jobs", sa.JSON(), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )

    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.Column("term", sa.Integer(), server_default="0", nullable=False),
        sa.Column("acquired_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def _alerting_tables() -> None:
    """Incidents (one open per subject and kind) and the outbox of their notices to Slack."""
    op.create_table(
        "incidents",
        _id_column(),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("opened_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("last_notified_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("slack_ts", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.create_index(
            "uq_incidents_open",
            ["subject", "kind"],
            unique=True,
            sqlite_where=sa.text("closed_at IS NULL"),
            postgresql_where=sa.text("closed_at IS NULL"),
        )

    op.create_table(
        "outbox",
        _id_column(),
        sa.Column("incident_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", scheduler.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("slack_ts", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_status", ["status", "next_attempt_at"], unique=False)


def _id_column() -> sa.Column[int]:
    """The surrogate key: BIGINT, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements)."""
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        autoincrement=True,
        nullable=False,
    )


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_status")

    op.drop_table("outbox")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_status")
        batch_op.drop_index("ix_runs_scheduled_for")

    op.drop_table("runs")
    op.drop_table("leases")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_updated_at"))

    op.drop_table("jobs")
    op.drop_table("instances")
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_incidents_open",
            sqlite_where=sa.text("closed_at IS NULL"),
            postgresql_where=sa.text("closed_at IS NULL"),
        )

    op.drop_table("incidents")
    op.drop_table("audit")
    # ### end Alembic commands ###
