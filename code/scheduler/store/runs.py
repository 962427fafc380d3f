"""Run records: ends of runs, leases, requeueing and reaping (claiming: claims.py; reading: history.py).

Finishing a run is a conditional UPDATE on (id, fence, status='running'), so an
instance whose lease was taken away cannot overwrite what the new owner recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.store import bulk
from scheduler.store.bulk import CHUNK
from scheduler.store.claims import Claim, Claimed, Owner, RunClaims
from scheduler.store.cluster import LeaderFence
from scheduler.store.db import Database
from scheduler.store.history import RunReads, RunRow
from scheduler.store.schema import FINAL_STATUSES as FINAL
from scheduler.store.schema import fenced, runs

__all__ = ["DIED_WHILE_RUNNING", "Claim", "Claimed", "Outcome", "Owner", "RunRepository"]

DIED_WHILE_RUNNING = "died while running it"  # ends the error text of a run its daemon died under


@dataclass(frozen=True)
class Outcome:
    """The end of a run, as the worker reports it. Status `queued`: a run that never began,
    handed back (its row is queued again, for any instance to take)."""

    run_id: int
    fence: int
    status: str
    finished_at: datetime
    started_at: datetime | None = None  # when the job function began (after jitter)
    attempt: int = 1
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    log: str | None = None
    log_truncated: bool = False


class RunRepository(RunClaims, RunReads):
    """Every query on the runs table: claims (RunClaims), reads (RunReads), and here ends and leases."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def finish(self, outcomes: Sequence[Outcome]) -> list[int]:
        """Record run ends in one transaction; return the ids whose lease was lost."""
        lost: list[int] = []
        with self.db.write() as conn:
            for start in range(0, len(outcomes), CHUNK):
                chunk = outcomes[start : start + CHUNK]
                distinct = len({o.run_id for o in chunk}) == len(chunk)
                if conn.dialect.name == "sqlite" and distinct:
                    lost += bulk.finish_all(conn, [bulk.finish_params(o) for o in chunk])
                    continue
                if conn.dialect.name == "postgresql" and distinct:
                    # One statement per chunk: a round trip per run capped the recorder at ~3,000 runs/s.
                    done = set(conn.execute(bulk.finish_many(chunk)).scalars())
                    lost += [o.run_id for o in chunk if o.run_id not in done]
                    continue
                for o in chunk:
                    if conn.execute(bulk.FINISH, bulk.finish_params(o)).rowcount == 0:
                        lost.append(o.run_id)
        return lost

    def mark_started(self, marks: Sequence[tuple[int, int, datetime]]) -> None:
        """Write the start of runs still executing (id, fence, at): from then on their job is busy
        for every instance's skip-if-running check."""
        if not marks:
            return
        params = [{"m_id": i, "m_fence": f, "m_at": at} for i, f, at in marks]
        with self.db.write() as conn:
            for start in range(0, len(params), CHUNK):
                conn.execute(_MARK_STARTED, params[start : start + CHUNK])

    def set_attempt(self, run_id: int, fence: int, attempt: int) -> bool:
        """Write the attempt a run is at; False if its lease was lost."""
        return self._write_running(run_id, fence, attempt=attempt)

    def note_stack(self, run_id: int, fence: int, stack: str) -> bool:
        """Keep the stack of a run stuck past its timeout on its row while it runs; the end replaces it."""
        return self._write_running(run_id, fence, error_traceback=bulk.text_value(stack))

    def _write_running(self, run_id: int, fence: int, **values: Any) -> bool:
        with self.db.write() as conn:
            return conn.execute(runs.update().where(fenced(run_id, fence)).values(**values)).rowcount == 1

    def renew(self, owner: str, lease_until: datetime, ids: Collection[int] | None = None) -> int:
        """Extend the leases of this instance's running runs (only `ids`, if given); returns how many.

        The ids are sent as ranges of consecutive ids (a burst's claims are one or a few): a
        heartbeat renewing 10,000 runs is one short statement, not twenty IN lists of 500.
        """
        if ids is not None and not ids:
            return 0
        condition = [runs.c.owner == owner, runs.c.status == "running"]
        renewed = 0
        with self.db.write() as conn:
            if ids is None:
                result = conn.execute(runs.update().where(*condition).values(lease_expires_at=lease_until))
                return int(result.rowcount)
            spans = bulk.ranges(sorted(ids))
            for start in range(0, len(spans), CHUNK):
                chunk = sa.or_(*(runs.c.id.between(lo, hi) for lo, hi in spans[start : start + CHUNK]))
                result = conn.execute(
                    runs.update().where(*condition, chunk).values(lease_expires_at=lease_until)
                )
                renewed += int(result.rowcount)
        return renewed

    def requeue(self, run_ids: Sequence[int]) -> int:
        """Put abandoned runs back in the queue (a retry after their owner died)."""
        if not run_ids:
            return 0
        with self.db.write() as conn:
            result = conn.execute(
                runs.update()
                .where(runs.c.id.in_(list(run_ids)), runs.c.status == "abandoned")
                .values(status="queued", owner=None, finished_at=None)
            )
            return int(result.rowcount)

    def reap(
        self,
        now: datetime,
        *,
        owner: str | None = None,
        reason: str,
        fence: LeaderFence | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[RunRow]:
        """Mark running runs abandoned: those whose lease expired, or all of `owner`'s
        (only those in `ids` if given).

        With a leader fence, nothing is reaped unless that leader lease is still held.
        """
        condition = [runs.c.owner == owner if owner else runs.c.lease_expires_at < now]
        if ids is not None:
            condition.append(runs.c.id.in_(list(ids)))
        if fence is not None:
            condition.append(fence.holds())
        with self.db.write() as conn:
            result = conn.execute(
                runs.update()
                .where(runs.c.status == "running", *condition)
                .values(
                    status="abandoned",
                    finished_at=now,
                    fence=runs.c.fence + 1,
                    lease_expires_at=None,
                    error_type="Abandoned",
                    error_message=reason,
                )
                .returning(*runs.c)
            )
            return [RunRow.from_row(r) for r in result]

    def reap_local(self, host: str, is_alive: Callable[[int], bool], now: datetime) -> list[RunRow]:
        """Abandon at once the running runs of processes on this host that have died."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(runs.c.owner, runs.c.pid)
                .where(runs.c.status == "running", runs.c.host == host)
                .distinct()
            ).all()
        reaped: list[RunRow] = []
        for owner, pid in rows:
            if owner and pid is not None and not is_alive(pid):
                reason = f"process {pid} on {host} {DIED_WHILE_RUNNING}"
                reaped += self.reap(now, owner=owner, reason=reason)
        return reaped

    def prune(self, before: datetime) -> int:
        """Delete finished runs whose slot is older than `before`; returns how many."""
        with self.db.write() as conn:
            result = conn.execute(
                runs.delete().where(runs.c.scheduled_for < before, runs.c.status.in_(FINAL))
            )
            return int(result.rowcount)


# Run for every batch of starts: built once, as the claim statements in claims.py are.
_MARK_STARTED = (
    runs.update()
    .where(fenced(sa.bindparam("m_id"), sa.bindparam("m_fence")), runs.c.started_at.is_(None))
    .values(started_at=sa.bindparam("m_at"))
)
