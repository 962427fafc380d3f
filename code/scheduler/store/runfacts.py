"""The run facts the watchdog reads: per-job last starts, outcomes, skipped streaks; changed rows.

A first pass reads each job's newest rows (`activity`); later passes read only
the rows that changed (`changed`): rows past an id watermark, and the rows
still unsettled at the last pass, by id. Both walk indexes (the primary key,
(job, scheduled_for), status), so the cost follows what changed, not the
history kept.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from scheduler.store.db import Database
from scheduler.store.history import RunRow
from scheduler.store.runs import DIED_WHILE_RUNNING
from scheduler.store.schema import as_utc, runs

OUTCOMES = ("succeeded", "failed", "timed_out")  # what counts toward a failure streak
OVERLOADED = "overloaded:"  # the error text of a slot lost because the instance fell behind
YIELD_EVERY = 50  # jobs read between two GIL hand-overs in `activity`
CHANGED_LIMIT = 50_000  # rows read per `changed` call; the rest at the next call


@dataclass
class Activity:
    """Per-job run facts, read in one transaction."""

    last_started: dict[str, datetime] = field(default_factory=dict)
    running: list[RunRow] = field(default_factory=list)
    outcomes: dict[str, list[RunRow]] = field(default_factory=dict)  # newest first
    skipped: dict[str, int] = field(default_factory=dict)  # skipped slots in a row, newest first
    newest: dict[str, datetime] = field(default_factory=dict)  # the newest slot with a row
    failures: dict[str, int] = field(default_factory=dict)  # failed or timed-out outcomes in a row
    failures_at_least: set[str] = field(default_factory=set)  # jobs whose streak may be longer


@dataclass(frozen=True)
class Overload:
    """Slots an instance lost because it fell behind, in a window."""

    host: str
    count: int
    latest: datetime
    error: str


@dataclass(frozen=True)
class Crash:
    """A run abandoned at a daemon's start because the daemon before it died while running it."""

    host: str
    pid: int | None  # the daemon that died
    run_id: int
    job: str
    scheduled_for: datetime
    abandoned_at: datetime  # when the next daemon found it


class RunFactsRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def activity(self, names: Iterable[str], depth: int) -> Activity:
        """The jobs' last starts, `depth` latest outcomes and skipped streaks (by slot), and running runs.

        One query per job walks the (job, scheduled_for) index backwards over its
        few newest rows, which hold the facts in a healthy job; only a job whose
        newest rows lack them (long skipped or missed) gets the two narrower
        queries. A skipped streak is counted up to `depth`.
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
                streak = next((n for n, r in enumerate(outcomes) if r.status == "succeeded"), len(outcomes))
                activity.failures[name] = streak
                if streak == depth:
                    activity.failures_at_least.add(name)
                activity.skipped[name] = next(
                    (n for n, r in enumerate(newest) if r.status != "skipped"), len(newest)
                )
                if newest:
                    activity.newest[name] = newest[0].scheduled_for
            activity.running.extend(self._running(conn))
        return activity

    def changed(self, after_id: int, ids: Collection[int]) -> list[RunRow]:
        """Rows with an id above `after_id`, and the rows `ids`, by id (at most CHANGED_LIMIT new ones)."""
        with self.db.read() as conn:
            new = conn.execute(
                sa.select(runs).where(runs.c.id > after_id).order_by(runs.c.id).limit(CHANGED_LIMIT)
            )
            rows = [RunRow.from_row(r) for r in new]
            wanted = sorted(set(ids))
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                again = conn.execute(sa.select(runs).where(runs.c.id.in_(chunk)))
                rows.extend(RunRow.from_row(r) for r in again)
        return rows

    def max_id(self) -> int:
        """The highest run id (0 for none)."""
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.max(runs.c.id))).scalar() or 0)

    def running(self) -> list[RunRow]:
        with self.db.read() as conn:
            return self._running(conn)

    def overloads(self, since: datetime) -> list[Overload]:
        """Per host, the slots recorded `missed` with an 'overloaded:' error since `since`."""
        query = (
            sa.select(
                runs.c.host,
                sa.func.count().label("lost"),
                sa.func.max(runs.c.scheduled_for).label("latest"),
                sa.func.max(runs.c.error_message).label("error"),
            )
            .where(
                runs.c.status == "missed",
                runs.c.scheduled_for >= since,
                runs.c.error_message.like(f"{OVERLOADED}%"),
            )
            .group_by(runs.c.host)
            .order_by(runs.c.host)
        )
        with self.db.read() as conn:
            return [
                Overload(r.host or "?", int(r.lost), as_utc(r.latest), str(r.error))
                for r in conn.execute(query)
            ]

    def crashes(self, since: datetime) -> list[Crash]:
        """The runs marked abandoned since `since` because their daemon died, newest first."""
        query = (
            sa.select(
                runs.c.host, runs.c.pid, runs.c.id, runs.c.job, runs.c.scheduled_for, runs.c.finished_at
            )
            .where(
                runs.c.status == "abandoned",
                runs.c.finished_at >= since,
                runs.c.error_message.like(f"% {DIED_WHILE_RUNNING}"),
            )
            .order_by(runs.c.finished_at.desc(), runs.c.id.desc())
        )
        with self.db.read() as conn:
            return [
                Crash(r.host or "?", r.pid, r.id, r.job, as_utc(r.scheduled_for), as_utc(r.finished_at))
                for r in conn.execute(query)
            ]

    def _running(self, conn: sa.Connection) -> list[RunRow]:
        rows = conn.execute(sa.select(runs).where(runs.c.status == "running").order_by(runs.c.id))
        return [RunRow.from_row(r) for r in rows]

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
