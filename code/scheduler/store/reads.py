"""Reading jobs and runs: the row records and the SQL of the reads, without SQLAlchemy.

Two readers run these same statements. The store executes them through
SQLAlchemy on either backend, the result columns typed by the tables in
`schema` (`JobRepository`, `RunReads`). The CLI's read commands execute them
on a SQLite file through the standard library's sqlite3 (`lite.LiteReader`),
because importing SQLAlchemy alone takes longer than such a command may. So
each query has one text, here, and `COLUMN_KINDS` says how sqlite3's raw
values become what the tables' types give (a test holds it to `schema`).

The statements are portable: PostgreSQL and SQLite both take them as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

# Every status a run row can have; a run in one of the FINAL_STATUSES has ended.
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "timed_out", "skipped", "missed", "abandoned")
FINAL_STATUSES = RUN_STATUSES[2:]


def as_utc(at: datetime) -> datetime:
    """A datetime read outside a UTCDateTime column (an aggregate), as tz-aware UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def instant(value: datetime | str) -> datetime:
    """A stored instant read raw (untyped), as tz-aware UTC: PostgreSQL's driver gives a datetime,
    SQLite gives the naive UTC text SQLAlchemy wrote."""
    return as_utc(value if isinstance(value, datetime) else datetime.fromisoformat(value))


def fields_of(m: Mapping[Any, Any], cls: type[Any]) -> dict[str, Any]:
    """A row's values for the fields of the dataclass `cls`, each read from the column of its name."""
    return {name: m[name] for name in cls.__dataclass_fields__}


class Timed:
    """The duration of a run that has started and ended, for RunRow and `history.RunBrief`."""

    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class JobRow:
    """A job as stored; `scheduler.jobs.effective` says when it runs next."""

    name: str
    definition: dict[str, Any]
    schedule_text: str
    anchor_at: datetime
    defined_at: datetime
    updated_at: datetime
    loaded_at: datetime | None
    paused: bool
    override_interval_seconds: float | None
    override_cron: str | None
    override_timezone: str | None
    changed_by: str | None
    changed_at: datetime | None

    @property
    def overridden(self) -> bool:
        return self.override_interval_seconds is not None or self.override_cron is not None

    @classmethod
    def from_row(cls, row: Any) -> JobRow:
        """From a SQLAlchemy row of the jobs table."""
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> JobRow:
        # Field by field, not through fields_of: reads of every job build 10,000 of these, and
        # keyword arguments are the fastest way (fields_of with the renamed column took ~1.6x).
        return cls(
            name=m["name"],
            definition=dict(m["definition"]),
            schedule_text=m["schedule"],
            anchor_at=m["anchor_at"],
            defined_at=m["defined_at"],
            updated_at=m["updated_at"],
            loaded_at=m["loaded_at"],
            paused=bool(m["paused"]),
            override_interval_seconds=m["override_interval_seconds"],
            override_cron=m["override_cron"],
            override_timezone=m["override_timezone"],
            changed_by=m["changed_by"],
            changed_at=m["changed_at"],
        )


@dataclass(frozen=True)
class RunRow(Timed):
    id: int
    job: str
    scheduled_for: datetime
    trigger: str
    status: str
    attempt: int
    owner: str | None
    fence: int
    host: str | None
    pid: int | None
    started_at: datetime | None
    finished_at: datetime | None
    error_type: str | None
    error_message: str | None
    error_traceback: str | None
    log: str | None
    log_truncated: bool
    lease_expires_at: datetime | None

    @property
    def lateness_seconds(self) -> float | None:
        if self.started_at is None or self.trigger == "manual":
            return None
        return (self.started_at - self.scheduled_for).total_seconds()

    @classmethod
    def from_row(cls, row: Any) -> RunRow:
        """From a SQLAlchemy row of the runs table."""
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> RunRow:
        return cls(**fields_of(m, cls))


class JobReader(Protocol):
    def all(self) -> list[JobRow]: ...

    def get(self, name: str) -> JobRow:
        """Raises NotFoundError naming the job."""
        ...


class RunReader(Protocol):
    def last_slots(self) -> dict[str, datetime]: ...

    def get(self, run_id: int) -> RunRow:
        """Raises NotFoundError."""
        ...

    def history(self, job: str | None = None, status: str | None = None, limit: int = 50) -> list[RunRow]: ...

    def latest_per_job(self) -> dict[str, RunRow]: ...


class Reader(Protocol):
    """What the read commands need: the store, or on a SQLite file the lean `lite.LiteReader`."""

    @property
    def jobs(self) -> JobReader: ...

    @property
    def runs(self) -> RunReader: ...


# -- the statements -------------------------------------------------------------

# The tables' columns in their `schema` order (the store types the results by position).
JOB_COLUMNS = (
    "name",
    "definition",
    "schedule",
    "anchor_at",
    "defined_at",
    "updated_at",
    "loaded_at",
    "paused",
    "override_interval_seconds",
    "override_cron",
    "override_timezone",
    "changed_by",
    "changed_at",
)
RUN_COLUMNS = (
    "id",
    "job",
    "scheduled_for",
    "trigger",
    "status",
    "attempt",
    "owner",
    "fence",
    "lease_expires_at",
    "host",
    "pid",
    "claimed_at",
    "started_at",
    "finished_at",
    "error_type",
    "error_message",
    "error_traceback",
    "log",
    "log_truncated",
)
# How a column's stored value reads back (sqlite3 gives text, 0/1 and numbers as stored).
INSTANT, JSON, FLAG = "instant", "json", "flag"
COLUMN_KINDS = {
    "jobs": {
        "definition": JSON,
        "anchor_at": INSTANT,
        "defined_at": INSTANT,
        "updated_at": INSTANT,
        "loaded_at": INSTANT,
        "paused": FLAG,
        "changed_at": INSTANT,
    },
    "runs": {
        "scheduled_for": INSTANT,
        "lease_expires_at": INSTANT,
        "claimed_at": INSTANT,
        "started_at": INSTANT,
        "finished_at": INSTANT,
        "log_truncated": FLAG,
    },
}


def _select(table: str, columns: tuple[str, ...]) -> str:
    # "trigger" is a keyword in SQLite: every column is quoted.
    return "SELECT " + ", ".join(f'{table}."{c}"' for c in columns) + f" FROM {table}"


JOBS_ALL = _select("jobs", JOB_COLUMNS) + " ORDER BY jobs.name"
JOB_BY_NAME = _select("jobs", JOB_COLUMNS) + " WHERE jobs.name = :name"
RUN_BY_ID = _select("runs", RUN_COLUMNS) + " WHERE runs.id = :id"
# The latest scheduled (not manual) slot recorded per job.
LAST_SLOTS = (
    "SELECT runs.job, max(runs.scheduled_for) AS scheduled_for FROM runs WHERE runs.\"trigger\" != 'manual'"
    " GROUP BY runs.job"
)
# Each job's most recent run row: the highest id.
LATEST_PER_JOB = (
    _select("runs", RUN_COLUMNS)
    + " JOIN (SELECT runs.job AS job, max(runs.id) AS id FROM runs GROUP BY runs.job) AS latest"
    " ON runs.id = latest.id"
)
VERSION = "SELECT version_num FROM alembic_version"  # Alembic's table: the schema revision


def history_sql(job: bool, status: bool) -> str:
    """Runs newest slot first, filtered by `:job` and/or `:status` when asked, at most `:limit`."""
    where = [f"runs.{c} = :{c}" for c, wanted in (("job", job), ("status", status)) if wanted]
    return (
        _select("runs", RUN_COLUMNS)
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY runs.scheduled_for DESC, runs.id DESC LIMIT :limit"
    )
