"""Claiming run slots: scheduled and catch-up claims in bulk, manual requests, queued runs
(run ends and leases: runs.py; reading: history.py).

A slot is claimed by inserting its row: UNIQUE(job, scheduled_for) plus
ON CONFLICT DO NOTHING lets exactly one instance win it. The overlap policy
(skip or queue while the job is executing anywhere) is applied here, in the
same transaction, under a per-job row lock on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler.errors import StoreError
from scheduler.store import bulk
from scheduler.store.bulk import CHUNK
from scheduler.store.db import Database, upsert_insert
from scheduler.store.schema import FINAL_STATUSES as FINAL
from scheduler.store.schema import jobs, runs


@dataclass(frozen=True)
class Owner:
    """Who claims: the instance id, host and pid written on each run row."""

    instance: str
    host: str
    pid: int


@dataclass(frozen=True)
class Claim:
    job: str
    scheduled_for: datetime
    trigger: str = "schedule"  # schedule | catchup | manual
    status: str = "running"  # running (run it) | queued (run later) | skipped | missed
    overlap: str = "skip"  # the job's overlap policy, applied here (see `_overlap`): skip | queue
    early: bool = False  # claimed ahead of its slot: left unclaimed (not skipped) if the job is busy


@dataclass(frozen=True)
class Claimed:
    """A slot this instance won. `status` is 'running', or 'skipped' if the job was busy."""

    run_id: int
    job: str
    scheduled_for: datetime
    status: str
    fence: int
    trigger: str
    attempt: int = 1  # above 1 when a run whose owner died is retried elsewhere


class RunClaims:
    """The claiming side of the runs table; `RunRepository` adds run ends and leases."""

    db: Database

    def claim(
        self,
        claims: Sequence[Claim],
        owner: Owner,
        now: datetime,
        lease_until: datetime,
        idle: Collection[int] = (),
    ) -> list[Claimed]:
        """Insert the slots' rows in one transaction; return the ones this instance won.

        A slot already claimed by anyone is silently not returned (a lost race
        is not an error). A 'running' claim for a job whose run is executing
        anywhere becomes 'skipped' (or 'queued', per its overlap policy). Runs in
        `idle` (claimed here but waiting for a thread, or ended and not yet
        written) do not make their job busy. Raises StoreUnavailable if the
        database is away.
        """
        return self._claim(claims, owner, now, lease_until, idle, skip_locked=False)[0]

    def claim_some(
        self,
        claims: Sequence[Claim],
        owner: Owner,
        now: datetime,
        lease_until: datetime,
        idle: Collection[int] = (),
    ) -> tuple[list[Claimed], set[str]]:
        """`claim`, but jobs another instance is claiming at this moment are left to it (PostgreSQL:
        SKIP LOCKED), so that instances claiming one burst split it. Returns (won, jobs left):
        a left job's slots are undecided here; claiming them again later finds them taken, or
        wins them if that instance failed.
        """
        return self._claim(claims, owner, now, lease_until, idle, skip_locked=True)

    def _claim(
        self,
        claims: Sequence[Claim],
        owner: Owner,
        now: datetime,
        lease_until: datetime,
        idle: Collection[int],
        *,
        skip_locked: bool,
    ) -> tuple[list[Claimed], set[str]]:
        if not claims:
            return [], set()
        won: list[Claimed] = []
        with self.db.write() as conn:
            names = sorted({c.job for c in claims if c.status == "running"})
            locked, busy = self._lock_and_find_busy(conn, names, idle, skip_locked=skip_locked, started=True)
            left = set(names) - locked
            waiting = self._with_queued(conn, [c.job for c in claims if c.overlap == "queue"])
            rows = []
            for c in claims:
                if c.early and c.job in busy:
                    left.add(c.job)  # decided at the slot itself, when the run may have ended
                if c.job in left:
                    continue
                status = _overlap(c, busy, waiting)
                running = status == "running"
                rows.append(
                    {
                        "job": c.job,
                        "scheduled_for": c.scheduled_for,
                        "trigger": c.trigger,
                        "status": status,
                        "attempt": 1 if running else 0,
                        "owner": owner.instance,
                        "fence": 1,
                        "lease_expires_at": lease_until if running else None,
                        "host": owner.host,
                        "pid": owner.pid,
                        "claimed_at": now,
                        "started_at": None,  # written when the function begins (or with the end)
                        "finished_at": now if status in FINAL else None,  # a queued run has not ended
                    }
                )
            if conn.dialect.name == "sqlite":
                for run_id, job, slot, status, trigger in bulk.insert_claims(conn, rows):
                    won.append(Claimed(run_id, job, slot, status, 1, trigger))
                return won, left
            stmt = _claim_insert(conn.dialect.name)
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start : start + CHUNK]
                for r in conn.execute(stmt, chunk):
                    won.append(Claimed(r.id, r.job, r.scheduled_for, r.status, 1, r.trigger))
        return won, left

    def _lock_and_find_busy(
        self,
        conn: sa.Connection,
        names: list[str],
        idle: Collection[int] = (),
        *,
        skip_locked: bool = False,
        started: bool = False,
    ) -> tuple[set[str], set[str]]:
        """Serialise claims per job, then list the jobs with a run executing. Returns (locked, busy).

        The row locks (PostgreSQL) close the race where two instances claim two
        different slots of one job at once and both see it idle; with
        `skip_locked` the jobs another transaction holds are left out of `locked`.
        SQLite has a single writer already: every job counts as locked. Runs in
        `idle` never count. With `started`, only runs whose start is written count:
        a new slot overtakes a run still waiting for a thread (the instance holding it
        records it missed); without, any running run holds back a queued one.
        """
        locked: set[str] = set()
        busy: set[str] = set()
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            if conn.dialect.name == "postgresql" and skip_locked:
                got = set(conn.execute(_LOCK_JOBS_SKIP, {"names": chunk}).scalars())
                if len(got) < len(chunk):
                    # Left out: locked by another claim, or no job row (not synced yet: claim it).
                    exists = set(conn.execute(_JOBS_OF, {"names": chunk}).scalars())
                    chunk = [n for n in chunk if n in got or n not in exists]
            elif conn.dialect.name == "postgresql":
                conn.execute(_LOCK_JOBS, {"names": chunk})
            locked.update(chunk)
            if chunk:
                rows = conn.execute(_STARTED_OF if started else _RUNNING_OF, {"names": chunk})
                busy.update(job for job, run_id in rows if run_id not in idle)
        return locked, busy

    def _with_queued(self, conn: sa.Connection, names: list[str]) -> set[str]:
        found: set[str] = set()
        unique = sorted(set(names))
        for start in range(0, len(unique), CHUNK):
            found.update(conn.execute(_QUEUED_OF, {"names": unique[start : start + CHUNK]}).scalars())
        return found

    def enqueue(self, job: str, now: datetime) -> int:
        """A manual run request; some instance that knows the job runs it once.

        Its slot is the request time, nudged by a microsecond on a collision.
        """
        with self.db.write() as conn:
            for nudge in range(1000):
                slot = now + timedelta(microseconds=nudge)
                stmt = upsert_insert(conn.dialect.name, runs)
                stmt = stmt.on_conflict_do_nothing(index_elements=["job", "scheduled_for"])
                row = conn.execute(
                    stmt.values(
                        job=job,
                        scheduled_for=slot,
                        trigger="manual",
                        status="queued",
                        claimed_at=now,
                    ).returning(runs.c.id)
                ).first()
                if row is not None:
                    return int(row.id)
        raise StoreError(f"could not queue a run of {job!r}")

    def take_queued(
        self,
        names: Iterable[str],
        owner: Owner,
        now: datetime,
        lease_until: datetime,
        idle: Collection[int] = (),
    ) -> list[Claimed]:
        """Claim queued (manual or retried) runs of jobs this instance knows.

        Each comes back 'running', or 'skipped' when the job is busy. Callers ask
        `any_queued()` first: most of the time nothing is queued.
        """
        known = sorted(set(names))
        if not known:
            return []
        with self.db.write() as conn:
            # Filter in SQL: queued runs of jobs unknown here must not fill the batch and starve ours.
            query = (
                sa.select(runs.c.id, runs.c.job, runs.c.fence, runs.c.trigger)
                .where(runs.c.status == "queued", runs.c.job.in_(known))
                .order_by(runs.c.id)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            queued = list(conn.execute(query.limit(100)))
            if not queued:
                return []
            _, busy = self._lock_and_find_busy(conn, sorted({r.job for r in queued}), idle)
            taken: list[Claimed] = []
            for r in queued:
                if r.job in busy and r.trigger != "manual":
                    continue  # a queued slot waits for the job to be free
                status = "skipped" if r.job in busy else "running"
                busy.add(r.job)  # two queued runs of one job: the second waits or is skipped
                fence = r.fence + 1
                row = conn.execute(
                    runs.update()
                    .where(runs.c.id == r.id, runs.c.status == "queued")
                    .values(
                        status=status,
                        owner=owner.instance,
                        host=owner.host,
                        pid=owner.pid,
                        fence=fence,
                        attempt=runs.c.attempt + (1 if status == "running" else 0),
                        lease_expires_at=lease_until if status == "running" else None,
                        started_at=None,  # written when the function begins (or with the end)
                        finished_at=None if status == "running" else now,
                    )
                    .returning(runs.c.id, runs.c.job, runs.c.scheduled_for, runs.c.trigger, runs.c.attempt)
                ).first()
                if row is not None:
                    attempt = max(1, row.attempt)
                    taken.append(
                        Claimed(row.id, row.job, row.scheduled_for, status, fence, row.trigger, attempt)
                    )
            return taken

    def any_queued(self) -> bool:
        """Most polls find nothing queued: a read answers that without taking the write lock.

        A run queued just after this read is taken at the next poll, as one queued
        just after the write transaction would be.
        """
        with self.db.read() as conn:
            return conn.execute(_ANY_QUEUED).first() is not None


# Statements run on every tick or poll are built once: building and keying one
# costs about as much CPU as executing it.
_NAMES: sa.BindParameter[Any] = sa.bindparam("names", expanding=True)
_LOCK_JOBS = sa.select(jobs.c.name).where(jobs.c.name.in_(_NAMES)).order_by(jobs.c.name).with_for_update()
_LOCK_JOBS_SKIP = (
    sa.select(jobs.c.name)
    .where(jobs.c.name.in_(_NAMES))
    .order_by(jobs.c.name)
    .with_for_update(skip_locked=True)
)
_JOBS_OF = sa.select(jobs.c.name).where(jobs.c.name.in_(_NAMES))
_RUNNING_OF = sa.select(runs.c.job, runs.c.id).where(runs.c.status == "running", runs.c.job.in_(_NAMES))
# Executing: started (a run claimed but waiting for a thread has no started_at yet).
_STARTED_OF = _RUNNING_OF.where(runs.c.started_at.is_not(None))
_QUEUED_OF = sa.select(runs.c.job).where(runs.c.status == "queued", runs.c.job.in_(_NAMES)).distinct()
_ANY_QUEUED = sa.select(runs.c.id).where(runs.c.status == "queued").limit(1)
_CLAIM_INSERTS: dict[str, Any] = {}


def _overlap(claim: Claim, busy: set[str], waiting: set[str]) -> str:
    """The overlap policy, in one place: what a claim becomes, given the jobs executing
    (`busy`) and those with a run queued (`waiting`); updates both sets."""
    status = claim.status
    if status == "running" and claim.job in busy:
        # skip: recorded 'skipped'; queue: one run waits (a second is 'skipped')
        status = "queued" if claim.overlap == "queue" and claim.job not in waiting else "skipped"
    if status == "running":
        busy.add(claim.job)
    if status == "queued":
        waiting.add(claim.job)
    return status


def _claim_insert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING for claims, built once per dialect."""
    if dialect not in _CLAIM_INSERTS:
        stmt = upsert_insert(dialect, runs).on_conflict_do_nothing(index_elements=["job", "scheduled_for"])
        returning = (runs.c.id, runs.c.job, runs.c.scheduled_for, runs.c.status, runs.c.trigger)
        _CLAIM_INSERTS[dialect] = stmt.returning(*returning)
    return _CLAIM_INSERTS[dialect]
