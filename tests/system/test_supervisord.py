"""The rendered supervisord program under a real supervisord: start, stop, restart, numprocs.

Each test renders ansible/templates/supervisord.conf.j2 into its tmp dir (its
own database, jobs, logs and pidfiles; this venv's python and control.py),
starts `supervisord -n` on a private unix socket and drives it with the real
`supervisorctl`, as an operator would. supervisord is shut down, and anything it
left running is killed, in teardown.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import xmlrpc.client
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from supervisor.xmlrpc import SupervisorTransport

from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.supervisord import render_program, supervisord_conf, template_variables

pytestmark = pytest.mark.system

BIN = Path(sys.executable).parent
CONTROL = Path(__file__).resolve().parents[2] / "code" / "scheduler" / "control.py"

# Every second: append "<slot> <pid>" to OUT, the side effect that shows each slot ran once.
TICK = """
import os
from datetime import timedelta
from scheduler import job

@job(interval=timedelta(seconds=1), name="tick")
def tick(ctx):
    with open(OUT, "a") as fh:
        fh.write(f"{ctx.scheduled_for.isoformat()} {os.getpid()}\\n")
"""

# Busy for 1.5 s of every 2 s, so a stop usually finds it running; shorter than the grace period.
SLOW = """
import time
from datetime import timedelta
from scheduler import job

@job(interval=timedelta(seconds=2), name="slow")
def slow(ctx):
    time.sleep(1.5)
"""

FAST_COORDINATION = {"SCHEDULER_HEARTBEAT": "1s", "SCHEDULER_LEASE_TTL": "5s"}


class Supervisord:
    """`supervisord -n` with the rendered program, driven by `supervisorctl` and XML-RPC."""

    def __init__(self, root: Path, program: str) -> None:
        self.root = root
        self.socket_dir = Path(tempfile.mkdtemp(prefix="sv-"))  # unix socket paths must stay short
        conf_d = root / "conf.d"
        conf_d.mkdir()
        (conf_d / "scheduler.conf").write_text(program)
        self.conf = supervisord_conf(root, conf_d / "scheduler.conf", socket=self.socket_dir / "sock")
        self.log = root / "supervisord.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        with (root / "supervisord.out").open("wb") as sink:
            self.process = subprocess.Popen(
                [str(BIN / "supervisord"), "-n", "-c", str(self.conf)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(self._serving, 15)
        except BaseException:
            self.close()
            raise

    @property
    def rpc(self) -> Any:
        """supervisord's XML-RPC interface; a new connection each time (a failed call spoils one)."""
        transport = SupervisorTransport(None, None, f"unix://{self.socket_dir / 'sock'}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def _serving(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"supervisord exited: {(self.root / 'supervisord.out').read_text()}")
        try:
            return bool(self.rpc.getState()["statename"] == "RUNNING")
        except OSError:
            return False

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def info(self, name: str) -> dict[str, Any]:
        return dict(self.rpc.getProcessInfo(name))

    def close(self) -> None:
        """Shut supervisord down (it stops the programs); kill whatever is left."""
        children = _children(self.process.pid)
        if self.process.poll() is None:
            try:
                self.rpc.shutdown()
            except (OSError, xmlrpc.client.Error, http.client.HTTPException):
                self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        for pid in children:  # the programs run in process groups of their own
            if _is_control_py(pid):
                os.kill(pid, signal.SIGKILL)
        for leftover in self.socket_dir.iterdir():
            leftover.unlink()
        self.socket_dir.rmdir()


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _is_control_py(pid: int) -> bool:
    try:
        return str(CONTROL).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def _pid_line(path: Path) -> str:
    """The pid in a pidfile (its first line; the second holds the daemon's start time)."""
    lines = _read(path).splitlines()
    return lines[0] if lines else ""


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _trigger(port: int, job: str, token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/api/jobs/{job}/trigger", headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def _rows(db_url: str, sql: str) -> list[dict[str, Any]]:
    if db_url.startswith("postgresql://"):
        db_url = "postgresql+psycopg2://" + db_url.removeprefix("postgresql://")  # the driver we ship
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.text(sql))]
    except sa.exc.OperationalError:  # tables not created yet, or SQLite busy: not there yet
        return []
    finally:
        engine.dispose()


def _write_job(folder: Path, name: str, source: str, **constants: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    header = "".join(f"{key} = {value!r}\n" for key, value in constants.items())
    (folder / f"{name}.py").write_text(header + textwrap.dedent(source))


@pytest.fixture
def supervisors() -> Iterator[list[Supervisord]]:
    started: list[Supervisord] = []
    yield started
    for supervisor in started:
        supervisor.close()


def test_supervisorctl_start_stop_restart_drive_the_daemon(
    tmp_path: Path, supervisors: list[Supervisord]
) -> None:
    # A comma, a percent sign and quotes in values: they must reach the daemon unchanged.
    jobs = tmp_path / "jobs, 100% 'ours'" / "here"
    out = tmp_path / "ticks.txt"
    _write_job(jobs, "tick", TICK, OUT=str(out))
    _write_job(jobs, "slow", SLOW)
    db_url = f"sqlite:///{tmp_path / 'scheduler.db'}"
    token = 'tok,"en%'
    port = free_port()
    variables = template_variables(
        tmp_path,
        scheduler_database_url=db_url,
        scheduler_jobs_path=str(jobs),
        scheduler_autostart=False,
        scheduler_startsecs=1,
        scheduler_grace_period_seconds=5,
        scheduler_api_token=token,
        scheduler_http_enabled=True,
        scheduler_http_port=port,
        scheduler_extra_env=FAST_COORDINATION,
    )
    (tmp_path / "logs").mkdir()
    sv = Supervisord(tmp_path, render_program(variables))
    supervisors.append(sv)
    pidfile = tmp_path / "var" / "scheduler.pid"

    def runs(where: str) -> list[dict[str, Any]]:
        return _rows(db_url, f"SELECT id, job, status, pid FROM runs WHERE {where}")

    status = sv.ctl("status", "scheduler")
    assert status.returncode == 3 and "STOPPED" in status.stdout  # autostart=false

    started = sv.ctl("start", "scheduler")
    assert started.returncode == 0 and "scheduler: started" in started.stdout, started.stdout + started.stderr
    first = sv.info("scheduler")
    assert first["statename"] == "RUNNING"
    wait_until(lambda: _pid_line(pidfile) == str(first["pid"]), 20)  # RUNNING (startsecs) may come first
    # The environment reached the daemon unchanged (its process title overwrites /proc/PID/environ):
    # the jobs of that folder run, and its API takes exactly that token.
    wait_until(lambda: len(runs(f"job = 'tick' AND status = 'succeeded' AND pid = {first['pid']}")) >= 2, 20)
    assert _trigger(port, "tick", token + "x") == 401
    assert _trigger(port, "tick", token) == 202

    # SIGHUP through supervisorctl: a job module added since the start is loaded, without a restart.
    _write_job(jobs, "added", TICK.replace('name="tick"', 'name="added"'), OUT=str(tmp_path / "added.txt"))
    hup = sv.ctl("signal", "HUP", "scheduler")
    assert hup.returncode == 0 and "scheduler: signalled" in hup.stdout, hup.stdout + hup.stderr
    wait_until(lambda: runs(f"job = 'added' AND status = 'succeeded' AND pid = {first['pid']}"), 20)

    # Restart while `slow` runs: the run finishes inside the grace period, then a new process takes over.
    (busy,) = wait_until(lambda: runs("job = 'slow' AND status = 'running'"), 10)
    restarted = sv.ctl("restart", "scheduler")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "scheduler: stopped" in restarted.stdout and "scheduler: started" in restarted.stdout
    second = sv.info("scheduler")
    assert second["statename"] == "RUNNING" and second["pid"] != first["pid"]
    assert not _is_control_py(first["pid"])
    assert runs(f"id = {busy['id']}")[0]["status"] == "succeeded"
    wait_until(lambda: runs(f"job = 'tick' AND status = 'succeeded' AND pid = {second['pid']}"), 20)

    stopped = sv.ctl("stop", "scheduler")
    assert stopped.returncode == 0 and "scheduler: stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    status = sv.ctl("status", "scheduler")
    assert status.returncode == 3 and "STOPPED" in status.stdout
    final = sv.info("scheduler")
    assert final["statename"] == "STOPPED" and final["exitstatus"] == 0
    # Both stops (restart and stop) ended by the daemon's own exit 0 after SIGTERM, not by SIGKILL.
    supervisor_log = sv.log.read_text()
    assert supervisor_log.count("stopped: scheduler (exit status 0)") == 2, supervisor_log
    assert "SIGKILL" not in supervisor_log
    daemon_log = (tmp_path / "logs" / "info.log").read_text()
    assert daemon_log.count("stopped instance") == 2
    assert not runs("status IN ('running', 'queued')")
    assert not pidfile.exists()


def test_numprocs_two_on_postgresql_run_each_slot_once(
    tmp_path: Path, pg_url: str, supervisors: list[Supervisord]
) -> None:
    jobs = tmp_path / "jobs"
    out = tmp_path / "ticks.txt"
    _write_job(jobs, "tick", TICK, OUT=str(out))
    variables = template_variables(
        tmp_path,
        scheduler_numprocs=2,
        scheduler_database_url=pg_url,
        scheduler_jobs_path=str(jobs),
        scheduler_autostart=True,
        scheduler_startsecs=1,
        scheduler_grace_period_seconds=3,
        scheduler_extra_env=FAST_COORDINATION,
    )
    (tmp_path / "logs").mkdir()
    sv = Supervisord(tmp_path, render_program(variables))
    supervisors.append(sv)
    names = ["scheduler:scheduler_00", "scheduler:scheduler_01"]

    wait_until(lambda: all(sv.info(name)["statename"] == "RUNNING" for name in names), 20)
    status = sv.ctl("status", "scheduler:*")
    assert status.returncode == 0 and status.stdout.count(" RUNNING ") == 2, status.stdout
    pids = {num: sv.info(name)["pid"] for num, name in enumerate(names)}
    for num, pid in pids.items():
        pidfile = tmp_path / "var" / f"scheduler_{num:02d}.pid"
        wait_until(lambda pidfile=pidfile, pid=pid: _pid_line(pidfile) == str(pid), 20)
        info_log = tmp_path / "logs" / f"scheduler_{num:02d}" / "info.log"
        wait_until(lambda log=info_log: "started instance" in _read(log), 20)

    def alive() -> set[tuple[str, int]]:
        return {
            (r["host"], r["pid"])
            for r in _rows(pg_url, "SELECT host, pid FROM instances WHERE status = 'alive'")
        }

    assert wait_until(lambda: alive() == {("node1-00", pids[0]), ("node1-01", pids[1])}, 10)
    wait_until(lambda: len(_rows(pg_url, "SELECT id FROM runs WHERE status = 'succeeded'")) >= 5, 20)

    stopped = sv.ctl("stop", "scheduler:*")
    assert stopped.returncode == 0 and stopped.stdout.count(": stopped") == 2, stopped.stdout + stopped.stderr
    assert all(sv.info(name)["exitstatus"] == 0 for name in names)

    # Exactly once: every slot the job ran is one succeeded run row, and no slot ran twice.
    ran = [datetime.fromisoformat(line.split()[0]) for line in out.read_text().splitlines()]
    assert len(ran) == len(set(ran)) >= 5
    rows = _rows(pg_url, "SELECT scheduled_for, status FROM runs WHERE job = 'tick'")
    succeeded = {r["scheduled_for"] for r in rows if r["status"] == "succeeded"}
    assert succeeded == set(ran)
    assert not [r for r in rows if r["status"] in ("running", "queued")]
