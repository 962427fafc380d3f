"""Start-up time with 1,000 jobs, and the rate of `next` computations for cron expressions.

Start-up, ours: a real `control.py run` process, from spawn until its instance
row is registered (imports, migration, job import, sync, crash recovery, first
heartbeat) - on a fresh database ("cold") and again on the same database
("warm"); plus `Service.start()` alone, in process. APScheduler: adding the
jobs and `start()` of a BackgroundScheduler, in process (memory job store).

Cron: chained next-slot computations per second, our CronSchedule (cronsim +
zoneinfo) vs APScheduler's CronTrigger, on the same expressions and zones.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    database,
    main_with,
    settings_for,
    spawn_instance,
    stop_process,
    wait_for,
    write_jobs,
)

DEFAULTS: dict[str, Any] = {"what": "startup", "impl": "ours", "jobs": 1000, "db": "sqlite", "seconds": 1.0}
EXPRESSIONS = [
    ("*/5 * * * *", "UTC"),
    ("0 6 * * *", "Europe/London"),
    ("30 2 * * 1-5", "America/New_York"),
    ("0 0 1 * *", "UTC"),
]


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    if p["what"] == "cron":
        return {**p, "rates": _cron(p)}
    if p["impl"] == "apscheduler":
        return {**p, **_aps_startup(p)}
    return {**p, **_ours_startup(p)}


def _ours_startup(p: dict[str, Any]) -> dict[str, Any]:
    from scheduler.daemon.wiring import build_service
    from scheduler.store import Store

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        base = Path(tmp)
        with database(p["db"], base) as url:
            write_jobs(base / "jobs", p["jobs"], 60.0)
            process = [_process_start(base, url, name) for name in ("cold", "warm")]
            store = Store(url)
            settings = settings_for(base, url, base / "jobs")
            service = build_service(settings)
            started = time.monotonic()
            service.start()
            in_process = time.monotonic() - started
            service.request_stop()
            service.shutdown()
            store.dispose()
    return {"process_cold_s": process[0], "process_warm_s": process[1], "service_start_s": in_process}


def _process_start(base: Path, url: str, name: str) -> float:
    from scheduler.store import Store

    started = time.monotonic()
    proc = spawn_instance(base, url, name, base / "jobs")
    store: Store | None = None

    def registered() -> bool:
        nonlocal store
        try:
            store = store or Store(url)
            return proc.pid in {i.pid for i in store.cluster.recent(10)}
        except Exception:
            return False  # the schema is not there yet

    try:
        wait_for(registered, 60, 0.005)
        return time.monotonic() - started
    finally:
        stop_process(proc)
        if store is not None:
            store.dispose()


def _aps_startup(p: dict[str, Any]) -> dict[str, Any]:
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    def body() -> None:
        return None

    started = time.monotonic()
    scheduler = BackgroundScheduler(timezone=UTC)
    for i in range(p["jobs"]):
        scheduler.add_job(body, IntervalTrigger(seconds=60), id=f"j{i:05d}")
    scheduler.start()
    elapsed = time.monotonic() - started
    scheduler.shutdown()
    return {"service_start_s": elapsed}


def _cron(p: dict[str, Any]) -> dict[str, dict[str, float]]:
    from apscheduler.triggers.cron import CronTrigger
    from scheduler.jobs.schedules import CronSchedule

    rates: dict[str, dict[str, float]] = {}
    start = datetime(2026, 3, 1, tzinfo=UTC)
    for expression, zone in EXPRESSIONS:
        ours = CronSchedule(expression, zone)
        theirs = CronTrigger.from_crontab(expression, timezone=zone)

        def ours_next(at: datetime, s: CronSchedule = ours) -> datetime:
            return s.next_after(at)

        def theirs_next(at: datetime, t: CronTrigger = theirs) -> datetime:
            found = t.get_next_fire_time(at, at + timedelta(microseconds=1))
            assert found is not None
            return found

        rates[f"{expression} ({zone})"] = {
            "ours": _rate(ours_next, start, p["seconds"]),
            "apscheduler": _rate(theirs_next, start, p["seconds"]),
        }
    return rates


def _rate(step: Any, start: datetime, seconds: float) -> float:
    count, at = 0, start
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            at = step(at)
        count += 50
    return count / (time.perf_counter() - began)


if __name__ == "__main__":
    main_with(run)
