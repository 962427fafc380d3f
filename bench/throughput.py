"""Recorded-run throughput: runs per second whose start and end are both committed.

`instances` real daemons (`control.py run`) share one database and a set of
short jobs whose demand (jobs / interval runs per second) is above what they
can record. Runs/s = succeeded rows committed between two counts, divided by
the time between the counts. The single-commit floor is a plain INSERT +
COMMIT loop on the same database engine in the same run; the ratio says how
many runs each commit carries.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    database,
    main_with,
    proc_cpu_seconds,
    spawn_instance,
    staggered_anchors,
    stop_process,
    summary_ms,
    wait_for,
    write_jobs,
)

DEFAULTS: dict[str, Any] = {
    "db": "sqlite",
    "instances": 1,
    "jobs": 5000,
    "interval": 2.0,
    "warmup": 8.0,
    "duration": 20.0,
    "floor_s": 3.0,
    "pool_size": 8,
}


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        base = Path(tmp)
        with database(p["db"], base) as url:
            floor = commit_floor(url, p["floor_s"])
            measured = _daemons(p, base, url)
    return {**p, **measured, "floor_commits_per_s": floor, "ratio_to_floor": measured["runs_per_s"] / floor}


def _daemons(p: dict[str, Any], base: Path, url: str) -> dict[str, Any]:
    import sqlalchemy as sa
    from scheduler.store import Store
    from scheduler.store.schema import runs

    write_jobs(base / "jobs", p["jobs"], p["interval"], anchors=staggered_anchors(p["jobs"], p["interval"]))
    store = Store(url)
    store.upgrade()  # migrate once, so the instances do not queue on the migration lock
    procs = [
        spawn_instance(base, url, f"i{k}", base / "jobs", pool_size=p["pool_size"])
        for k in range(p["instances"])
    ]
    try:
        wait_for(lambda: len(store.cluster.alive(datetime.now(UTC))) == p["instances"], 60, 0.1)
        time.sleep(p["warmup"])

        def succeeded() -> int:
            with store.db.read() as conn:
                query = sa.select(sa.func.count()).select_from(runs).where(runs.c.status == "succeeded")
                return int(conn.execute(query).scalar_one())

        cpu0 = [proc_cpu_seconds(proc.pid) for proc in procs]
        n0, t0, w0 = succeeded(), time.monotonic(), datetime.now(UTC)
        time.sleep(p["duration"])
        n1, t1, w1 = succeeded(), time.monotonic(), datetime.now(UTC)
        cpu = [proc_cpu_seconds(proc.pid) - c for proc, c in zip(procs, cpu0, strict=True)]
        with store.db.read() as conn:
            window = (runs.c.scheduled_for >= w0, runs.c.scheduled_for < w1)
            counts = dict(
                conn.execute(
                    sa.select(runs.c.status, sa.func.count()).where(*window).group_by(runs.c.status)
                ).all()
            )
            late = [
                (r.started_at - r.scheduled_for).total_seconds()
                for r in conn.execute(
                    sa.select(runs.c.started_at, runs.c.scheduled_for).where(
                        *window, runs.c.status == "succeeded"
                    )
                )
            ]
    finally:
        for proc in procs:
            stop_process(proc)
        store.dispose()
    return {
        "runs_per_s": (n1 - n0) / (t1 - t0),
        "demand_per_s": p["jobs"] / p["interval"],
        "statuses": {k: int(v) for k, v in counts.items()},
        "lateness": summary_ms(late),
        "cpu_percent_per_instance": [round(100 * c / (t1 - t0), 1) for c in cpu],
    }


def commit_floor(url: str, seconds: float) -> float:
    """Commits per second of a plain one-row INSERT + COMMIT loop on this database."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///") + ".floor"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # as the scheduler's engine sets it
        conn.execute("CREATE TABLE floor (id INTEGER PRIMARY KEY, v REAL)")
        count, deadline = 0, time.monotonic() + seconds
        started = time.monotonic()
        while time.monotonic() < deadline:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO floor (v) VALUES (?)", (time.time(),))
            conn.execute("COMMIT")
            count += 1
        elapsed = time.monotonic() - started
        conn.close()
        return count / elapsed
    import psycopg2

    pg = psycopg2.connect(url)
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE bench_floor (id BIGSERIAL PRIMARY KEY, v DOUBLE PRECISION)")
    pg.commit()
    count, deadline = 0, time.monotonic() + seconds
    started = time.monotonic()
    with pg.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("INSERT INTO bench_floor (v) VALUES (%s)", (time.time(),))
            pg.commit()
            count += 1
    elapsed = time.monotonic() - started
    pg.close()
    return count / elapsed


if __name__ == "__main__":
    main_with(run)
