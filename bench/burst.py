"""Jobs due together: N jobs on one interval grid, so each slot is one burst of N runs.

The headline cases. Each job body's first line is `time.time()`, appended with
the job and slot to a sink file, so lateness is what the job saw, not what a run
row says. Ours runs as real daemons (`control.py run`, default settings: INFO
logging to logs/info.log) on SQLite or PostgreSQL; APScheduler 3.11 runs the
same jobs on the same grid (8 threads) in its own process.

For ours, beside the starts: the run rows of the observed slots by status,
duplicates, each instance's share, the longest gap between two heartbeats of an
instance, incidents opened, process CPU in the quiet part of each interval,
peak RSS and the time from spawn to the first claim.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    GRID_BASE,
    database,
    main_with,
    percentile,
    proc_cpu_seconds,
    proc_status,
    spawn_instance,
    stop_process,
    summary_ms,
    wait_for,
    write_jobs,
)

DEFAULTS: dict[str, Any] = {
    "impl": "ours",  # ours | apscheduler
    "db": "sqlite",
    "instances": 1,
    "jobs": 10_000,
    "interval": 30.0,
    "slots": 1,  # consecutive slots observed
    "lead": 3.0,  # the first observed slot is at least this long after start-up
    "quiet_from": 0.5,  # the quiet part of an interval: from this fraction of it ...
    "quiet_to": 0.95,  # ... to this one (CPU measured there)
    "log_level": "INFO",
    "pool_size": 8,
    "drain_wait": 20.0,  # most seconds waited after the last slot for its rows to be written
    # py-spy over the last observed slot: {"out": "prefix", "seconds": 6, "flags": ["--gil"]},
    # from "from" seconds after the slot (default -0.3).
    # Writes prefix-iN.txt (raw folded stacks) per instance. Off by default: it slows the daemon.
    "profile": None,
    "settings": {},  # more daemon settings, e.g. {"claim_ahead": "4s"} (SCHEDULER_CLAIM_AHEAD)
}


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        base = Path(tmp)
        sink = base / "sink.txt"
        if p["impl"] == "apscheduler":
            slots, extra = _apscheduler(p, sink)
        else:
            with database(p["db"], base) as url:
                slots, extra = _ours(p, base, url, sink)
        starts = _starts(sink, slots)
    return {**p, **_summarise(p, slots, starts), **extra}


def first_slot(interval: float, after: float) -> float:
    """The first slot of the shared grid (GRID_BASE + k * interval) at or after `after`."""
    base = GRID_BASE.timestamp()
    return base + math.ceil((after - base) / interval) * interval


def _starts(sink: Path, slots: list[float]) -> dict[float, list[tuple[str, str, float]]]:
    """Per observed slot: (pid, job, start) of every execution the job bodies recorded."""
    wanted = {round(s * 1000): s for s in slots}
    found: dict[float, list[tuple[str, str, float]]] = defaultdict(list)
    for line in sink.read_text().splitlines() if sink.exists() else []:
        pid, job, slot, at = line.split()
        key = round(float(slot) * 1000)
        if key in wanted:
            found[wanted[key]].append((pid, job, float(at)))
    return found


def _summarise(
    p: dict[str, Any], slots: list[float], starts: dict[float, list[tuple[str, str, float]]]
) -> dict[str, Any]:
    per_slot = []
    lateness: list[float] = []
    by_pid: Counter[str] = Counter()
    duplicates = 0
    for slot in slots:
        got = starts.get(slot, [])
        late = sorted(at - slot for _, _, at in got)
        lateness += late
        by_pid.update(pid for pid, _, _ in got)
        duplicates += sum(n - 1 for n in Counter(job for _, job, _ in got).values() if n > 1)
        per_slot.append(
            {
                "executions": len(got),
                "distinct_jobs": len({job for _, job, _ in got}),
                "last_start_s": late[-1] if late else None,
                "p50_ms": 1000 * percentile(late, 50) if late else None,
            }
        )
    total = sum(by_pid.values())
    lateness.sort()
    return {
        "per_slot": per_slot,
        "expected": p["jobs"] * len(slots),
        "executions": total,
        "duplicates": duplicates,
        "lateness": summary_ms(lateness),
        "last_start_s": max((s["last_start_s"] or 0.0) for s in per_slot) if per_slot else None,
        "share_percent": sorted((round(100 * n / total, 1) for n in by_pid.values()), reverse=True)
        if total
        else [],
    }


# -- ours ---------------------------------------------------------------------------


def _ours(p: dict[str, Any], base: Path, url: str, sink: Path) -> tuple[list[float], dict[str, Any]]:
    from scheduler.store import Store

    interval = p["interval"]
    write_jobs(base / "jobs", p["jobs"], interval, body="stamp", anchors=[GRID_BASE] * p["jobs"])
    os.environ["BENCH_SINK"] = str(sink)
    store = Store(url)
    store.upgrade()
    store.dispose()
    extra = {"pool_size": p["pool_size"], "log_level": p["log_level"], **p["settings"]}
    spawned = time.time()
    procs = [spawn_instance(base, url, f"i{k}", base / "jobs", **extra) for k in range(p["instances"])]
    watcher = _Watcher(url, [proc.pid for proc in procs])
    try:
        watcher.start()
        wait_for(lambda: watcher.alive() >= p["instances"], 120, 0.1)
        ready = time.time()
        first = first_slot(interval, ready + p["lead"])
        slots = [first + k * interval for k in range(p["slots"])]
        spies = _profile(procs, slots[-1], p["profile"]) if p["profile"] else []
        quiet = _quiet_cpu(procs, slots, interval, p)
        for spy in spies:
            spy.join()
        _wait_written(url, slots, p["jobs"], p["drain_wait"])
    finally:
        watcher.stop()
        for proc in procs:
            stop_process(proc)
    facts = _rows(url, slots, spawned)
    return slots, {
        **facts,
        "ready_s": ready - spawned,
        "quiet_cpu_percent": quiet,
        "peak_rss_mb": watcher.peak_rss_mb,
        "max_heartbeat_gap_s": watcher.max_gap,
    }


def _profile(
    procs: list[subprocess.Popen[bytes]], slot: float, spec: dict[str, Any]
) -> list[threading.Thread]:
    """Record each instance with py-spy from just before `slot` (see DEFAULTS["profile"])."""

    def record(k: int, pid: int) -> None:
        _sleep_until(slot + spec.get("from", -0.3))
        cmd = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "-p",
            str(pid),
            "-d",
            str(spec.get("seconds", 6)),
            "-r",
            "100",
        ]
        cmd += ["-f", "raw", "-o", f"{spec['out']}-i{k}.txt", *spec.get("flags", [])]
        subprocess.run(cmd, capture_output=True, check=False)

    spies = [threading.Thread(target=record, args=(k, proc.pid)) for k, proc in enumerate(procs)]
    for spy in spies:
        spy.start()
    return spies


def _quiet_cpu(
    procs: list[subprocess.Popen[bytes]], slots: list[float], interval: float, p: dict[str, Any]
) -> float | None:
    """Sleep through the observed slots; return the mean CPU % of the processes in their quiet parts."""
    spent = seconds = 0.0
    for slot in slots:
        begin, end = slot + p["quiet_from"] * interval, slot + p["quiet_to"] * interval
        _sleep_until(begin)
        cpu0 = sum(proc_cpu_seconds(proc.pid) for proc in procs)
        _sleep_until(end)
        spent += sum(proc_cpu_seconds(proc.pid) for proc in procs) - cpu0
        seconds += (end - begin) * len(procs)
    _sleep_until(slots[-1] + interval * 0.2 if interval < 5 else slots[-1] + 2)
    return 100 * spent / seconds if seconds else None


def _sleep_until(at: float) -> None:
    while (left := at - time.time()) > 0:
        time.sleep(min(left, 0.5))


def _wait_written(url: str, slots: list[float], jobs: int, timeout: float) -> None:
    """Wait until every observed slot has its rows out of 'running' (or `timeout`)."""
    import sqlalchemy as sa
    from scheduler.store import Store
    from scheduler.store.schema import runs

    store = Store(url)
    lo, hi = datetime.fromtimestamp(slots[0], UTC), datetime.fromtimestamp(slots[-1], UTC)
    query = sa.select(sa.func.count()).where(
        runs.c.scheduled_for >= lo, runs.c.scheduled_for <= hi, runs.c.status.not_in(["running", "queued"])
    )

    def done() -> bool:
        with store.db.read() as conn:
            return int(conn.execute(query).scalar_one()) >= jobs * len(slots)

    try:
        wait_for(done, timeout, 0.25)
    except TimeoutError:
        pass
    finally:
        store.dispose()


def _rows(url: str, slots: list[float], spawned: float) -> dict[str, Any]:
    import sqlalchemy as sa
    from scheduler.store import Store
    from scheduler.store.schema import incidents, runs

    store = Store(url)
    try:
        lo, hi = datetime.fromtimestamp(slots[0], UTC), datetime.fromtimestamp(slots[-1], UTC)
        window = (runs.c.scheduled_for >= lo, runs.c.scheduled_for <= hi)
        with store.db.read() as conn:
            statuses = {
                k: int(v)
                for k, v in conn.execute(
                    sa.select(runs.c.status, sa.func.count()).where(*window).group_by(runs.c.status)
                )
            }
            first_claim = conn.execute(sa.select(sa.func.min(runs.c.claimed_at))).scalar()
            opened = [
                f"{r.kind}: {r.summary}"
                for r in conn.execute(sa.select(incidents.c.kind, incidents.c.summary))
            ]
            overloaded = int(
                conn.execute(
                    sa.select(sa.func.count()).where(runs.c.error_message.like("overloaded:%"))
                ).scalar_one()
            )
    finally:
        store.dispose()
    return {
        "statuses": statuses,
        "overloaded_rows": overloaded,
        "incidents": opened,
        "first_claim_s": first_claim.timestamp() - spawned if first_claim else None,
    }


class _Watcher(threading.Thread):
    """Polls the instances table (heartbeat gaps) and /proc (peak RSS) while the daemons run."""

    def __init__(self, url: str, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.url, self.pids = url, pids
        self._halt = threading.Event()
        self.max_gap = 0.0
        self.peak_rss_mb = 0.0
        self._alive = 0

    def alive(self) -> int:
        return self._alive

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        import sqlalchemy as sa
        from scheduler.store import Store
        from scheduler.store.schema import instances

        store = Store(self.url)
        last: dict[str, datetime] = {}
        try:
            while not self._halt.wait(0.2):
                for pid in self.pids:
                    try:
                        rss = proc_status(pid).get("peak_rss_mb", 0.0)
                    except OSError:  # exited
                        continue
                    self.peak_rss_mb = max(self.peak_rss_mb, rss)
                try:
                    with store.db.read() as conn:
                        rows = list(conn.execute(sa.select(instances.c.id, instances.c.heartbeat_at)))
                except Exception:  # a busy database: try again at the next poll
                    continue
                self._alive = len(rows)
                for instance, beat in rows:
                    if instance in last and beat > last[instance]:
                        self.max_gap = max(self.max_gap, (beat - last[instance]).total_seconds())
                    last[instance] = beat
        finally:
            store.dispose()


# -- APScheduler ------------------------------------------------------------------


def _apscheduler(p: dict[str, Any], sink: Path) -> tuple[list[float], dict[str, Any]]:
    """APScheduler in a child process of its own, same grid, bodies writing to the sink."""
    code = _APS.format(jobs=p["jobs"], interval=p["interval"], pool=p["pool_size"])
    env = {**os.environ, "BENCH_SINK": str(sink)}
    ready_file = sink.with_suffix(".ready")
    env["BENCH_READY"] = str(ready_file)
    spawned = time.time()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready_file.exists, 120, 0.05)
        ready = time.time()
        first = first_slot(p["interval"], ready + p["lead"])
        slots = [first + k * p["interval"] for k in range(p["slots"])]
        quiet = _quiet_cpu([proc], slots, p["interval"], p)  # type: ignore[list-item]
        time.sleep(2.0)
        stats = proc_status(proc.pid)
    finally:
        stop_process(proc)  # type: ignore[arg-type]
    return slots, {
        "ready_s": ready - spawned,
        "quiet_cpu_percent": quiet,
        "peak_rss_mb": stats.get("peak_rss_mb"),
    }


_APS = """
import os, time
from datetime import datetime, timedelta, timezone
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
fd = os.open(os.environ["BENCH_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
pid = os.getpid()
def body(name, slot_of):
    at = time.time()
    os.write(fd, f"{{pid}} {{name}} {{slot_of(at):.6f}} {{at:.6f}}\\n".encode())
base = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
interval = {interval}
def slot_of(at):
    return base + ((at - base) // interval) * interval
s = BackgroundScheduler(executors={{"default": ThreadPoolExecutor({pool})}},
    job_defaults={{"misfire_grace_time": None, "coalesce": False, "max_instances": 1}}, timezone=timezone.utc)
start = datetime(2026, 1, 1, tzinfo=timezone.utc)
for i in range({jobs}):
    s.add_job(body, IntervalTrigger(seconds=interval, start_date=start, timezone=timezone.utc),
              args=[f"b.j{{i:05d}}", slot_of], id=f"j{{i:05d}}")
s.start()
open(os.environ["BENCH_READY"], "w").close()
while True:
    time.sleep(3600)
"""


if __name__ == "__main__":
    main_with(run)
