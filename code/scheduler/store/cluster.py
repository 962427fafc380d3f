"""Instances (membership, heartbeats) and named leases (the leader lease)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.store.db import Database, upsert_insert
from scheduler.store.reads import fields_of
from scheduler.store.schema import instances, leases

LEADER = "leader"


@dataclass(frozen=True)
class LeaderFence:
    """The lease a leader's write was decided under; the write applies only while it is still held."""

    name: str
    holder: str
    term: int

    def holds(self) -> sa.ColumnElement[bool]:
        """A WHERE condition: the lease still has this holder and term (checked in the same statement)."""
        return sa.exists(
            sa.select(leases.c.name).where(
                leases.c.name == self.name, leases.c.holder == self.holder, leases.c.term == self.term
            )
        )


@dataclass(frozen=True)
class InstanceRow:
    id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    stopped_at: datetime | None
    status: str
    jobs: list[str]
    problems: list[dict[str, str]]

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> InstanceRow:
        return cls(**fields_of(row._mapping, cls))


@dataclass(frozen=True)
class LeaseRow:
    name: str
    holder: str | None
    term: int
    acquired_at: datetime | None
    expires_at: datetime | None


class ClusterRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, row: InstanceRow) -> None:
        with self.db.write() as conn:
            conn.execute(instances.insert().values(**row.__dict__))

    def update_loaded(self, instance: str, jobs: list[str], problems: list[dict[str, str]]) -> None:
        with self.db.write() as conn:
            conn.execute(
                instances.update().where(instances.c.id == instance).values(jobs=jobs, problems=problems)
            )

    def heartbeat(self, instance: str, now: datetime, expires_at: datetime) -> bool:
        """Renew membership. False if the row was marked dead: this instance was declared lost."""
        with self.db.write() as conn:
            result = conn.execute(
                instances.update()
                .where(instances.c.id == instance, instances.c.status == "alive")
                .values(heartbeat_at=now, expires_at=expires_at)
            )
            return result.rowcount == 1

    def revive(self, instance: str, now: datetime, expires_at: datetime) -> None:
        """Mark a row declared dead alive again (the instance was only cut off)."""
        with self.db.write() as conn:
            conn.execute(
                instances.update()
                .where(instances.c.id == instance)
                .values(status="alive", stopped_at=None, heartbeat_at=now, expires_at=expires_at)
            )

    def mark_stopped(self, instance: str, now: datetime) -> None:
        with self.db.write() as conn:
            conn.execute(
                instances.update()
                .where(instances.c.id == instance)
                .values(status="stopped", stopped_at=now, expires_at=now)
            )

    def mark_expired_dead(self, now: datetime, fence: LeaderFence | None = None) -> list[InstanceRow]:
        """Alive instances whose heartbeat lapsed become 'dead'; returns them.

        With a fence, nothing changes unless that leader lease is still held.
        """
        condition = [instances.c.status == "alive", instances.c.expires_at < now]
        if fence is not None:
            condition.append(fence.holds())
        with self.db.write() as conn:
            result = conn.execute(
                instances.update()
                .where(*condition)
                .values(status="dead", stopped_at=now)
                .returning(*instances.c)
            )
            return [InstanceRow.from_row(r) for r in result]

    def mark_dead(self, instance: str, now: datetime) -> None:
        with self.db.write() as conn:
            conn.execute(
                instances.update()
                .where(instances.c.id == instance, instances.c.status == "alive")
                .values(status="dead", stopped_at=now)
            )

    def alive(self, now: datetime) -> list[InstanceRow]:
        with self.db.read() as conn:
            query = sa.select(instances).where(instances.c.status == "alive", instances.c.expires_at >= now)
            return [InstanceRow.from_row(r) for r in conn.execute(query.order_by(instances.c.started_at))]

    def recent(self, limit: int = 50) -> list[InstanceRow]:
        with self.db.read() as conn:
            query = sa.select(instances).order_by(instances.c.started_at.desc()).limit(limit)
            return [InstanceRow.from_row(r) for r in conn.execute(query)]

    def prune(self, before: datetime) -> int:
        with self.db.write() as conn:
            result = conn.execute(
                instances.delete().where(instances.c.status != "alive", instances.c.stopped_at < before)
            )
            return int(result.rowcount)

    # -- leases ---------------------------------------------------------------

    def acquire(self, name: str, holder: str, now: datetime, expires_at: datetime) -> int | None:
        """Take or renew lease `name`. Returns the term held, or None if another holds it.

        The term goes up each time the holder changes, so actions can be tagged
        with the term they were decided under.
        """
        with self.db.write() as conn:
            conn.execute(
                upsert_insert(conn.dialect.name, leases)
                .values(name=name, term=0)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            same = leases.c.holder == holder
            result = conn.execute(
                leases.update()
                .where(
                    leases.c.name == name,
                    sa.or_(same, leases.c.holder.is_(None), leases.c.expires_at < now),
                )
                .values(
                    holder=holder,
                    term=sa.case((same, leases.c.term), else_=leases.c.term + 1),
                    acquired_at=sa.case((same, leases.c.acquired_at), else_=now),
                    expires_at=expires_at,
                )
                .returning(leases.c.term)
            ).first()
            return None if result is None else int(result.term)

    def release(self, name: str, holder: str) -> None:
        """Give the lease up now (no-op if another holds it); a peer can take it at once."""
        with self.db.write() as conn:
            conn.execute(
                leases.update()
                .where(leases.c.name == name, leases.c.holder == holder)
                .values(holder=None, expires_at=None)
            )

    def lease(self, name: str) -> LeaseRow | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.name == name)).first()
        if row is None:
            return None
        return LeaseRow(row.name, row.holder, row.term, row.acquired_at, row.expires_at)
