"""Statements for many runs at once: the ends of a batch, lease renewal ranges, and on SQLite the
claims and ends of a burst through the driver's executemany.

Going through SQLAlchemy's statement execution cost ~150 us of CPU per row
(parameter processing, one `execute` per outcome to see its rowcount): 1.6 s to
claim and 2 s to end a burst of 10,000 runs. Here each batch is one
`executemany` of a pre-rendered statement with values already in the stored
form, and the rows won are read back in one SELECT. PostgreSQL keeps its
multi-row statements with RETURNING (claims.py, runs.py), which are already one round
trip per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from scheduler.store.reads import RUN_COLUMNS
from scheduler.store.schema import fenced, runs

if TYPE_CHECKING:
    from scheduler.store.runs import Outcome

CHUNK = 500  # rows per statement: bounds the size of IN lists and multi-row VALUES

# What a claim writes: every column of the run but its id (the database's) and what its end writes.
_END_ONLY = ("error_type", "error_message", "error_traceback", "log", "log_truncated")
_CLAIM_COLUMNS = tuple(c for c in RUN_COLUMNS if c != "id" and c not in _END_ONLY)

_INSERT = (
    f"INSERT INTO runs ({', '.join(_CLAIM_COLUMNS)}) VALUES ({', '.join('?' for _ in _CLAIM_COLUMNS)}) "
    "ON CONFLICT (job, scheduled_for) DO NOTHING"
)
_WON = (
    "SELECT id, job, scheduled_for, status, trigger FROM runs WHERE id > ? AND owner = ? AND claimed_at = ?"
)
# The end of a run: as FINISH below (a missing started_at keeps the row's).
_SQLITE_FINISH = (
    "UPDATE runs SET status = ?, started_at = coalesce(?, started_at), finished_at = ?, attempt = ?, "
    "error_type = ?, error_message = ?, error_traceback = ?, log = ?, log_truncated = ?, "
    "lease_expires_at = NULL WHERE id = ? AND fence = ? AND status = 'running'"
)


def stored(at: datetime | None) -> str | None:
    """An instant as SQLite stores it: the text UTCDateTime and SQLAlchemy's SQLite DATETIME make
    of it (naive UTC, always with microseconds), without their per-value Python calls."""
    if at is None:
        return None
    if at.tzinfo is None:
        raise ValueError("naive datetime given to the store; use tz-aware UTC")
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.replace(tzinfo=None).isoformat(" ", "microseconds")


def insert_claims(
    conn: sa.Connection, rows: Sequence[dict[str, Any]]
) -> list[tuple[int, str, datetime, str, str]]:
    """Insert claim rows (ON CONFLICT DO NOTHING); return (id, job, slot, status, trigger) won.

    Every row of one call has the same owner and claimed_at. Inside the write
    transaction no one else inserts, so the rows won are those above the largest id before.
    """
    if not rows:
        return []
    cache: dict[datetime, str | None] = {}  # a burst shares its slot, claim time and lease

    def t(at: datetime | None) -> str | None:
        if at is None:
            return None
        if at not in cache:
            cache[at] = stored(at)
        return cache[at]

    before = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM runs").scalar_one()
    # In _CLAIM_COLUMNS order, spelled out: a generator over the columns cost more than the insert.
    params = [
        (
            r["job"],
            t(r["scheduled_for"]),
            r["trigger"],
            r["status"],
            r["attempt"],
            r["owner"],
            r["fence"],
            t(r["lease_expires_at"]),
            r["host"],
            r["pid"],
            t(r["claimed_at"]),
            t(r["started_at"]),
            t(r["finished_at"]),
        )
        for r in rows
    ]
    conn.exec_driver_sql(_INSERT, params)
    first = rows[0]
    found = conn.exec_driver_sql(_WON, (before, first["owner"], t(first["claimed_at"])))
    # The slot read back is its stored text: the row's own instant is given back instead.
    slot_of = {(p[0], p[1]): r["scheduled_for"] for p, r in zip(params, rows, strict=True)}
    return [(int(r[0]), r[1], slot_of[(r[1], str(r[2]))], r[3], r[4]) for r in found]


def finish_all(conn: sa.Connection, params: Sequence[dict[str, Any]]) -> list[int]:
    """Write run ends (finish_params dicts, distinct run ids); return the ids whose row is no
    longer this run's (lease lost: another fence, or no longer running), which are not written.

    Nearly always every row is still this run's: one executemany, whose total rowcount says
    so, writes them all. Only when it falls short is it undone (a savepoint) and the live rows
    looked up first."""
    if not params:
        return []
    savepoint = conn.begin_nested()
    if conn.exec_driver_sql(_SQLITE_FINISH, [_finish_row(p) for p in params]).rowcount == len(params):
        savepoint.commit()
        return []
    savepoint.rollback()
    ids = [p["o_id"] for p in params]
    marks = ", ".join("?" for _ in ids)
    live = set(
        conn.exec_driver_sql(
            f"SELECT id, fence FROM runs WHERE status = 'running' AND id IN ({marks})", tuple(ids)
        ).all()
    )
    values = [_finish_row(p) for p in params if (p["o_id"], p["o_fence"]) in live]
    if values:
        conn.exec_driver_sql(_SQLITE_FINISH, values)
    return [p["o_id"] for p in params if (p["o_id"], p["o_fence"]) not in live]


def _finish_row(p: dict[str, Any]) -> tuple[Any, ...]:
    """The parameters of _SQLITE_FINISH for one finish_params dict."""
    return (
        p["o_status"],
        stored(p["o_started_at"]),
        stored(p["o_finished_at"]),
        p["o_attempt"],
        p["o_error_type"],
        p["o_error_message"],
        p["o_error_traceback"],
        p["o_log"],
        p["o_log_truncated"],
        p["o_id"],
        p["o_fence"],
    )


def ranges(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted ids as inclusive ranges of consecutive ids: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    spans: list[tuple[int, int]] = []
    for i in ids:
        if spans and i == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], i)
        elif not spans or i != spans[-1][1]:
            spans.append((i, i))
    return spans


# One statement for every outcome: building it per row cost as much CPU as executing it.
# A missing started_at (the run never began) keeps the claim's.
FINISH = (
    runs.update()
    .where(fenced(sa.bindparam("o_id"), sa.bindparam("o_fence")))
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


def finish_params(o: Outcome) -> dict[str, Any]:
    return {
        "o_id": o.run_id,
        "o_fence": o.fence,
        "o_status": o.status,
        "o_started_at": o.started_at,
        "o_finished_at": None if o.status == "queued" else o.finished_at,  # handed back: not ended
        "o_attempt": o.attempt,
        "o_error_type": text_value(o.error_type),
        "o_error_message": text_value(o.error_message),
        "o_error_traceback": text_value(o.error_traceback),
        "o_log": text_value(o.log),
        "o_log_truncated": o.log_truncated,
    }


def finish_many(chunk: Sequence[Outcome]) -> Any:
    """FINISH for many runs at once (PostgreSQL): UPDATE ... FROM (VALUES ...) RETURNING the ids won.

    Run ids must be distinct in `chunk`. Columns are cast, as a VALUES column of NULLs is text.
    """
    names = list(finish_params(chunk[0]))
    types = {"o_id": runs.c.id.type, "o_fence": runs.c.fence.type, "o_attempt": runs.c.attempt.type}
    columns = [sa.column(n, types.get(n) or runs.c[n.removeprefix("o_")].type) for n in names]
    v = sa.values(*columns, name="o").data([tuple(finish_params(o).values()) for o in chunk])
    c = {n: sa.cast(v.c[n], col.type) for n, col in zip(names, columns, strict=True)}
    return (
        runs.update()
        .where(fenced(c["o_id"], c["o_fence"]))
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


def text_value(value: str | None) -> str | None:
    """A job's output may hold NUL characters, which PostgreSQL text refuses; show them escaped."""
    return value.replace("\x00", "\\x00") if value else value
