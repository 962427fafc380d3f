"""Job definitions as loaded, operator overrides (pause, schedule) and their audit trail."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from scheduler.errors import NotFoundError
from scheduler.store import reads
from scheduler.store.db import Database, upsert_insert
from scheduler.store.reads import JobRow as JobRow  # its home; imported from here too
from scheduler.store.reads import instant
from scheduler.store.schema import audit, jobs

# Overrides written by one instance are read by others through `changed_since`;
# the overlap absorbs commits that land slightly out of timestamp order.
CHANGE_OVERLAP = timedelta(seconds=5)

# The reads the CLI also runs without SQLAlchemy: their text is in `reads`, typed here by the table.
_ALL = sa.text(reads.JOBS_ALL).columns(*jobs.c)
_BY_NAME = sa.text(reads.JOB_BY_NAME).columns(*jobs.c)
# The stamps untyped (decoded by `reads.instant`): typing 10,000 of them costs more than the query.
_STAMPS = sa.text("SELECT jobs.name, jobs.updated_at FROM jobs WHERE jobs.updated_at >= :since").bindparams(
    sa.bindparam("since", type_=jobs.c.updated_at.type)
)


class Declared(Protocol):
    """What the store keeps of a job declared in code (a `JobSpec`)."""

    @property
    def name(self) -> str: ...

    def definition(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    job: str | None
    details: dict[str, Any]


class JobRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def sync(self, specs: Iterable[Declared], now: datetime) -> dict[str, JobRow]:
        """Record the loaded definitions; keep anchors and overrides. Returns all rows.

        A job seen for the first time is anchored at the next whole second, so
        its first interval slot comes right after start-up. Concurrent syncs
        from several instances are harmless: the first insert wins the anchor.
        """
        specs = list(specs)
        anchor = (now + timedelta(seconds=1)).replace(microsecond=0)
        with self.db.write() as conn:
            existing = {r.name: r.definition for r in conn.execute(sa.select(jobs.c.name, jobs.c.definition))}
            new = [s for s in specs if s.name not in existing]
            changed = [s for s in specs if s.name in existing and existing[s.name] != s.definition()]
            if new:
                conn.execute(
                    upsert_insert(conn.dialect.name, jobs).on_conflict_do_nothing(index_elements=["name"]),
                    [
                        {
                            "name": s.name,
                            "definition": s.definition(),
                            "schedule": s.describe(),
                            "anchor_at": anchor,
                            "defined_at": now,
                            "updated_at": now,
                            "loaded_at": now,
                        }
                        for s in new
                    ],
                )
            for s in changed:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.name == s.name)
                    .values(definition=s.definition(), schedule=s.describe(), updated_at=now)
                )
            if specs:
                conn.execute(
                    jobs.update().where(jobs.c.name.in_([s.name for s in specs])).values(loaded_at=now)
                )
            return {r.name: JobRow.from_row(r) for r in conn.execute(sa.select(jobs))}

    def all(self) -> list[JobRow]:
        with self.db.read() as conn:
            return [JobRow.from_row(r) for r in conn.execute(_ALL)]

    def names(self) -> set[str]:
        """The names of every job in the database (no definitions decoded)."""
        with self.db.read() as conn:
            return set(conn.execute(sa.select(jobs.c.name)).scalars())

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one())

    def get(self, name: str) -> JobRow:
        """Raises NotFoundError naming the job."""
        with self.db.read() as conn:
            row = conn.execute(_BY_NAME, {"name": name}).first()
        if row is None:
            raise NotFoundError(f"no job named {name!r}")
        return JobRow.from_row(row)

    def changed_since(self, since: datetime, known: Mapping[str, JobRow] | None = None) -> list[JobRow]:
        """The rows updated at or after `since` (less CHANGE_OVERLAP).

        With `known` (the caller's rows), a row stamped with the same `updated_at` as its
        known one is left out, and not read: in the overlap after a sync of 10,000 jobs,
        decoding every row again would cost far more than comparing their stamps.
        """
        recent = jobs.c.updated_at >= since - CHANGE_OVERLAP
        with self.db.read() as conn:
            if known is None:
                return [JobRow.from_row(r) for r in conn.execute(sa.select(jobs).where(recent))]
            stamps = conn.execute(_STAMPS, {"since": since - CHANGE_OVERLAP})
            stale = [n for n, at in stamps if n not in known or known[n].updated_at != instant(at)]
            found: list[sa.Row[Any]] = []
            for start in range(0, len(stale), 500):
                chunk = stale[start : start + 500]
                found.extend(conn.execute(sa.select(jobs).where(recent, jobs.c.name.in_(chunk))))
            return [JobRow.from_row(r) for r in found]

    def set_paused(self, name: str, paused: bool, actor: str, now: datetime) -> JobRow:
        """Pause or resume. Raises NotFoundError."""
        values = {"paused": paused}
        return self._change(name, values, actor, "pause" if paused else "resume", now)

    def set_schedule(
        self,
        name: str,
        actor: str,
        now: datetime,
        *,
        interval: timedelta | None = None,
        cron: str | None = None,
        timezone: str | None = None,
    ) -> JobRow:
        """Override the schedule (interval or cron); neither clears the override.

        The caller validates the schedule (`effective.validate_override`). Raises NotFoundError.
        """
        values = {
            "override_interval_seconds": interval.total_seconds() if interval else None,
            "override_cron": cron,
            "override_timezone": (timezone or "UTC") if cron else None,
        }
        action = "set" if interval or cron else "unset"
        return self._change(name, values, actor, action, now)

    def _change(self, name: str, values: dict[str, Any], actor: str, action: str, now: datetime) -> JobRow:
        with self.db.write() as conn:
            result = conn.execute(
                jobs.update()
                .where(jobs.c.name == name)
                .values(**values, changed_by=actor, changed_at=now, updated_at=now)
            )
            if result.rowcount == 0:
                raise NotFoundError(f"no job named {name!r}")
            details = {k: v for k, v in values.items() if v is not None}
            conn.execute(audit.insert().values(at=now, actor=actor, action=action, job=name, details=details))
            row = conn.execute(sa.select(jobs).where(jobs.c.name == name)).one()
        return JobRow.from_row(row)

    def add_audit(
        self, actor: str, action: str, job: str | None, details: dict[str, Any], now: datetime
    ) -> None:
        with self.db.write() as conn:
            conn.execute(audit.insert().values(at=now, actor=actor, action=action, job=job, details=details))

    def audit_log(self, job: str | None = None, limit: int = 50) -> list[AuditEntry]:
        query = sa.select(audit).order_by(audit.c.id.desc()).limit(limit)
        if job is not None:
            query = query.where(audit.c.job == job)
        with self.db.read() as conn:
            return [AuditEntry(r.at, r.actor, r.action, r.job, dict(r.details)) for r in conn.execute(query)]
