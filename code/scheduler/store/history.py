"""Reading run records: one run, history, each job's latest, counts, last slots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.errors import NotFoundError
from scheduler.store.db import Database
from scheduler.store.schema import as_utc, fields_of, runs


class _Timed:
    """The duration of a run that has started and ended, for RunRow and RunBrief."""

    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class RunRow(_Timed):
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
    def from_row(cls, row: sa.Row[Any]) -> RunRow:
        return cls(**fields_of(row, cls))


@dataclass(frozen=True)
class RunBrief(_Timed):
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
            query = (
                sa.select(runs.c.job, sa.func.max(runs.c.scheduled_for))
                .where(runs.c.trigger != "manual")
                .group_by(runs.c.job)
            )
            return {job: as_utc(at) for job, at in conn.execute(query)}

    def get(self, run_id: int) -> RunRow:
        """Raises NotFoundError."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise NotFoundError(f"no run with id {run_id}")
        return RunRow.from_row(row)

    def history(self, job: str | None = None, status: str | None = None, limit: int = 50) -> list[RunRow]:
        query = sa.select(runs).order_by(runs.c.scheduled_for.desc(), runs.c.id.desc()).limit(limit)
        if job is not None:
            query = query.where(runs.c.job == job)
        if status is not None:
            query = query.where(runs.c.status == status)
        with self.db.read() as conn:
            return [RunRow.from_row(r) for r in conn.execute(query)]

    def latest_per_job(self) -> dict[str, RunRow]:
        """Each job's most recent run row (by slot)."""
        latest = sa.select(runs.c.job, sa.func.max(runs.c.id).label("id")).group_by(runs.c.job).subquery()
        with self.db.read() as conn:
            rows = conn.execute(sa.select(runs).join(latest, runs.c.id == latest.c.id))
            return {r.job: RunRow.from_row(r) for r in rows}

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

    def finish_times(self) -> dict[str, tuple[datetime | None, datetime | None]]:
        """Per job: when its latest run ended, and when its latest successful run ended."""
        succeeded = sa.case((runs.c.status == "succeeded", runs.c.finished_at))
        query = sa.select(runs.c.job, sa.func.max(runs.c.finished_at), sa.func.max(succeeded)).group_by(
            runs.c.job
        )
        with self.db.read() as conn:
            return {
                job: (as_utc(last) if last else None, as_utc(ok) if ok else None)
                for job, last, ok in conn.execute(query)
            }

    def count_by_status(self) -> dict[tuple[str, str], int]:
        with self.db.read() as conn:
            query = sa.select(runs.c.job, runs.c.status, sa.func.count()).group_by(runs.c.job, runs.c.status)
            return {(job, status): int(n) for job, status, n in conn.execute(query)}
