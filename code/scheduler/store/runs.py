"""Run records: claiming slots, finishing runs, leases, reaping (reading: history.py).

A slot is claimed by inserting its row: UNIQUE(job, scheduled_for) plus
ON CONFLICT DO NOTHING lets exactly one instance win it. Finishing a run is a
conditional UPDATE on (id, fence, status='running'), so an instance whose
lease was taken away cannot overwrite what the new owner recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler.errors import StoreError
from scheduler.store.cluster import LeaderFence
from scheduler.store.db import Database, upsert_insert
from scheduler.store.history import RunReads, RunRow
from scheduler.store.schema import jobs, runs

ACTIVE = ("running", "queued")
FINAL = ("succeeded", "failed", "timed_out", "skipped", "missed", "abandoned")
_CHUNK = 500


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
    if_busy: str = "skipped"  # what a 'running' claim becomes while the job runs: skipped | queued


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


@dataclass(frozen=True)
class Outcome:
    """The end of a run, as the worker reports it."""

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


class RunRepository(RunReads):
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim(
        self, claims: Sequence[Claim], owner: Owner, now: datetime, lease_until: datetime
    ) -> list[Claimed]:
        """Insert the slots' rows in one transaction; return the ones this instance won.

        A slot already claimed by anyone is silently not returned (a lost race
        is not an error). A 'running' claim for a job that is running anywhere
        becomes 'skipped'. Raises StoreUnavailable if the database is away.
        """
        if not claims:
            return []
        won: list[Claimed] = []
        with self.db.write() as conn:
            names = sorted({c.job for c in claims if c.status == "running"})
            busy = self._lock_and_find_busy(conn, names)
            waiting = self._with_queued(conn, [c.job for c in claims if c.if_busy == "queued"])
            rows = []
            for c in claims:
                status = c.status
                if status == "running" and c.job in busy:
                    status = c.if_busy
                    # overlap="queue" keeps at most one run waiting per job
                    if status == "queued" and c.job in waiting:
                        status = "skipped"
                if status == "running":
                    busy.add(c.job)
                if status == "queued":
                    waiting.add(c.job)
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
                        "started_at": now if running else None,
                        "finished_at": now if status in FINAL else None,  # a queued run has not ended
                    }
                )
            stmt = _claim_insert(conn.dialect.name)
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                for r in conn.execute(stmt, chunk):
                    won.append(Claimed(r.id, r.job, r.scheduled_for, r.status, 1, r.trigger))
        return won

    def _lock_and_find_busy(self, conn: sa.Connection, names: list[str]) -> set[str]:
        """Serialise claims per job, then list the jobs that have a running run.

        The row locks (PostgreSQL) close the race where two instances claim two
        different slots of one job at once and both see it idle. SQLite has a
        single writer already.
        """
        busy: set[str] = set()
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            if conn.dialect.name == "postgresql":
                conn.execute(_LOCK_JOBS, {"names": chunk})
            busy.update(conn.execute(_RUNNING_OF, {"names": chunk}).scalars())
        return busy

    def _with_queued(self, conn: sa.Connection, names: list[str]) -> set[str]:
        found: set[str] = set()
        unique = sorted(set(names))
        for start in range(0, len(unique), _CHUNK):
            found.update(conn.execute(_QUEUED_OF, {"names": unique[start : start + _CHUNK]}).scalars())
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
        self, names: Iterable[str], owner: Owner, now: datetime, lease_until: datetime
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
            busy = self._lock_and_find_busy(conn, sorted({r.job for r in queued}))
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
                        started_at=now if status == "running" else None,
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

    def finish(self, outcomes: Sequence[Outcome]) -> list[int]:
        """Record run ends in one transaction; return the ids whose lease was lost."""
        lost: list[int] = []
        with self.db.write() as conn:
            for start in range(0, len(outcomes), _CHUNK):
                chunk = outcomes[start : start + _CHUNK]
                if conn.dialect.name == "postgresql" and len({o.run_id for o in chunk}) == len(chunk):
                    # One statement per chunk: a round trip per run capped the recorder at ~3,000 runs/s.
                    done = set(conn.execute(_finish_many(chunk)).scalars())
                    lost += [o.run_id for o in chunk if o.run_id not in done]
                    continue
                for o in chunk:
                    if conn.execute(_FINISH, _finish_params(o)).rowcount == 0:
                        lost.append(o.run_id)
        return lost

    def set_attempt(self, run_id: int, fence: int, attempt: int) -> bool:
        with self.db.write() as conn:
            result = conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.fence == fence, runs.c.status == "running")
                .values(attempt=attempt)
            )
            return result.rowcount == 1

    def note_stack(self, run_id: int, fence: int, stack: str) -> bool:
        """Keep the stack of a run stuck past its timeout on its row while it runs; the end replaces it."""
        with self.db.write() as conn:
            result = conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.fence == fence, runs.c.status == "running")
                .values(error_traceback=_text(stack))
            )
            return result.rowcount == 1

    def renew(self, owner: str, lease_until: datetime, ids: Collection[int] | None = None) -> int:
        """Extend the leases of this instance's running runs (only `ids`, if given); returns how many."""
        if ids is not None and not ids:
            return 0
        condition = [runs.c.owner == owner, runs.c.status == "running"]
        renewed = 0
        with self.db.write() as conn:
            if ids is None:
                result = conn.execute(runs.update().where(*condition).values(lease_expires_at=lease_until))
                return int(result.rowcount)
            wanted = sorted(ids)
            for start in range(0, len(wanted), _CHUNK):
                chunk = runs.c.id.in_(wanted[start : start + _CHUNK])
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
                reason = f"process {pid} on {host} died while running it"
                reaped += self.reap(now, owner=owner, reason=reason)
        return reaped

    def prune(self, before: datetime) -> int:
        """Delete finished runs whose slot is older than `before`; returns how many."""
        with self.db.write() as conn:
            result = conn.execute(
                runs.delete().where(runs.c.scheduled_for < before, runs.c.status.in_(FINAL))
            )
            return int(result.rowcount)


# Statements run on every tick or poll are built once: building and keying one
# costs about as much CPU as executing it.
_NAMES: sa.BindParameter[Any] = sa.bindparam("names", expanding=True)
_LOCK_JOBS = sa.select(jobs.c.name).where(jobs.c.name.in_(_NAMES)).order_by(jobs.c.name).with_for_update()
_RUNNING_OF = sa.select(runs.c.job).where(runs.c.status == "running", runs.c.job.in_(_NAMES)).distinct()
_QUEUED_OF = sa.select(runs.c.job).where(runs.c.status == "queued", runs.c.job.in_(_NAMES)).distinct()
_ANY_QUEUED = sa.select(runs.c.id).where(runs.c.status == "queued").limit(1)
_CLAIM_INSERTS: dict[str, Any] = {}


def _claim_insert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING for claims, built once per dialect."""
    if dialect not in _CLAIM_INSERTS:
        stmt = upsert_insert(dialect, runs).on_conflict_do_nothing(index_elements=["job", "scheduled_for"])
        returning = (runs.c.id, runs.c.job, runs.c.scheduled_for, runs.c.status, runs.c.trigger)
        _CLAIM_INSERTS[dialect] = stmt.returning(*returning)
    return _CLAIM_INSERTS[dialect]


# One statement for every outcome: building it per row cost as much CPU as executing it.
# A missing started_at (the run never began) keeps the claim's.
_FINISH = (
    runs.update()
    .where(
        runs.c.id == sa.bindparam("o_id"),
        runs.c.fence == sa.bindparam("o_fence"),
        runs.c.status == "running",
    )
    .values(
        status=sa.bindparam("o_status"),
        started_at=sa.func.coalesce(
            sa.bindparam("o_started_at", type_=runs.c.started_at.type), runs.c.started_at
        ),
        finished_at=sa.bindparam("o_finished_at"),
        attempt=sa.bindparam("o_attempt"),
        error_type=sa.bindparam("o_error_type"),
        error_message=sa.bindparam("o_error_message"),
        error_traceback=sa.bindparam("o_error_traceback"),
        log=sa.bindparam("o_log"),
        log_truncated=sa.bindparam("o_log_truncated"),
        lease_expires_at=None,
    )
)


def _finish_params(o: Outcome) -> dict[str, Any]:
    return {
        "o_id": o.run_id,
        "o_fence": o.fence,
        "o_status": o.status,
        "o_started_at": o.started_at,
        "o_finished_at": o.finished_at,
        "o_attempt": o.attempt,
        "o_error_type": _text(o.error_type),
        "o_error_message": _text(o.error_message),
        "o_error_traceback": _text(o.error_traceback),
        "o_log": _text(o.log),
        "o_log_truncated": o.log_truncated,
    }


def _finish_many(chunk: Sequence[Outcome]) -> Any:
    """_FINISH for many runs at once (PostgreSQL): UPDATE ... FROM (VALUES ...) RETURNING the ids won.

    Run ids must be distinct in `chunk`. Columns are cast, as a VALUES column of NULLs is text.
    """
    names = list(_finish_params(chunk[0]))
    types = {"o_id": runs.c.id.type, "o_fence": runs.c.fence.type, "o_attempt": runs.c.attempt.type}
    columns = [sa.column(n, types.get(n) or runs.c[n.removeprefix("o_")].type) for n in names]
    v = sa.values(*columns, name="o").data([tuple(_finish_params(o).values()) for o in chunk])
    c = {n: sa.cast(v.c[n], col.type) for n, col in zip(names, columns, strict=True)}
    return (
        runs.update()
        .where(runs.c.id == c["o_id"], runs.c.fence == c["o_fence"], runs.c.status == "running")
        .values(
            status=c["o_status"],
            started_at=sa.func.coalesce(c["o_started_at"], runs.c.started_at),
            finished_at=c["o_finished_at"],
            attempt=c["o_attempt"],
            error_type=c["o_error_type"],
            error_message=c["o_error_message"],
            error_traceback=c["o_error_traceback"],
            log=c["o_log"],
            log_truncated=c["o_log_truncated"],
            lease_expires_at=None,
        )
        .returning(runs.c.id)
    )


def _text(value: str | None) -> str | None:
    """A job's output may hold NUL characters, which PostgreSQL text refuses; show them escaped."""
    return value.replace("\x00", "\\x00") if value else value
