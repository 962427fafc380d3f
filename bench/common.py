"""Shared parts of the benchmarks: job folders, databases, processes, statistics.

Every benchmark runs its subject in a fresh child process (`run_child`), so one
measurement never inherits the threads, memory or imports of another.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CODE = REPO / "code"
CONTROL = CODE / "scheduler" / "control.py"
PYTHON = sys.executable
PG_HOST = os.environ.get("SCHEDULER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SCHEDULER_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("SCHEDULER_TEST_PG_USER", "postgres")
# Slots of staggered jobs are laid out from this instant: the same grid for every scheduler.
GRID_BASE = datetime(2026, 1, 1, tzinfo=UTC)
JOBS_PER_FILE = 1000


# -- statistics ---------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """count, p50, p99, max and mean, in milliseconds."""
    ordered = sorted(seconds)
    if not ordered:
        return {"count": 0, "p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan, "mean_ms": math.nan}
    return {
        "count": len(ordered),
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "mean_ms": sum(ordered) / len(ordered) * 1000,
    }


def grid_slot(at: float, anchor: float, interval: float) -> float:
    """The slot of a fixed-rate grid at or before `at` (epoch seconds)."""
    return anchor + math.floor((at - anchor) / interval + 1e-9) * interval


# -- this process and others ------------------------------------------------------


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """RSS, peak RSS (MB) and OS thread count from /proc."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(rest.split()[0]) / 1024
        elif key == "Threads":
            values["threads"] = int(rest)
    return values


def proc_cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    os_name = platform.platform()
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": os_name,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("scheduler", "APScheduler", "timeloop", "SQLAlchemy", "psycopg2-binary", "cronsim"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    found["PostgreSQL"] = pg_server_version()
    try:
        import sqlite3

        found["SQLite"] = sqlite3.sqlite_version
    except ImportError:
        found["SQLite"] = "not available"
    return found


# -- databases ------------------------------------------------------------------


def _pg_admin() -> Any:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3)
    conn.autocommit = True
    return conn


def pg_problem() -> str | None:
    """None if PostgreSQL answers, else the reason it does not."""
    try:
        _pg_admin().close()
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def pg_server_version() -> str:
    try:
        conn = _pg_admin()
    except Exception:
        return "unreachable"
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards (also after a failure)."""
    name = f"sched_bench_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A database URL of `kind` ('sqlite' in `folder`, or 'postgresql')."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'scheduler.db'}"
    else:
        with pg_database() as url:
            yield url


# -- job folders ------------------------------------------------------------------

BODIES = {
    "trivial": "    return None",
    "record": "    record(ctx)",
    # The start as the job itself sees it: time.time() is its first line.
    "stamp": "    at = time.time()\n    record(ctx, at)",
    "sleep200": "    time.sleep(0.2)",
    "hold": "    ctx.cancelled.wait(600)",
    "hold3": "    ctx.cancelled.wait(3)",
}

SINK = '''"""Appends one line per run (pid, job, slot) to the file named by BENCH_SINK."""

import os
import threading

_fd = None
_lock = threading.Lock()


def record(ctx, at=None):
    global _fd
    if _fd is None:
        with _lock:
            if _fd is None:
                _fd = os.open(os.environ["BENCH_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    stamp = "" if at is None else f" {at:.6f}"
    os.write(_fd, f"{os.getpid()} {ctx.job} {ctx.scheduled_for.timestamp():.6f}{stamp}\\n".encode())
'''


def job_names(count: int) -> list[str]:
    return [f"j{i:05d}" for i in range(count)]


def staggered_anchors(count: int, interval: float) -> list[datetime]:
    """Anchors spreading `count` jobs evenly over one interval of the shared grid."""
    step = interval / count
    return [GRID_BASE + timedelta(seconds=i * step) for i in range(count)]


def write_jobs(
    folder: Path,
    count: int,
    interval: float,
    *,
    body: str = "trivial",
    anchors: Sequence[datetime] | None = None,
    overlap: str = "skip",
) -> list[str]:
    """Generate job modules with `count` interval jobs named b.j00000...; returns the names.

    Without `anchors` the jobs take the scheduler's default anchor (all on one grid).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_bench_sink.py").write_text(SINK)
    names = job_names(count)
    for start in range(0, count, JOBS_PER_FILE):
        lines = [
            '"""Generated benchmark jobs."""',
            "import time",
            "from datetime import datetime, timedelta",
            "",
            "from _bench_sink import record",
            "from scheduler import job",
            "",
            f"_I = timedelta(microseconds={round(interval * 1_000_000)})",
            "",
        ]
        chunk = range(start, min(count, start + JOBS_PER_FILE))
        starts = [anchors[i].isoformat() for i in chunk] if anchors is not None else [None] * len(chunk)
        lines += [
            "def _run(ctx):",
            BODIES[body],
            "",
            "",
            f"for _name, _start in zip({[names[i] for i in chunk]!r}, {starts!r}):",
            f'    job(interval=_I, name=f"b.{{_name}}", overlap="{overlap}",',
            "        start_at=datetime.fromisoformat(_start) if _start else None)(_run)",
            "",
        ]
        (folder / f"bench_{start // JOBS_PER_FILE:03d}.py").write_text("\n".join(lines))
    return [f"b.{n}" for n in names]


# -- our daemon -------------------------------------------------------------------


def instance_env(base: Path, url: str, name: str, jobs: Path, **extra: Any) -> dict[str, str]:
    """Environment for one `control.py run` process with its own pidfile, logs and state."""
    home = base / name
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_") and k != "PYTHONPATH"}
    env.update(
        SCHEDULER_DATABASE_URL=url,
        SCHEDULER_JOBS_PATH=str(jobs),
        SCHEDULER_PIDFILE=str(home / "scheduler.pid"),
        SCHEDULER_LOG_DIR=str(home / "logs"),
        SCHEDULER_STATE_DIR=str(home / "state"),
        SCHEDULER_INSTANCE_NAME=name,
        SCHEDULER_LOG_LEVEL="WARNING",
        PYTHONPATH=f"{CODE}{os.pathsep}{REPO}",
    )
    env.update({f"SCHEDULER_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def spawn_instance(base: Path, url: str, name: str, jobs: Path, **extra: Any) -> subprocess.Popen[bytes]:
    env = instance_env(base, url, name, jobs, **extra)
    log = (base / name / "stderr.log").open("wb")
    return subprocess.Popen(
        [PYTHON, str(CONTROL), "run"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )


def settings_for(base: Path, url: str, jobs: Path, **extra: Any) -> Any:
    """Validated Settings for an in-process Service (same layering as the daemon)."""
    from scheduler import config

    env = instance_env(base, url, "bench", jobs, **extra)
    return config.load(env={k: v for k, v in env.items() if k.startswith("SCHEDULER_")})


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 40.0) -> None:
    """Signal a child and wait; SIGKILL it if it outlives `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll until `predicate` returns something truthy; raise TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout:.0f}s")
        time.sleep(interval)


def quiet_logging() -> None:
    """Benchmarks keep log output (and its cost) to warnings, as SCHEDULER_LOG_LEVEL=WARNING does."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# -- child processes ----------------------------------------------------------------


def main_with(run: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Entry point of a benchmark module: `--params JSON` in, one JSON line out."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}", help="JSON object of parameters")
    args = parser.parse_args()
    quiet_logging()
    result = run(json.loads(args.params))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_child(module: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run `python -m bench.<module> --params ...` and return its JSON result.

    Raises RuntimeError with the tail of its output when it fails or overruns.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env["PYTHONPATH"] = f"{CODE}{os.pathsep}{REPO}"
    cmd = [PYTHON, "-m", f"bench.{module}", "--params", json.dumps(params)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        raise RuntimeError(f"bench.{module} overran {timeout:.0f}s: {_tail(err)}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"bench.{module} exited {proc.returncode}: {_tail(err)}")
    lines = [line for line in out.decode().splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"bench.{module} printed no result: {_tail(err)}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _tail(err: bytes) -> str:
    text = err.decode(errors="replace").strip().splitlines()
    return " | ".join(text[-6:]) if text else "(no output)"
