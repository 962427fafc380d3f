"""The operator's surface: CLI start-up beside `supervisorctl status`, and a metrics scrape at scale.

    .venv/bin/python -m bench.operator                      # CLI: 10 runs each; scrapes at 1k and 10k jobs
    .venv/bin/python -m bench.operator --runs 3 --jobs 50   # a quick look

CLI: each command is a fresh process timed from spawn to exit (median of N), on
a SQLite database holding a few jobs and runs, beside `supervisorctl status`
against a supervisord started in a temporary folder (stopped by its pid at the
end) and `python -c pass`. Targets: `status` <= 150 ms, read commands <= 300 ms.

Dashboard: the same store, the front page and a filtered page rendered by the
app in-process (median of three). Target: 10,000 jobs in under a second.

Metrics: a store with N interval jobs, each with a few run rows and runs
observed by this instance; the figures are the size of one scrape (plain and
gzip) and the median time to render it (five renders). Targets: <= 5 series
per job and a scrape at 10,000 jobs under 200 ms.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONTROL = REPO / "code" / "scheduler" / "control.py"
CLI_COMMANDS = (["status"], ["--help"], ["jobs"], ["history", "--limit", "5"], ["show", "bench.job0"])
TARGETS_MS = {"status": 150.0, "jobs": 300.0, "history": 300.0, "show": 300.0}


def timed(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median and spread of `runs` wall times of a fresh process, in ms."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, cwd=REPO, capture_output=True, check=False, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def cli_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env.update(
        SCHEDULER_DATABASE_URL=f"sqlite:///{folder / 'bench.db'}",
        SCHEDULER_PIDFILE=str(folder / "scheduler.pid"),
        SCHEDULER_JOBS_PATH=str(folder / "jobs"),
        SCHEDULER_LOG_DIR=str(folder / "logs"),
    )
    return env


def seed(url: str, jobs: int, runs_per_job: int) -> None:
    """`jobs` interval jobs with `runs_per_job` finished runs each (and a missed slot)."""
    from scheduler.jobs.registry import make_spec
    from scheduler.store import Claim, Outcome, Owner, Store

    store = Store(url)
    store.upgrade()
    owner = Owner("bench", "bench-host", os.getpid())
    now = datetime.now(UTC).replace(microsecond=0)
    specs = [make_spec(_work, name=f"bench.job{i}", interval=timedelta(minutes=1)) for i in range(jobs)]
    store.jobs.sync(specs, now)
    for k in range(runs_per_job, 0, -1):
        slot = now - timedelta(minutes=k)
        claims = [Claim(s.name, slot) for s in specs]
        won = store.runs.claim(claims, owner, slot, slot + timedelta(minutes=5))
        status = "failed" if k % 5 == 0 else "succeeded"
        store.runs.finish(
            [
                Outcome(c.run_id, c.fence, status, finished_at=slot + timedelta(seconds=1), started_at=slot)
                for c in won
            ]
        )
    store.dispose()


def _work() -> None:
    """The benchmark jobs' function; never called."""


@contextmanager
def supervisord(folder: Path) -> Iterator[Path]:
    """A supervisord with one idle program, in `folder`; stopped by its pid on exit."""
    conf = folder / "supervisord.conf"
    sock = folder / "supervisor.sock"
    conf.write_text(
        f"[unix_http_server]\nfile={sock}\n[supervisord]\nlogfile={folder / 'supervisord.log'}\n"
        f"pidfile={folder / 'supervisord.pid'}\nnodaemon=true\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[supervisorctl]\nserverurl=unix://{sock}\n"
        f'[program:idle]\ncommand={sys.executable} -c "import time; time.sleep(3600)"\n'
        "stopasgroup=true\nkillasgroup=true\n"
    )
    bin_dir = Path(sys.executable).parent
    process = subprocess.Popen(
        [str(bin_dir / "supervisord"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(bin_dir / "supervisorctl"), "-c", str(conf), "status"], capture_output=True, text=True
            )
            if "RUNNING" in done.stdout:
                break
            time.sleep(0.1)  # supervisord starting in another process: nothing to wait on
        yield conf
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def bench_cli(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        folder = Path(tmp)
        (folder / "jobs").mkdir()
        env = cli_env(folder)
        seed(env["SCHEDULER_DATABASE_URL"], jobs=20, runs_per_job=10)
        results: dict[str, Any] = {"runs": runs}
        results["python -c pass"] = timed([sys.executable, "-c", "pass"], env, runs)
        for args in CLI_COMMANDS:
            results["scheduler " + " ".join(args)] = timed([sys.executable, str(CONTROL), *args], env, runs)
        with supervisord(folder) as conf:
            ctl = str(Path(sys.executable).parent / "supervisorctl")
            results["supervisorctl status"] = timed([ctl, "-c", str(conf), "status"], env, runs)
        return results


def bench_metrics(jobs: int, renders: int = 5) -> dict[str, Any]:
    from scheduler.clock import SystemClock
    from scheduler.cluster.health import Health
    from scheduler.operator.metrics import Metrics
    from scheduler.store import Store

    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'metrics.db'}"
        seed(url, jobs=jobs, runs_per_job=3)
        store = Store(url)
        clock = SystemClock()
        metrics = Metrics(store, Health(clock), clock, "bench")
        _observe(metrics, store)
        times = []
        body = b""
        for _ in range(renders):
            started = time.perf_counter()
            body, _type = metrics.render()
            times.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        zipped = gzip.compress(body, 1)
        gzip_ms = (time.perf_counter() - started) * 1000
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        store.dispose()
    return {
        "jobs": jobs,
        "series": series,
        "series_per_job": round(series / jobs, 2),
        "bytes": len(body),
        "gzip_bytes": len(zipped),
        "render_ms_median": statistics.median(times),
        "gzip_ms": gzip_ms,
    }


def bench_dashboard(jobs: int, renders: int = 3) -> dict[str, Any]:
    """The front page (first page of the jobs list) and a filtered page, over `jobs` jobs."""
    import io

    from scheduler.clock import SystemClock
    from scheduler.cluster.health import Health
    from scheduler.operator.http import Api

    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'dashboard.db'}"
        seed(url, jobs=jobs, runs_per_job=3)
        from scheduler.store import Store

        store = Store(url)
        clock = SystemClock()
        app = Api(store, Health(clock), clock)
        figures: dict[str, Any] = {"jobs": jobs}
        for label, query in (("front", ""), ("filtered", "q=job1&state=failing&sort=last")):
            times, size = [], 0
            for _ in range(renders):
                environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": query}
                environ["wsgi.input"] = io.BytesIO(b"")
                started = time.perf_counter()
                size = len(b"".join(app(environ, lambda status, headers: None)))
                times.append((time.perf_counter() - started) * 1000)
            figures[label] = {"bytes": size, "render_ms_median": statistics.median(times)}
        store.dispose()
    return figures


def _observe(metrics: Any, store: Any) -> None:
    """Feed the counters a run of every job, as the pool threads would."""
    from scheduler.engine.context import ActiveRun, JobContext
    from scheduler.jobs.registry import make_spec
    from scheduler.store import Claimed, Outcome

    now = datetime.now(UTC)
    for row in store.jobs.all():
        spec = make_spec(_work, name=row.name, interval=timedelta(minutes=1))
        ctx = JobContext(row.name, now, 1, 1, logging.getLogger("bench"))
        run = ActiveRun(Claimed(1, row.name, now, "running", 1, "schedule"), spec, 0.0, ctx, None)
        run.outcome = Outcome(1, 1, "succeeded", finished_at=now + timedelta(seconds=1), started_at=now)
        metrics.observe_run(run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="CLI runs per command (median of N)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10_000], help="metrics store sizes")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    results = {
        "cli": bench_cli(args.runs),
        "metrics": [bench_metrics(n) for n in args.jobs],
        "dashboard": [bench_dashboard(n) for n in args.jobs],
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"CLI, wall time of a fresh process, median of {args.runs} (min-max), SQLite:")
    for name, figures in results["cli"].items():
        if name == "runs":
            continue
        command = name.split()[1] if name.startswith("scheduler ") else ""
        target = TARGETS_MS.get(command)
        goal = (
            f"  target <= {target:.0f} ms: {'met' if figures['median_ms'] <= target else 'MISSED'}"
            if target
            else ""
        )
        print(
            f"  {name:<32} {figures['median_ms']:7.1f} ms"
            f"  ({figures['min_ms']:.0f}-{figures['max_ms']:.0f}){goal}"
        )
    print("Metrics scrape (default settings):")
    for row in results["metrics"]:
        print(
            f"  {row['jobs']:>6} jobs: {row['series']:>7} series ({row['series_per_job']}/job), "
            f"{row['bytes'] / 1024:8.0f} KiB plain, {row['gzip_bytes'] / 1024:6.0f} KiB gzip, "
            f"render {row['render_ms_median']:7.1f} ms (median of 5), gzip {row['gzip_ms']:.1f} ms"
        )
    print("Dashboard front page (50 jobs a page), server time and size:")
    for row in results["dashboard"]:
        front, filtered = row["front"], row["filtered"]
        print(
            f"  {row['jobs']:>6} jobs: first page {front['render_ms_median']:7.1f} ms,"
            f" {front['bytes'] / 1024:6.0f} KiB; filtered {filtered['render_ms_median']:7.1f} ms,"
            f" {filtered['bytes'] / 1024:6.0f} KiB (median of 3)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
