"""Exactly-once under load: 3 processes, 1,000 jobs at 1 s, on one PostgreSQL database.

Ours: three `control.py run` daemons. APScheduler: three processes sharing a
SQLAlchemyJobStore (`bench.peer_aps`). Every executed run appends
(pid, job, slot) to a sink file; for the slots of the measured window:

- duplicates: executions beyond the first of a (job, slot);
- missed: slots of the window that no process executed.

By default all jobs share one grid (the default anchor), so all three processes
race for the same 1,000 slots each second.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    CODE,
    PYTHON,
    REPO,
    main_with,
    pg_database,
    proc_cpu_seconds,
    spawn_instance,
    stop_process,
    wait_for,
    write_jobs,
)
from bench.lateness import count_slots

DEFAULTS: dict[str, Any] = {
    "impl": "ours",
    "instances": 3,
    "jobs": 1000,
    "interval": 1.0,
    "warmup": 5.0,
    "duration": 120.0,
}


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    with tempfile.TemporaryDirectory(prefix="bench-once-") as tmp:
        base = Path(tmp)
        sink = base / "sink.txt"
        with pg_database() as url:
            if p["impl"] == "ours":
                window, anchors, extra = _ours(p, base, url, sink)
            else:
                window, anchors, extra = _apscheduler(p, base, url, sink)
        counted = _count(sink, window, anchors, p["interval"])
    return {**p, **counted, **extra}


def _count(
    sink: Path, window: tuple[float, float], anchors: dict[str, float], interval: float
) -> dict[str, Any]:
    begin, end = window
    executions: Counter[tuple[str, int]] = Counter()
    by_pid: Counter[str] = Counter()
    for line in sink.read_text().splitlines() if sink.exists() else []:
        pid, job, slot, *kind = line.split()
        if kind and kind[0] != "ran":
            continue
        at = float(slot)
        if begin <= at < end:
            executions[(job, round(at * 1000))] += 1
            by_pid[pid] += 1
    expected = sum(count_slots(a, interval, begin, end) for a in anchors.values())
    return {
        "window_s": end - begin,
        "expected_slots": expected,
        "executions": sum(executions.values()),
        "duplicates": sum(n - 1 for n in executions.values() if n > 1),
        "missed": expected - len(executions),
        "executions_per_process": sorted(by_pid.values(), reverse=True),
    }


def _ours(
    p: dict[str, Any], base: Path, url: str, sink: Path
) -> tuple[tuple[float, float], dict[str, float], dict[str, Any]]:
    import sqlalchemy as sa
    from scheduler.store import Store
    from scheduler.store.schema import runs

    write_jobs(base / "jobs", p["jobs"], p["interval"], body="record")
    os.environ["BENCH_SINK"] = str(sink)
    store = Store(url)
    store.upgrade()
    procs = [spawn_instance(base, url, f"i{k}", base / "jobs") for k in range(p["instances"])]
    try:
        wait_for(lambda: len(store.cluster.alive(datetime.now(UTC))) == p["instances"], 60, 0.1)
        time.sleep(p["warmup"])
        cpu0 = [proc_cpu_seconds(proc.pid) for proc in procs]
        begin = time.time()
        time.sleep(p["duration"])
        end = time.time()
        cpu = [proc_cpu_seconds(proc.pid) - c for proc, c in zip(procs, cpu0, strict=True)]
        time.sleep(min(5.0, p["interval"] * 2))  # let runs of the window's last slots finish
    finally:
        for proc in procs:
            stop_process(proc)
    anchors = {row.name: row.anchor_at.timestamp() for row in store.jobs.all()}
    with store.db.read() as conn:
        window = (
            runs.c.scheduled_for >= datetime.fromtimestamp(begin, UTC),
            runs.c.scheduled_for < datetime.fromtimestamp(end, UTC),
        )
        query = sa.select(runs.c.status, sa.func.count()).where(*window).group_by(runs.c.status)
        statuses = {k: int(v) for k, v in conn.execute(query)}
    store.dispose()
    extra = {
        "statuses": statuses,
        "cpu_percent_per_process": [round(100 * c / (end - begin), 1) for c in cpu],
    }
    return (begin, end), anchors, extra


def _apscheduler(
    p: dict[str, Any], base: Path, url: str, sink: Path
) -> tuple[tuple[float, float], dict[str, float], dict[str, Any]]:
    anchor = math.ceil(time.time()) + 10.0  # the processes may take longer to start: the window waits
    env = {**os.environ, "PYTHONPATH": f"{CODE}{os.pathsep}{REPO}"}
    aps_url = url.replace("postgresql://", "postgresql+psycopg2://")
    cmd = [PYTHON, "-m", "bench.peer_aps", "--url", aps_url, "--jobs", str(p["jobs"])]
    cmd += ["--interval", str(p["interval"]), "--anchor", str(anchor), "--sink", str(sink)]
    procs = []
    for k in range(p["instances"]):
        log = (base / f"aps{k}.log").open("wb")
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        wait_for(
            lambda: all(b"started" in (base / f"aps{k}.log").read_bytes() for k in range(len(procs))),
            180,
            0.1,
        )
        begin_at = max(time.time(), anchor) + p["warmup"]
        time.sleep(max(0.0, begin_at - time.time()))
        cpu0 = [proc_cpu_seconds(proc.pid) for proc in procs]
        begin = time.time()
        time.sleep(p["duration"])
        end = time.time()
        cpu = [proc_cpu_seconds(proc.pid) - c for proc, c in zip(procs, cpu0, strict=True)]
        time.sleep(min(5.0, p["interval"] * 2))  # let runs of the window's last slots finish
    finally:
        for proc in procs:
            stop_process(proc)
    anchors = {f"j{i:05d}": anchor for i in range(p["jobs"])}
    missed_events = (
        sum(1 for line in sink.read_text().splitlines() if line.endswith("missed")) if sink.exists() else 0
    )
    extra = {
        "missed_events": missed_events,
        "cpu_percent_per_process": [round(100 * c / (end - begin), 1) for c in cpu],
    }
    return (begin, end), anchors, extra


if __name__ == "__main__":
    main_with(run)
