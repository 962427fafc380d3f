"""Reading run records: one run, history, each job's latest, counts, last slots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from scheduler.errors import NotFoundError
from scheduler.store import reads
from scheduler.store.db import Database
from scheduler.store.reads import RunRow as RunRow  # its home; imported from here too
from scheduler.store.reads import Timed, instant
from scheduler.store.schema import as_utc, runs


class LatestTimes(NamedTuple):
    """A job's latest times as stored (SQLite's text, PostgreSQL's datetimes), decoded when read.

    Equal if stored equal: a metrics scrape compares them with the previous
    scrape's and decodes only the ones that changed.
    """

    slot: datetime | str | None  # the latest scheduled (not manual) slot
    ended: datetime | str | None  # when the latest run ended
    succeeded: datetime | str | None  # when the latest successful run ended

    @property
    def slot_at(self) -> datetime | None:
        return instant(self.slot) if self.slot is not None else None

    @property
    def ended_at(self) -> datetime | None:
        return instant(self.ended) if self.ended is not None else None

    @property
    def succeeded_at(self) -> datetime | None:
        return instant(self.succeeded) if self.succeeded is not None else None


@dataclass(frozen=True)
class RunBrief(Timed):
    """A run without its log and error text: what a status strip or a duration chart needs."""

    id: int
    job: str
    scheduled_for: datetime
    trigger: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None


_BRIEF = (
    runs.c.id,
    runs.c.job,
    runs.c.scheduled_for,
    runs.c.trigger,
    runs.c.status,
    runs.c.started_at,
    runs.c.finished_at,
)


# The reads the CLI also runs without SQLAlchemy: their text is in `reads`, typed here by the table.
_LAST_SLOTS = sa.text(reads.LAST_SLOTS).columns(runs.c.job, runs.c.scheduled_for)
_BY_ID = sa.text(reads.RUN_BY_ID).columns(*runs.c)
_LATEST_PER_JOB = sa.text(reads.LATEST_PER_JOB).columns(*runs.c)
# Untyped: the values stay as stored until read (`LatestTimes`).
_LATEST_TIMES = sa.text(
    "SELECT runs.job, max(CASE WHEN runs.\"trigger\" != 'manual' THEN runs.scheduled_for END),"
    " max(runs.finished_at), max(CASE WHEN runs.status = 'succeeded' THEN runs.finished_at END)"
    " FROM runs GROUP BY runs.job"
)
_HISTORY = {
    (job, status): sa.text(reads.history_sql(job, status)).columns(*runs.c)
    for job in (False, True)
    for status in (False, True)
}


def _brief(row: Any) -> RunBrief:
    m = row._mapping
    started, finished = m["started_at"], m["finished_at"]
    return RunBrief(
        m["id"],
        m["job"],
        as_utc(m["scheduled_for"]),
        m["trigger"],
        m["status"],
        as_utc(started) if started else None,
        as_utc(finished) if finished else None,
    )


class RunReads:
    """The read side of the runs table; `RunRepository` adds the writes."""

    db: Database

    def last_slots(self) -> dict[str, datetime]:
        """The latest scheduled (not manual) slot recorded per job."""
        with self.db.read() as conn:
            return {job: as_utc(at) for job, at in conn.execute(_LAST_SLOTS)}

    def get(self, run_id: int) -> RunRow:
        """Raises NotFoundError."""
        with self.db.read() as conn:
            row = conn.execute(_BY_ID, {"id": run_id}).first()
        if row is None:
            raise NotFoundError(f"no run with id {run_id}")
        return RunRow.from_row(row)

    def history(self, job: str | None = None, status: str | None = None, limit: int = 50) -> list[RunRow]:
        query = _HISTORY[job is not None, status is not None]
        with self.db.read() as conn:
            found = conn.execute(query, {"job": job, "status": status, "limit": limit})
            return [RunRow.from_row(r) for r in found]

    def latest_per_job(self) -> dict[str, RunRow]:
        """Each job's most recent run row (by slot)."""
        with self.db.read() as conn:
            return {r.job: RunRow.from_row(r) for r in conn.execute(_LATEST_PER_JOB)}

    def latest_briefs(self) -> dict[str, RunBrief]:
        """Each job's most recent run (highest id), without log or error text."""
        latest = sa.select(sa.func.max(runs.c.id).label("id")).group_by(runs.c.job).subquery()
        with self.db.read() as conn:
            rows = conn.execute(sa.select(*_BRIEF).join(latest, runs.c.id == latest.c.id))
            return {r.job: _brief(r) for r in rows}

    def recent_per_job(self, jobs: Sequence[str], per_job: int) -> dict[str, list[RunBrief]]:
        """The newest `per_job` runs of each of `jobs` (newest slot first, as `history`)."""
        if not jobs:
            return {}
        order = (runs.c.scheduled_for.desc(), runs.c.id.desc())
        rank = sa.func.row_number().over(partition_by=runs.c.job, order_by=order).label("rank")
        ranked = sa.select(*_BRIEF, rank).where(runs.c.job.in_(list(jobs))).subquery()
        query = sa.select(ranked).where(ranked.c.rank <= per_job).order_by(ranked.c.job, ranked.c.rank)
        found: dict[str, list[RunBrief]] = {job: [] for job in jobs}
        with self.db.read() as conn:
            for row in conn.execute(query):
                found[row.job].append(_brief(row))
        return found

    def latest_times(self) -> dict[str, LatestTimes]:
        """Per job with runs, in one pass: its latest scheduled (not manual) slot, when its latest run
        ended and when its latest successful run ended (each None if it has none)."""
        with self.db.read() as conn:
            return {job: LatestTimes(*times) for job, *times in conn.execute(_LATEST_TIMES)}

    def status_counts(self) -> dict[str, int]:
        """Run rows kept, by status."""
        with self.db.read() as conn:
            query = sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
            return {status: int(n) for status, n in conn.execute(query)}
