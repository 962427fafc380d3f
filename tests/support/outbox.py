"""The outbox as a test reads it: every notice queued, and what became of it."""

from __future__ import annotations

import sqlalchemy as sa
from scheduler.store import Store
from scheduler.store.outbox import OutboxRow
from scheduler.store.schema import outbox


def notices(store: Store) -> list[OutboxRow]:
    """Every row of the outbox, oldest first."""
    with store.db.read() as conn:
        return [OutboxRow.from_row(r) for r in conn.execute(sa.select(outbox).order_by(outbox.c.id))]
