"""Dispatch lateness of N interval jobs with trivial bodies: ours vs APScheduler.

Lateness is the moment the job function began minus its scheduled slot. Ours:
`started_at - scheduled_for` from the run rows (started_at is taken just before
the function is called). APScheduler: `time.time()` at the top of the function
minus the slot of its IntervalTrigger grid (same anchors, same interval).

Both use a pool of `pool_size` threads. By default the N jobs are spread evenly
over one interval (`stagger`), so the load is N / interval runs per second;
with `stagger: false` all N fall due in the same instant.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    database,
    main_with,
    proc_cpu_seconds,
    proc_status,
    settings_for,
    staggered_anchors,
    summary_ms,
    write_jobs,
)

DEFAULTS: dict[str, Any] = {
    "impl": "ours",
    "jobs": 100,
    "interval": 10.0,
    "duration": 60.0,
    "warmup": 3.0,
    "db": "sqlite",
    "stagger": True,
    "pool_size": 8,
    "watchdog_interval": None,  # ours only: e.g. "1h" keeps the watchdog's job check out of the window
}


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    result = run_ours(p) if p["impl"] == "ours" else run_apscheduler(p)
    return {**p, **result}


def count_slots(anchor: float, interval: float, begin: float, end: float) -> int:
    """Slots anchor + k*interval (k >= 0) in [begin, end)."""
    first = max(0, math.ceil((begin - anchor) / interval - 1e-9))
    last = math.ceil((end - anchor) / interval - 1e-9) - 1
    return max(0, last - first + 1)


# -- ours ---------------------------------------------------------------------------


def run_ours(p: dict[str, Any]) -> dict[str, Any]:
    from scheduler.daemon.wiring import build_service

    with tempfile.TemporaryDirectory(prefix="bench-lateness-") as tmp:
        base = Path(tmp)
        with database(p["db"], base) as url:
            anchors = staggered_anchors(p["jobs"], p["interval"]) if p["stagger"] else None
            write_jobs(base / "jobs", p["jobs"], p["interval"], anchors=anchors)
            extra = {"watchdog_interval": p["watchdog_interval"]} if p["watchdog_interval"] else {}
            settings = settings_for(base, url, base / "jobs", pool_size=p["pool_size"], **extra)
            service = build_service(settings)
            started = time.monotonic()
            service.start()
            startup = time.monotonic() - started
            try:
                time.sleep(p["warmup"])
                begin = datetime.now(UTC)
                cpu0 = proc_cpu_seconds()
                time.sleep(p["duration"])
                cpu = proc_cpu_seconds() - cpu0
                end = datetime.now(UTC)
                stats = proc_status()
                time.sleep(min(2.0, p["interval"]))  # let runs of the last slots finish and be recorded
            finally:
                service.request_stop()
                service.shutdown()
            rows, expected = _read_runs(url, begin, end)
    late = [
        (r["started_at"] - r["scheduled_for"]).total_seconds() for r in rows if r["status"] == "succeeded"
    ]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "lateness": summary_ms(late),
        "expected_runs": expected,
        "statuses": statuses,
        "not_run": expected - statuses.get("succeeded", 0),
        "cpu_percent": 100 * cpu / p["duration"],
        "startup_s": startup,
        **stats,
    }


def _read_runs(url: str, begin: datetime, end: datetime) -> tuple[list[dict[str, Any]], int]:
    import sqlalchemy as sa
    from scheduler.jobs.effective import schedule_of
    from scheduler.jobs.schedules import slots_between
    from scheduler.store import Store
    from scheduler.store.schema import runs

    store = Store(url)
    try:
        window = (runs.c.scheduled_for >= begin, runs.c.scheduled_for < end)
        with store.db.read() as conn:
            query = sa.select(runs.c.job, runs.c.scheduled_for, runs.c.started_at, runs.c.status).where(
                *window
            )
            rows = [dict(r._mapping) for r in conn.execute(query)]
        expected = 0
        tick = timedelta(microseconds=1)
        for job in store.jobs.all():
            expected += sum(1 for _ in slots_between(schedule_of(job), begin - tick, end - tick))
    finally:
        store.dispose()
    return rows, expected


# -- APScheduler ------------------------------------------------------------------


def run_apscheduler(p: dict[str, Any]) -> dict[str, Any]:
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    n, interval = p["jobs"], p["interval"]
    if p["stagger"]:
        anchors = staggered_anchors(n, interval)
    else:
        first = datetime.fromtimestamp(math.ceil(time.time()) + 1, UTC)
        anchors = [first] * n
    starts: list[tuple[int, float]] = []
    problems = {"missed": 0, "max_instances": 0}
    lock = threading.Lock()

    def body(i: int) -> None:
        starts.append((i, time.time()))

    def on_problem(event: Any) -> None:
        with lock:
            problems["missed" if event.code == EVENT_JOB_MISSED else "max_instances"] += 1

    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(p["pool_size"])},
        job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 1},
        timezone=UTC,
    )
    scheduler.add_listener(on_problem, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    started = time.monotonic()
    for i in range(n):
        trigger = IntervalTrigger(seconds=interval, start_date=anchors[i], timezone=UTC)
        scheduler.add_job(body, trigger, args=[i], id=f"j{i:05d}")
    scheduler.start()
    startup = time.monotonic() - started
    try:
        time.sleep(p["warmup"])
        begin = time.time()
        cpu0 = proc_cpu_seconds()
        time.sleep(p["duration"])
        cpu = proc_cpu_seconds() - cpu0
        end = time.time()
        stats = proc_status()
        time.sleep(min(2.0, interval))
    finally:
        scheduler.shutdown(wait=True)
    anchor_ts = [a.timestamp() for a in anchors]
    late = []
    for i, at in list(starts):
        slot = anchor_ts[i] + math.floor((at - anchor_ts[i]) / interval + 1e-9) * interval
        if begin <= slot < end:
            late.append(at - slot)
    expected = sum(count_slots(a, interval, begin, end) for a in anchor_ts)
    return {
        "lateness": summary_ms(late),
        "expected_runs": expected,
        "statuses": {"succeeded": len(late), **problems},
        "not_run": expected - len(late),
        "cpu_percent": 100 * cpu / p["duration"],
        "startup_s": startup,
        **stats,
    }


if __name__ == "__main__":
    main_with(run)
