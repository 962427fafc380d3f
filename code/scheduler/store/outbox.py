"""The notice outbox: messages waiting for Slack, claimed by one sender at a time.

A notice is inserted in the same transaction as the incident transition that
caused it (`insert_notice`, called by `store.incidents`), so a transition is
never recorded without its notice, nor a notice queued twice for one
transition. The payload is built by the caller before the transaction.

Sending is claimed: a sender marks due rows `claimed_by`/`claimed_until`
(FOR UPDATE SKIP LOCKED on PostgreSQL) and only the claimant may mark the row
`sent`, `failed`, or due again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler.store.db import Database
from scheduler.store.reads import fields_of
from scheduler.store.schema import incidents, outbox

# Events that refer to the incident's opening message: a reply in its thread, or an edit of it.
THREADED = ("recover", "update")


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
        values = fields_of(row._mapping, cls)
        values["payload"] = dict(values["payload"])
        return cls(**values)


@dataclass(frozen=True)
class ClaimedNotice:
    """An outbox row this sender now holds, and the opening message it refers to (if any)."""

    row: OutboxRow
    thread_ts: str | None


def insert_notice(
    conn: sa.Connection,
    incident_id: int,
    event: str,
    payload: dict[str, Any],
    now: datetime,
    *,
    sent_ts: str | None = None,
    sent: bool = False,
) -> None:
    """Queue one notice inside the caller's transaction (`sent`: record one delivered elsewhere)."""
    conn.execute(
        outbox.insert().values(
            incident_id=incident_id,
            event=event,
            payload=payload,
            created_at=now,
            status="sent" if sent else "pending",
            attempts=1 if sent else 0,
            next_attempt_at=now,
            sent_at=now if sent else None,
            slack_ts=sent_ts,
        )
    )


class OutboxRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim_due(self, worker: str, now: datetime, hold: timedelta, limit: int = 20) -> list[ClaimedNotice]:
        """Claim pending notices that are due and not held by a live claim, oldest first.

        A notice waits while an older notice of the same incident is still
        pending, so a recovery or an update never overtakes its opening
        message (and can refer to it). Rows another sender holds are skipped,
        not waited for.
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
            ClaimedNotice(r, threads.get(r.incident_id) if r.event in THREADED else None) for r in claimed
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
        return self._write_held(
            notice_id,
            worker,
            next_attempt_at=next_attempt_at,
            last_error=error,
            claimed_by=None,
            claimed_until=None,
        )

    def release(self, notice_id: int, worker: str, next_attempt_at: datetime) -> bool:
        """Give back a claimed notice that was not attempted; its attempt is not counted."""
        return self._write_held(
            notice_id,
            worker,
            claimed_by=None,
            claimed_until=None,
            next_attempt_at=next_attempt_at,
            attempts=outbox.c.attempts - 1,
        )

    def mark_failed(self, notice_id: int, worker: str, error: str) -> bool:
        """Give up on the notice (Slack refused it for good). False if no longer held."""
        return self._write_held(notice_id, worker, status="failed", last_error=error, claimed_until=None)

    def _write_held(self, notice_id: int, worker: str, **values: Any) -> bool:
        """Write `values` on a notice this worker still holds; False if it no longer does."""
        with self.db.write() as conn:
            return (
                conn.execute(outbox.update().where(*_held(notice_id, worker)).values(**values)).rowcount == 1
            )


def _held(notice_id: int, worker: str) -> tuple[sa.ColumnElement[bool], ...]:
    return (outbox.c.id == notice_id, outbox.c.claimed_by == worker, outbox.c.status == "pending")
