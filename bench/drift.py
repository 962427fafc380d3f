"""Drift of a 1 s job whose body takes 200 ms, after `duration` seconds.

Drift = (start of the last run - start of the first) - (runs - 1) x interval:
how far the start times slid off a fixed-rate grid. A scheduler that sleeps
the interval after each run (timeloop) drifts by the body's duration per run.
Missed or skipped runs are counted too, so a zero drift cannot hide a gap.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import database, main_with, settings_for, write_jobs

DEFAULTS: dict[str, Any] = {"impl": "ours", "duration": 120.0, "interval": 1.0, "body_s": 0.2}


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    runners = {"ours": _ours, "apscheduler": _apscheduler, "timeloop": _timeloop}
    starts = sorted(runners[p["impl"]](p))[1:]  # the first run pays for imports and warm-up
    if len(starts) < 2:
        return {
            **p,
            "runs": len(starts),
            "drift_s": None,
            "expected_runs": int(p["duration"] / p["interval"]) - 1,
        }
    span = starts[-1] - starts[0]
    periods = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    return {
        **p,
        "runs": len(starts),
        "drift_s": span - (len(starts) - 1) * p["interval"],
        "mean_period_s": span / (len(starts) - 1),
        "max_period_s": max(periods),
        "expected_runs": int(p["duration"] / p["interval"]) - 1,
    }


def _ours(p: dict[str, Any]) -> list[float]:
    import sqlalchemy as sa
    from scheduler.daemon.wiring import build_service
    from scheduler.store import Store
    from scheduler.store.schema import runs

    assert p["body_s"] == 0.2, "the generated body sleeps 200 ms"
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        base = Path(tmp)
        with database("sqlite", base) as url:
            write_jobs(base / "jobs", 1, p["interval"], body="sleep200")
            service = build_service(settings_for(base, url, base / "jobs"))
            service.start()
            try:
                time.sleep(p["duration"])
            finally:
                service.request_stop()
                service.shutdown()
            store = Store(url)
            try:
                with store.db.read() as conn:
                    query = sa.select(runs.c.started_at).where(runs.c.status == "succeeded")
                    return [at.timestamp() for at in conn.execute(query).scalars()]
            finally:
                store.dispose()


def _apscheduler(p: dict[str, Any]) -> list[float]:
    from apscheduler.schedulers.background import BackgroundScheduler

    starts: list[float] = []

    def body() -> None:
        starts.append(time.time())
        time.sleep(p["body_s"])

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(body, "interval", seconds=p["interval"])
    scheduler.start()
    try:
        time.sleep(p["duration"])
    finally:
        scheduler.shutdown(wait=True)
    return starts


def _timeloop(p: dict[str, Any]) -> list[float]:
    import logging
    from datetime import timedelta

    from timeloop import Timeloop

    starts: list[float] = []
    loop = Timeloop()
    logging.getLogger("timeloop").setLevel(logging.WARNING)

    @loop.job(interval=timedelta(seconds=p["interval"]))
    def body() -> None:
        starts.append(time.time())
        time.sleep(p["body_s"])

    loop.start(block=False)
    try:
        time.sleep(p["duration"])
    finally:
        loop.stop()
    return starts


if __name__ == "__main__":
    main_with(run)
