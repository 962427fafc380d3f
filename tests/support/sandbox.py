"""Real daemons for system tests: a private sandbox per test, spawned processes, database reads.

The API, kept small on purpose:

- `Sandbox(root, db_url=None)`: one test's world under `root`: the database
  (SQLite at `root/scheduler.db` unless `db_url` is given), a `jobs/` folder,
  a pidfile and `logs/`. `env(**settings)` is the environment for control.py
  (`grace_period="1s"` becomes `SCHEDULER_GRACE_PERIOD=1s`); `write_job(name,
  source)` adds a job module; `control(*args)` runs one control.py command;
  `daemon()` spawns `control.py run` and waits until it started; `runs()`
  reads the runs table; `close()` kills every process the sandbox started,
  including a daemon detached by `start` (found through the pidfile). Use it
  as a fixture that calls `close()` in teardown.
- `Daemon`: a `control.py run` child process (`pid`, `signal`, `wait_exit`,
  `kill`, `output`, `wait_for_output`).
- `run_control(args, env, timeout, cwd)`: one control.py command, as a
  CompletedProcess with text output.
- `query(db_url, sql, **params)`: rows as dicts, on SQLite or PostgreSQL.
- `process_gone(pid)`: True once a process (our child or not) has exited.
- `wait_until(predicate, timeout)`: polling with a deadline (tests.support.polling).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from scheduler.store import RunRow, Store

from tests.support import REPO
from tests.support.polling import wait_until

__all__ = ["CONTROL", "REPO", "Daemon", "Sandbox", "process_gone", "query", "run_control", "wait_until"]

CONTROL = REPO / "code" / "scheduler" / "control.py"
READY = "scheduler.daemon.service: started instance"  # logged once the daemon runs
# Settings every sandbox gets unless a test overrides them: short enough to keep tests quick.
DEFAULTS = {"grace_period": "10s", "heartbeat": "1s", "lease_ttl": "5s", "log_level": "INFO"}


def run_control(
    args: list[str], env: dict[str, str], timeout: float = 30.0, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run `python code/scheduler/control.py ARGS`; raises subprocess.TimeoutExpired past `timeout`."""
    return subprocess.run(
        [sys.executable, str(CONTROL), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def query(db_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Run one read-only statement; each row as a dict of column to value."""
    for scheme in ("postgres://", "postgresql://"):  # the driver the daemon uses, as it names it
        if db_url.startswith(scheme):
            db_url = "postgresql+psycopg2://" + db_url.removeprefix(scheme)
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


class Daemon:
    """`control.py run` as a child process; its stdout and stderr go to a file."""

    def __init__(self, env: dict[str, str], output: Path, cwd: Path = REPO) -> None:
        self.output_path = output
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, str(CONTROL), "run"],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 15.0) -> None:
        """Poll the output until it contains `text`; fail if the process exits first or on timeout."""

        def seen() -> bool:
            if text in self.output():
                return True
            if not self.alive():
                code = self.process.returncode
                raise AssertionError(f"daemon exited ({code}) before {text!r}:\n{self.tail()}")
            return False

        wait_until(seen, timeout)

    def wait_exit(self, timeout: float) -> int:
        """The exit code; fails (after killing the process) if it is still running after `timeout`."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            message = f"daemon {self.pid} still running after {timeout}s:\n{self.tail()}"
            raise AssertionError(message) from None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait(10)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


class Sandbox:
    """One test's database, jobs folder, pidfile and logs; kills what it started in `close()`."""

    def __init__(self, root: Path, db_url: str | None = None) -> None:
        self.root = root
        self.db_url = db_url or f"sqlite:///{root / 'scheduler.db'}"
        self.jobs = root / "jobs"
        self.jobs.mkdir(parents=True, exist_ok=True)
        self.pidfile = root / "run" / "scheduler.pid"
        self.log_dir = root / "logs"
        self.daemons: list[Daemon] = []
        self._store: Store | None = None

    @property
    def info_log(self) -> Path:
        return self.log_dir / "info.log"

    def env(self, **settings: str) -> dict[str, str]:
        """os.environ without SCHEDULER_*, plus this sandbox's settings and `settings`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        values = {
            **DEFAULTS,
            "database_url": self.db_url,
            "jobs_path": str(self.jobs),
            "pidfile": str(self.pidfile),
            "log_dir": str(self.log_dir),
            **settings,
        }
        env.update({f"SCHEDULER_{name.upper()}": value for name, value in values.items()})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def write_job(self, name: str, source: str) -> Path:
        """Write `jobs/<name>.py` from `source` (dedented)."""
        path = self.jobs / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    def control(
        self, *args: str, timeout: float = 30.0, cwd: Path = REPO, **settings: str
    ) -> subprocess.CompletedProcess[str]:
        return run_control(list(args), self.env(**settings), timeout, cwd)

    def daemon(self, *, ready: bool = True, **settings: str) -> Daemon:
        """Spawn `control.py run` with this sandbox's settings and `settings`.

        With `ready`, wait until it has started (schema migrated, jobs loaded).
        """
        daemon = Daemon(self.env(**settings), self.root / f"daemon-{len(self.daemons)}.out")
        self.daemons.append(daemon)
        if ready:
            daemon.wait_for_output(READY)
        return daemon

    def runs(self, job: str | None = None) -> list[RunRow]:
        """Rows of the runs table (of `job`, if given), oldest id first."""
        if self._store is None:
            self._store = Store(self.db_url)
        return sorted(self._store.runs.history(job, limit=10_000), key=lambda r: r.id)

    def pidfile_pid(self) -> int | None:
        try:
            lines = self.pidfile.read_text().splitlines()
        except FileNotFoundError:
            return None
        text = lines[0].strip() if lines else ""  # line 2 holds the daemon's start time
        return int(text) if text.isdigit() else None

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.kill()
        pid = self.pidfile_pid()
        if pid is not None and _is_our_daemon(pid):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: process_gone(pid), 10)
        if self._store is not None:
            self._store.dispose()


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def _is_our_daemon(pid: int) -> bool:
    """Guard against a recycled pid: only a live control.py process is killed."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return str(CONTROL).encode() in cmdline and not process_gone(pid)
