"""Idle footprint with 10,000 jobs registered at 60 s intervals: CPU, RSS, threads.

All jobs share one grid (the default anchor), so they fall due together once a
minute. The benchmark waits for the first burst to be run (and, for ours,
recorded), then measures the process's CPU time over the quiet window before
the next burst, as a percentage of one core. RSS and the OS thread count are
read at the end of the window; the peak RSS includes the burst.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    database,
    main_with,
    proc_cpu_seconds,
    proc_status,
    settings_for,
    wait_for,
    write_jobs,
)

DEFAULTS: dict[str, Any] = {"impl": "ours", "jobs": 10_000, "interval": 60.0, "quiet": 30.0, "pool_size": 8}
MARGIN = 2.0  # stop measuring this long before the next burst


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    result = _ours(p) if p["impl"] == "ours" else _apscheduler(p)
    return {**p, **result}


def _burst_budget(p: dict[str, Any]) -> float:
    """The first slot comes within 2 s of start-up; its burst must end well before the next."""
    return 2.0 + 0.8 * p["interval"]


def _measure(next_burst: float, quiet: float) -> dict[str, float]:
    window = min(quiet, next_burst - time.time() - MARGIN)
    if window <= 0.5:
        raise RuntimeError("no quiet window left before the next burst; the first burst ran too long")
    cpu0 = proc_cpu_seconds()
    time.sleep(window)
    cpu = proc_cpu_seconds() - cpu0
    return {"cpu_percent": 100 * cpu / window, "window_s": window, **proc_status()}


def _ours(p: dict[str, Any]) -> dict[str, Any]:
    from scheduler.daemon.wiring import build_service

    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        base = Path(tmp)
        with database("sqlite", base) as url:
            write_jobs(base / "jobs", p["jobs"], p["interval"])
            service = build_service(settings_for(base, url, base / "jobs", pool_size=p["pool_size"]))
            started = time.monotonic()
            service.start()
            startup = time.monotonic() - started
            try:
                burst = time.monotonic()
                wait_for(lambda: service.recorder.written >= p["jobs"], _burst_budget(p), 0.1)
                burst_s = time.monotonic() - burst
                time.sleep(1.0)
                due = service.dispatcher.next_due() or datetime.now(UTC)
                measured = _measure(due.timestamp(), p["quiet"])
            finally:
                service.request_stop()
                service.shutdown()
    return {"startup_s": startup, "burst_s": burst_s, **measured}


def _apscheduler(p: dict[str, Any]) -> dict[str, Any]:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    done = [0]
    lock = threading.Lock()

    def body() -> None:
        with lock:
            done[0] += 1

    first = datetime.fromtimestamp(math.ceil(time.time()) + 1, UTC)
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(p["pool_size"])},
        job_defaults={"misfire_grace_time": None, "coalesce": False},
        timezone=UTC,
    )
    started = time.monotonic()
    for i in range(p["jobs"]):
        scheduler.add_job(body, IntervalTrigger(seconds=p["interval"], start_date=first), id=f"j{i:05d}")
    scheduler.start()
    startup = time.monotonic() - started
    try:
        burst = time.monotonic()
        wait_for(lambda: done[0] >= p["jobs"], _burst_budget(p), 0.1)
        burst_s = time.monotonic() - burst
        time.sleep(1.0)
        measured = _measure(first.timestamp() + p["interval"], p["quiet"])
    finally:
        scheduler.shutdown(wait=True)
    return {"startup_s": startup, "burst_s": burst_s, **measured}


if __name__ == "__main__":
    main_with(run)
