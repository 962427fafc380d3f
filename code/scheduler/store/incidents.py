"""Incidents: one open row per (subject, kind), across processes.

One open incident per (subject, kind) holds because of the partial unique
index `uq_incidents_open`: opening is INSERT ... ON CONFLICT DO NOTHING,
closing is a conditional UPDATE ... WHERE closed_at IS NULL that changes
exactly one row. Each transition queues its notice (a payload the caller
built before the transaction) in the same transaction, see `store.outbox`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.store.db import Database, upsert_insert
from scheduler.store.outbox import insert_notice
from scheduler.store.reads import fields_of
from scheduler.store.schema import incidents

Payload = dict[str, Any] | None  # None: Slack is not configured, queue nothing


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
        values = fields_of(row._mapping, cls)
        values["details"] = dict(values["details"] or {})
        return cls(**values)


@dataclass(frozen=True)
class Opening:
    """The opening message of an incident that was recorded late (see `record_outage`)."""

    payload: dict[str, Any]
    sent_at: datetime | None  # None: not delivered yet, queue it
    slack_ts: str | None


class IncidentRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def open_incident(
        self, subject: str, kind: str, summary: str, details: dict[str, Any], now: datetime, payload: Payload
    ) -> IncidentRow | None:
        """Open the incident and queue `payload` as its opening notice.

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
            if payload is None:
                return incident
            insert_notice(conn, incident.id, "open", payload, now)
            conn.execute(incidents.update().where(incidents.c.id == incident.id).values(last_notified_at=now))
            return replace(incident, last_notified_at=now)

    def close_incident(self, incident_id: int, now: datetime, payload: Payload) -> IncidentRow | None:
        """Close an open incident and queue `payload` as its recovery.

        Returns None if it was already closed (by another process): nothing is
        queued. Nothing is queued either if nobody was told it opened.
        """
        with self.db.write() as conn:
            row = _transition(conn, incident_id, "recover", payload, now, closed_at=now)
        return None if row is None else IncidentRow.from_row(row)

    def realert(self, incident_id: int, due_before: datetime, now: datetime, payload: Payload) -> bool:
        """Queue a reminder if the last notice was queued at or before `due_before`.

        False if not due, or another process reminded first.
        """
        due = incidents.c.last_notified_at <= due_before
        with self.db.write() as conn:
            row = _transition(conn, incident_id, "realert", payload, now, due, last_notified_at=now)
        return row is not None

    def update_text(
        self,
        incident_id: int,
        summary: str,
        details: dict[str, Any],
        expected_summary: str,
        now: datetime,
        payload: Payload,
    ) -> bool:
        """Replace the text of an open incident and queue `payload` as an edit of its message.

        The UPDATE matches only while the summary is still `expected_summary`:
        False if the incident closed or another process updated it first.
        """
        unchanged = incidents.c.summary == expected_summary
        with self.db.write() as conn:
            row = _transition(
                conn, incident_id, "update", payload, now, unchanged, summary=summary, details=details
            )
        return row is not None

    def record_outage(
        self,
        subject: str,
        kind: str,
        summary: str,
        details: dict[str, Any],
        opened_at: datetime,
        now: datetime,
        opening: Opening | None,
        recovery: Payload,
    ) -> IncidentRow:
        """Write an incident that opened and closed while the database was away.

        Its opening message was queued outside the database (see
        alerting/spool.py): if it was delivered it is recorded `sent` with its
        ts, so the recovery threads under it; if not, it is queued here, ahead
        of the recovery.
        """
        with self.db.write() as conn:
            sent_ts = opening.slack_ts if opening is not None and opening.sent_at is not None else None
            row = conn.execute(
                incidents.insert()
                .values(
                    subject=subject,
                    kind=kind,
                    opened_at=opened_at,
                    closed_at=now,
                    summary=summary,
                    details=details,
                    last_notified_at=None if opening is None else (opening.sent_at or now),
                    slack_ts=sent_ts,
                )
                .returning(*incidents.c)
            ).one()
            incident = IncidentRow.from_row(row)
            if opening is None:
                return incident
            sent = opening.sent_at is not None
            insert_notice(conn, incident.id, "open", opening.payload, now, sent=sent, sent_ts=sent_ts)
            if recovery is not None:
                insert_notice(conn, incident.id, "recover", recovery, now)
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


def _transition(
    conn: sa.Connection,
    incident_id: int,
    event: str,
    payload: Payload,
    now: datetime,
    *conditions: sa.ColumnElement[bool],
    **values: Any,
) -> sa.Row[Any] | None:
    """Write `values` on the incident while it is open (and `conditions` hold), and queue `payload`
    as its `event` notice if anyone was told it opened. Returns the row as written, or None (and
    queues nothing) when another process closed or changed it first."""
    row = conn.execute(
        incidents.update()
        .where(incidents.c.id == incident_id, incidents.c.closed_at.is_(None), *conditions)
        .values(**values)
        .returning(*incidents.c)
    ).first()
    if row is not None and payload is not None and row.last_notified_at is not None:
        insert_notice(conn, incident_id, event, payload, now)
    return row
