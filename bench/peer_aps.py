"""One APScheduler 3.11 process sharing a SQLAlchemyJobStore with its peers.

Started (three times) by `bench.exactly_once`: each process adds the same
jobs (replace_existing) to the shared PostgreSQL job store, runs until SIGTERM,
and appends one line per executed run (pid, job id, scheduled time) to the
sink file. APScheduler 3 has no cross-process claim, so peers run the same slots.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from datetime import UTC, datetime
from typing import Any


def touch() -> None:
    """The trivial job body (stored in the job store by reference)."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--anchor", type=float, required=True, help="epoch seconds of the first slot")
    parser.add_argument("--sink", required=True)
    args = parser.parse_args()

    from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.base import ConflictingIdError
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    fd = os.open(args.sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def on_event(event: Any) -> None:
        kind = "ran" if event.code == EVENT_JOB_EXECUTED else "missed"
        os.write(fd, f"{pid} {event.job_id} {event.scheduled_run_time.timestamp():.6f} {kind}\n".encode())

    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=args.url)},
        executors={"default": ThreadPoolExecutor(8)},
        job_defaults={"misfire_grace_time": 30, "coalesce": False},
        timezone=UTC,
    )
    scheduler.add_listener(on_event, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED)
    anchor = datetime.fromtimestamp(args.anchor, UTC)
    for i in range(args.jobs):
        trigger = IntervalTrigger(seconds=args.interval, start_date=anchor, timezone=UTC)
        try:
            scheduler.add_job("bench.peer_aps:touch", trigger, id=f"j{i:05d}", replace_existing=True)
        except ConflictingIdError:
            pass  # a peer added it between our look-up and insert
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scheduler.start()
    print("started", flush=True)
    while not stop.wait(0.5):
        pass
    scheduler.shutdown(wait=True)
    os.close(fd)


if __name__ == "__main__":
    main()
