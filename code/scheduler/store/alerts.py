"""Incidents, the notice outbox, and the run facts the watchdog reads.

One open incident per (subject, kind) holds across processes because of the
partial unique index `uq_incidents_open`: opening is INSERT ... ON CONFLICT
DO NOTHING, closing is a conditional UPDATE ... WHERE closed_at IS NULL that
changes exactly one row. A notice is written to the outbox in the same
transaction as the transition that caused it, so a transition is never
recorded without its notice, nor a notice queued twice for one transition.

Sending is claimed: a sender marks due rows `claimed_by`/`claimed_until`
(FOR UPDATE SKIP LOCKED on PostgreSQL) and only the claimant may mark the row
`sent`, `failed`, or due again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler.store.db import Database, upsert_insert
from scheduler.store.history import RunRow
from scheduler.store.schema import as_utc, incidents, outbox, runs

OUTCOMES = ("succeeded", "failed", "timed_out")  # what counts toward a failure streak
YIELD_EVERY = 50  # jobs read between two GIL hand-overs in `activity`
Notice = Callable[["IncidentRow"], dict[str, Any] | None]


@dataclass(frozen=True)
class IncidentRow:
    id: int
    subject: str
    kind: str
    opened_at: datetime
    closed_at: datetime | None
    summary: str
    details: dict[str, Any]
    last_notified_at: datetime | None  # when a notice about it was last queued
    slack_ts: str | None  # the ts of its opening message (token mode), to thread the recovery

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.kind)

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> IncidentRow:
        m = row._mapping
        values = {name: m[name] for name in cls.__dataclass_fields__}
        values["details"] = dict(values["details"] or {})
        return cls(**values)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    incident_id: int | None
    event: str
    payload: dict[str, Any]
    created_at: datetime
    status: str  # pending | sent | failed
    attempts: int
    next_attempt_at: datetime
    claimed_by: str | None
    claimed_until: datetime | None
    sent_at: datetime | None
    last_error: str | None
    slack_ts: str | None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> OutboxRow:
        m = row._mapping
        values = {name: m[name] for name in cls.__dataclass_fields__}
        values["payload"] = dict(values["payload"])
        return cls(**values)


@dataclass(frozen=True)
class ClaimedNotice:
    """An outbox row this sender now holds, and the message to thread it under (if any)."""

    row: OutboxRow
    thread_ts: str | None


@dataclass(frozen=True)
class Activity:
    """Per-job run facts, read in one transaction."""

    last_started: dict[str, datetime] = field(default_factory=dict)
    running: list[RunRow] = field(default_factory=list)
    outcomes: dict[str, list[RunRow]] = field(default_factory=dict)  # newest first


class AlertRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- incidents ------------------------------------------------------------

    def open_incident(
        self,
        subject: str,
        kind: str,
        summary: str,
        details: dict[str, Any],
        now: datetime,
        payload: dict[str, Any] | None,
    ) -> IncidentRow | None:
        """Open the incident and queue `payload` as its notice (None: queue nothing).

        Returns None when it is already open (here or by another process): the
        lost race is not an error and queues nothing.
        """
        with self.db.write() as conn:
            stmt = upsert_insert(conn.dialect.name, incidents).on_conflict_do_nothing(
                index_elements=["subject", "kind"], index_where=incidents.c.closed_at.is_(None)
            )
            row = conn.execute(
                stmt.values(
                    subject=subject, kind=kind, opened_at=now, summary=summary, details=details
                ).returning(*incidents.c)
            ).first()
            if row is None:
                return None
            incident = IncidentRow.from_row(row)
            return self._queue(conn, incident, "open", lambda _incident: payload, now)

    def record_closed(
        self,
        subject: str,
        kind: str,
        summary: str,
        details: dict[str, Any],
        opened_at: datetime,
        now: datetime,
        notified_at: datetime | None,
        slack_ts: str | None,
        notice: Notice,
    ) -> IncidentRow:
        """Write an incident that opened and closed while the database was away.

        Its opening message, if any, went out directly (`notified_at`, `slack_ts`);
        the recovery is queued only then.
        """
        with self.db.write() as conn:
            row = conn.execute(
                incidents.insert()
                .values(
                    subject=subject,
                    kind=kind,
                    opened_at=opened_at,
                    closed_at=now,
                    summary=summary,
                    details=details,
                    last_notified_at=notified_at,
                    slack_ts=slack_ts,
                )
                .returning(*incidents.c)
            ).one()
            incident = IncidentRow.from_row(row)
            if notified_at is None:
                return incident
            return self._queue(conn, incident, "recover", notice, now)

    def close_incident(self, incident_id: int, now: datetime, notice: Notice) -> IncidentRow | None:
        """Close an open incident and queue `notice(incident)`.

        Returns None if it was already closed (by another process): nothing is queued.
        """
        with self.db.write() as conn:
            row = conn.execute(
                incidents.update()
                .where(incidents.c.id == incident_id, incidents.c.closed_at.is_(None))
                .values(closed_at=now)
                .returning(*incidents.c)
            ).first()
            if row is None:
                return None
            incident = IncidentRow.from_row(row)
            if incident.last_notified_at is None:
                return incident  # nobody was told it opened: a recovery would make no sense
            return self._queue(conn, incident, "recover", notice, now)

    def realert(self, incident_id: int, due_before: datetime, now: datetime, notice: Notice) -> bool:
        """Queue a reminder if the last notice was queued at or before `due_before`.

        False if not due, or another process reminded first.
        """
        with self.db.write() as conn:
            row = conn.execute(
                incidents.update()
                .where(
                    incidents.c.id == incident_id,
                    incidents.c.closed_at.is_(None),
                    incidents.c.last_notified_at <= due_before,
                )
                .values(last_notified_at=now)
                .returning(*incidents.c)
            ).first()
            if row is None:
                return False
            self._queue(conn, IncidentRow.from_row(row), "realert", notice, now)
            return True

    def _queue(
        self, conn: sa.Connection, incident: IncidentRow, event: str, notice: Notice, now: datetime
    ) -> IncidentRow:
        payload = notice(incident)
        if payload is None:
            return incident
        conn.execute(
            outbox.insert().values(
                incident_id=incident.id,
                event=event,
                payload=payload,
                created_at=now,
                status="pending",
                attempts=0,
                next_attempt_at=now,
            )
        )
        if event == "open":
            conn.execute(incidents.update().where(incidents.c.id == incident.id).values(last_notified_at=now))
            incident = replace(incident, last_notified_at=now)
        return incident

    def open_incidents(self, kinds: tuple[str, ...] | None = None) -> list[IncidentRow]:
        query = sa.select(incidents).where(incidents.c.closed_at.is_(None)).order_by(incidents.c.id)
        if kinds is not None:
            query = query.where(incidents.c.kind.in_(kinds))
        with self.db.read() as conn:
            return [IncidentRow.from_row(r) for r in conn.execute(query)]

    def incidents(self, open_only: bool = False, limit: int = 50) -> list[IncidentRow]:
        """Newest first."""
        query = sa.select(incidents).order_by(incidents.c.opened_at.desc(), incidents.c.id.desc())
        if open_only:
            query = query.where(incidents.c.closed_at.is_(None))
        with self.db.read() as conn:
            return [IncidentRow.from_row(r) for r in conn.execute(query.limit(limit))]

    # -- outbox ---------------------------------------------------------------

    def claim_due(self, worker: str, now: datetime, hold: timedelta, limit: int = 20) -> list[ClaimedNotice]:
        """Claim pending notices that are due and not held by a live claim, oldest first.

        A notice waits while an older notice of the same incident is still
        pending, so a recovery never overtakes its opening message (and can
        be threaded under it). Rows another sender holds are skipped, not
        waited for.
        """
        older = outbox.alias("older")
        blocked = (
            sa.select(older.c.id)
            .where(
                older.c.incident_id == outbox.c.incident_id,
                older.c.id < outbox.c.id,
                older.c.status == "pending",
            )
            .exists()
        )
        query = (
            sa.select(outbox.c.id)
            .where(
                outbox.c.status == "pending",
                outbox.c.next_attempt_at <= now,
                sa.or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
                ~blocked,
            )
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self.db.write() as conn:
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(of=outbox, skip_locked=True)
            ids = list(conn.execute(query).scalars())
            if not ids:
                return []
            rows = conn.execute(
                outbox.update()
                .where(outbox.c.id.in_(ids))
                .values(claimed_by=worker, claimed_until=now + hold, attempts=outbox.c.attempts + 1)
                .returning(*outbox.c)
            ).all()
            threads = dict(
                conn.execute(
                    sa.select(incidents.c.id, incidents.c.slack_ts).where(
                        incidents.c.id.in_([r.incident_id for r in rows if r.incident_id is not None])
                    )
                ).all()
            )
        claimed = [OutboxRow.from_row(r) for r in sorted(rows, key=lambda r: r.id)]
        return [
            ClaimedNotice(r, threads.get(r.incident_id) if r.event == "recover" else None) for r in claimed
        ]

    def mark_sent(self, notice_id: int, worker: str, now: datetime, slack_ts: str | None) -> bool:
        """Record that Slack took the notice. False if this worker no longer held it."""
        with self.db.write() as conn:
            row = conn.execute(
                outbox.update()
                .where(*_held(notice_id, worker))
                .values(status="sent", sent_at=now, slack_ts=slack_ts, claimed_until=None, last_error=None)
                .returning(outbox.c.incident_id, outbox.c.event)
            ).first()
            if row is None:
                return False
            if row.event == "open" and slack_ts and row.incident_id is not None:
                conn.execute(
                    incidents.update().where(incidents.c.id == row.incident_id).values(slack_ts=slack_ts)
                )
            return True

    def mark_retry(self, notice_id: int, worker: str, next_attempt_at: datetime, error: str) -> bool:
        """Give the notice back, due again at `next_attempt_at`. False if no longer held."""
        with self.db.write() as conn:
            result = conn.execute(
                outbox.update()
                .where(*_held(notice_id, worker))
                .values(
                    next_attempt_at=next_attempt_at, last_error=error, claimed_by=None, claimed_until=None
                )
            )
            return result.rowcount == 1

    def release(self, notice_id: int, worker: str, next_attempt_at: datetime) -> bool:
        """Give back a claimed notice that was not attempted; its attempt is not counted."""
        with self.db.write() as conn:
            result = conn.execute(
                outbox.update()
                .where(*_held(notice_id, worker))
                .values(
                    claimed_by=None,
                    claimed_until=None,
                    next_attempt_at=next_attempt_at,
                    attempts=outbox.c.attempts - 1,
                )
            )
            return result.rowcount == 1

    def mark_failed(self, notice_id: int, worker: str, error: str) -> bool:
        """Give up on the notice (Slack refused it for good). False if no longer held."""
        with self.db.write() as conn:
            result = conn.execute(
                outbox.update()
                .where(*_held(notice_id, worker))
                .values(status="failed", last_error=error, claimed_until=None)
            )
            return result.rowcount == 1

    def notices(self, incident_id: int | None = None, limit: int = 100) -> list[OutboxRow]:
        query = sa.select(outbox).order_by(outbox.c.id).limit(limit)
        if incident_id is not None:
            query = query.where(outbox.c.incident_id == incident_id)
        with self.db.read() as conn:
            return [OutboxRow.from_row(r) for r in conn.execute(query)]

    # -- run facts ------------------------------------------------------------

    def activity(self, names: Iterable[str], depth: int) -> Activity:
        """The jobs' last starts and `depth` latest outcomes (by slot), and every running run.

        One query per job walks the (job, scheduled_for) index backwards over its
        few newest rows, which hold both facts in a healthy job; only a job whose
        newest rows lack them (long skipped or missed) gets the two narrower
        queries. The cost does not grow with the history kept.
        """
        activity = Activity()
        with self.db.read() as conn:
            for i, name in enumerate(names):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    time.sleep(0)  # let the dispatcher thread take the GIL: slots stay on time
                newest = [
                    RunRow.from_row(r) for r in conn.execute(self._newest, {"job": name, "n": depth + 1})
                ]
                started = next((r.started_at for r in newest if r.started_at is not None), None)
                outcomes = [r for r in newest if r.status in OUTCOMES][:depth]
                if started is None and newest:
                    started = conn.execute(self._last_started, {"job": name}).scalar()
                if len(outcomes) < depth and len(newest) == depth + 1:
                    older = conn.execute(self._outcomes, {"job": name, "n": depth})
                    outcomes = [RunRow.from_row(r) for r in older]
                if started is not None:
                    activity.last_started[name] = as_utc(started)
                activity.outcomes[name] = outcomes
            running = conn.execute(sa.select(runs).where(runs.c.status == "running").order_by(runs.c.id))
            activity.running.extend(RunRow.from_row(r) for r in running)
        return activity

    _newest = (
        sa.select(runs)
        .where(runs.c.job == sa.bindparam("job"))
        .order_by(runs.c.scheduled_for.desc())  # unique per job: no tie to break
        .limit(sa.bindparam("n"))
    )
    _last_started = (
        sa.select(runs.c.started_at)
        .where(runs.c.job == sa.bindparam("job"), runs.c.started_at.is_not(None))
        .order_by(runs.c.scheduled_for.desc())
        .limit(1)
    )
    _outcomes = (
        sa.select(runs)
        .where(runs.c.job == sa.bindparam("job"), runs.c.status.in_(OUTCOMES))
        .order_by(runs.c.scheduled_for.desc())
        .limit(sa.bindparam("n"))
    )


def _held(notice_id: int, worker: str) -> tuple[sa.ColumnElement[bool], ...]:
    return (outbox.c.id == notice_id, outbox.c.claimed_by == worker, outbox.c.status == "pending")
