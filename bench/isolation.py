"""Per-run overhead of process isolation, beside thread runs and APScheduler's ProcessPoolExecutor.

One no-op job, run `runs` times one after another (after `warmup` runs), each
timed from the hand-over to the executor until its end is reported:

- ours, thread: `Runner.start()` until the outcome reaches the recorder callback;
- ours, process: the same with `isolation="process"` (a forkserver child per run,
  job module preloaded, output captured, process group reaped);
- APScheduler: `add_job(..., executor="processpool")` of a BackgroundScheduler
  until EVENT_JOB_EXECUTED (a pool of long-lived worker processes; no
  isolation from one run to the next, no kill at a timeout).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import main_with, summary_ms

DEFAULTS: dict[str, Any] = {"runs": 200, "warmup": 5}
JOB = """
from datetime import timedelta
from scheduler import job


@job(interval=timedelta(hours=1), isolation="thread")
def in_thread():
    pass


@job(interval=timedelta(hours=1), isolation="process")
def in_process():
    pass
"""


def noop() -> None:
    """The APScheduler job (imported by name in its pool workers)."""


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        folder = Path(tmp)
        (folder / "iso.py").write_text(JOB)
        ours = _ours(folder, p)
    return {**p, **ours, "apscheduler": summary_ms(_apscheduler(p))}


def _ours(folder: Path, p: dict[str, Any]) -> dict[str, Any]:
    from scheduler.clock import SystemClock
    from scheduler.engine.isolation import ProcessIsolation
    from scheduler.engine.runner import Runner
    from scheduler.jobs.discovery import load_jobs
    from scheduler.store import Claimed, Outcome

    specs = load_jobs(folder).specs
    done = threading.Event()

    def record(_outcome: Outcome) -> None:
        done.set()

    # The daemon runs as `control.py` by path: the forkserver preloads that main module once and
    # children skip re-importing it. Run with -m, this process's main module would be re-imported
    # by every child; a bare stand-in gives the children the daemon's situation.
    sys.modules["__main__"] = types.ModuleType("__main__")
    isolation = ProcessIsolation(folder)
    isolation.prewarm()
    stop = threading.Event()
    runner = Runner(SystemClock(), 1, 65536, record, lambda c, a: None, stop, isolation=isolation)
    out: dict[str, Any] = {}
    for label, name in (("thread", "iso.in_thread"), ("process", "iso.in_process")):
        times = []
        for i in range(p["warmup"] + p["runs"]):
            claimed = Claimed(i + 1, name, datetime.now(UTC), "running", 1, "schedule")
            done.clear()
            began = time.perf_counter()
            runner.start(claimed, specs[name])
            done.wait(30)
            if i >= p["warmup"]:
                times.append(time.perf_counter() - began)
        out[label] = summary_ms(times)
    runner.wait_idle(10)
    runner.shutdown()
    return out


def _apscheduler(p: dict[str, Any]) -> list[float]:
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
    from apscheduler.executors.pool import ProcessPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(executors={"default": ProcessPoolExecutor(2)}, timezone="UTC")
    done = threading.Event()
    scheduler.add_listener(lambda _event: done.set(), EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start()
    times = []
    try:
        for i in range(p["warmup"] + p["runs"]):
            done.clear()
            began = time.perf_counter()
            scheduler.add_job("bench.isolation:noop", "date", run_date=datetime.now(UTC))
            done.wait(30)
            if i >= p["warmup"]:
                times.append(time.perf_counter() - began)
    finally:
        scheduler.shutdown(wait=True)
    return times


if __name__ == "__main__":
    main_with(run)
