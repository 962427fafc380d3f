"""The daemon's lifecycle as real processes: start/stop/status, pidfiles, signals, crash recovery."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.sandbox import CONTROL, REPO, Sandbox, process_gone, wait_until

pytestmark = pytest.mark.system

# Appends each run's slot to OUT: shows the daemon runs jobs, once per slot.
TICK = """
from datetime import timedelta
from scheduler import job

@job(interval=timedelta(seconds=1))
def tick(ctx):
    with open(OUT, "a") as fh:
        fh.write(ctx.scheduled_for.isoformat() + "\\n")
"""

# Blocks until RELEASE exists (at most LIMIT seconds), ignoring cancellation like a stuck job.
BLOCK = """
import time
from datetime import timedelta
from pathlib import Path
from scheduler import job

@job(interval=timedelta(seconds=INTERVAL), catchup="all")
def block(ctx):
    deadline = time.monotonic() + LIMIT
    while not Path(RELEASE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(FINISHED).touch()
"""

# Takes about two seconds, then records that it finished.
SLOW = """
import time
from datetime import timedelta
from pathlib import Path
from scheduler import job

@job(interval=timedelta(minutes=1))
def slow(ctx):
    time.sleep(2)
    Path(FINISHED).touch()
"""


def source(template: str, **values: object) -> str:
    """Fill the upper-case placeholders of a job template with Python literals."""
    for name, value in values.items():
        template = template.replace(name.upper(), repr(value))
    return template


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    yield box
    box.close()


@pytest.fixture
def any_sandbox(tmp_path: Path, db_url: str) -> Iterator[Sandbox]:
    """The same test on SQLite and on PostgreSQL."""
    box = Sandbox(tmp_path, db_url)
    yield box
    box.close()


def blocking_job(box: Sandbox, interval: float = 60, limit: float = 30) -> dict[str, Path]:
    marks = {name: box.root / name for name in ("release", "finished")}
    paths = {name: str(path) for name, path in marks.items()}
    box.write_job("block", source(BLOCK, interval=interval, limit=limit, **paths))
    return marks


def running_run(box: Sandbox, job: str) -> int:
    """Wait until `job` has a run that began (status running, its start written); its id.

    A run claimed ahead of its slot is `running` with no start until the slot."""
    rows = wait_until(lambda: [r for r in box.runs(job) if r.status == "running" and r.started_at], 15)
    return int(rows[0].id)


def succeeded(box: Sandbox, job: str) -> list[int]:
    return [r.id for r in box.runs(job) if r.status == "succeeded"]


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


# -- start / stop / status ------------------------------------------------------


def test_start_daemonizes_records_runs_and_stop_removes_the_pidfile(sandbox: Sandbox) -> None:
    sandbox.write_job("tick", source(TICK, out=str(sandbox.root / "ticks")))

    started = sandbox.control("start")

    assert started.returncode == 0, started.stderr
    match = re.fullmatch(r"started \(pid (\d+), log (.+)\)\n", started.stdout)
    assert match, started.stdout
    pid = int(match.group(1))
    assert match.group(2) == str(sandbox.info_log)
    assert sandbox.pidfile_pid() == pid
    assert not process_gone(pid)
    # Detached: not our child, and in a session of its own (no controlling terminal of ours).
    assert parent_pid(pid) != os.getpid()
    assert os.getsid(pid) != os.getsid(0)
    wait_until(lambda: len(succeeded(sandbox, "tick.tick")) >= 2, 15)
    assert {r.pid for r in sandbox.runs("tick.tick")} == {pid}

    status = sandbox.control("status")
    assert (status.returncode, status.stdout) == (0, f"running (pid {pid})\n")

    stopped = sandbox.control("stop")
    assert (stopped.returncode, stopped.stdout) == (0, f"stopped (pid {pid})\n"), stopped.stderr
    assert process_gone(pid)
    assert not sandbox.pidfile.exists()

    after = sandbox.control("status")
    assert (after.returncode, after.stdout) == (3, "not running\n")


# Runs a command as a child subreaper that never reaps: the daemon it starts stays a zombie once it exits.
NON_REAPING_PARENT = """
import ctypes, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans are re-parented here
print(subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode, flush=True)
sys.stdin.read()  # hold on, reaping nothing, until the test closes stdin
"""


def test_stop_returns_once_the_daemon_exited_even_if_its_zombie_is_not_reaped(sandbox: Sandbox) -> None:
    """In a container whose init does not reap, `stop` must not wait for the zombie to disappear."""
    sandbox.write_job("tick", source(TICK, out=str(sandbox.root / "ticks")))
    parent = subprocess.Popen(
        [sys.executable, "-c", NON_REAPING_PARENT, sys.executable, str(CONTROL), "start"],
        env=sandbox.env(grace_period="1s"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "0\n"
        pid = sandbox.pidfile_pid()
        assert pid is not None and parent_pid(pid) == parent.pid

        stopped = sandbox.control("stop", grace_period="1s", timeout=30)

        assert (stopped.returncode, stopped.stdout) == (0, f"stopped (pid {pid})\n"), stopped.stderr
        assert process_gone(pid)
        assert sandbox.control("status").returncode == 3
    finally:
        parent.communicate(timeout=10)


def test_start_after_sigkill_is_not_refused_while_the_old_daemon_awaits_reaping(sandbox: Sandbox) -> None:
    """A killed daemon whose zombie is not reaped yet is dead: its SQLite claim and runs are stale."""
    marks = blocking_job(sandbox)
    parent = subprocess.Popen(
        [sys.executable, "-c", NON_REAPING_PARENT, sys.executable, str(CONTROL), "start"],
        env=sandbox.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "0\n"
        old = sandbox.pidfile_pid()
        assert old is not None
        run_id = running_run(sandbox, "block.block")
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: process_gone(old), 10)
        marks["release"].touch()

        started = sandbox.control("start")

        assert started.returncode == 0, started.stderr
        new = sandbox.pidfile_pid()
        assert new is not None and new != old
        crashed = next(r for r in sandbox.runs("block.block") if r.id == run_id)
        assert (crashed.status, crashed.error_message) == (
            "abandoned",
            f"process {old} on {crashed.host} died while running it",
        )
        assert sandbox.control("stop").returncode == 0
    finally:
        parent.communicate(timeout=10)


def test_second_start_is_refused_naming_the_running_pid(sandbox: Sandbox) -> None:
    sandbox.write_job("tick", source(TICK, out=str(sandbox.root / "ticks")))
    assert sandbox.control("start").returncode == 0
    pid = sandbox.pidfile_pid()

    second = sandbox.control("start")

    assert second.returncode != 0
    assert f"already running (pid {pid}" in second.stderr
    assert sandbox.pidfile_pid() == pid and not process_gone(pid)
    assert sandbox.control("stop").returncode == 0


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(child.stdout)


def test_stale_pidfile_is_reported_by_status_and_cleaned_up_by_start(sandbox: Sandbox) -> None:
    sandbox.write_job("tick", source(TICK, out=str(sandbox.root / "ticks")))
    sandbox.pidfile.parent.mkdir(parents=True)
    sandbox.pidfile.write_text(f"{dead_pid()}\n")

    status = sandbox.control("status")
    # LSB: 1 = "program is dead and the pidfile exists".
    assert status.returncode == 1
    assert status.stdout == f"not running (stale pidfile {sandbox.pidfile})\n"

    started = sandbox.control("start")
    assert started.returncode == 0, started.stderr
    pid = sandbox.pidfile_pid()
    assert pid is not None and f"pid {pid}" in started.stdout and not process_gone(pid)
    assert sandbox.control("stop").returncode == 0


def test_pidfile_that_is_a_symlink_is_refused(sandbox: Sandbox) -> None:
    target = sandbox.root / "elsewhere"
    target.write_text("precious\n")
    sandbox.pidfile.parent.mkdir(parents=True)
    sandbox.pidfile.symlink_to(target)

    for command in ("start", "stop"):  # `run` and `status` share these checks
        result = sandbox.control(command, timeout=15)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stdout == ""
        assert result.stderr == f"config: pidfile {sandbox.pidfile}: is a symlink; refusing to use it\n"
    assert target.read_text() == "precious\n"


def test_restart_replaces_the_daemon_and_runs_continue(sandbox: Sandbox) -> None:
    sandbox.write_job("tick", source(TICK, out=str(sandbox.root / "ticks")))
    assert sandbox.control("start").returncode == 0
    old = sandbox.pidfile_pid()
    assert old is not None
    wait_until(lambda: succeeded(sandbox, "tick.tick"), 15)

    restarted = sandbox.control("restart")

    assert restarted.returncode == 0, restarted.stderr
    new = sandbox.pidfile_pid()
    assert new is not None and new != old
    assert restarted.stdout.startswith(f"stopped (pid {old})\nstarted (pid {new}, ")
    assert process_gone(old) and not process_gone(new)
    wait_until(lambda: any(r.pid == new for r in sandbox.runs("tick.tick") if r.status == "succeeded"), 15)
    assert sandbox.control("stop").returncode == 0


def test_start_failure_is_one_line_without_the_password_and_leaves_no_pidfile(sandbox: Sandbox) -> None:
    sandbox.write_job("tick", source(TICK, out=str(sandbox.root / "ticks")))

    result = sandbox.control("start", database_url="postgresql://u:secret@127.0.0.1:1/db")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: database unavailable: ")
    assert "secret" not in result.stderr
    assert not sandbox.pidfile.exists()


def test_stop_when_not_running_exits_0(sandbox: Sandbox) -> None:
    result = sandbox.control("stop")

    assert (result.returncode, result.stdout, result.stderr) == (0, "not running\n", "")


# -- crashes and signals ----------------------------------------------------------


def test_sigkill_mid_run_is_abandoned_and_caught_up_after_restart(any_sandbox: Sandbox) -> None:
    box = any_sandbox
    marks = blocking_job(box, interval=1)
    first = box.daemon()
    run_id = running_run(box, "block.block")
    killed_at = datetime.now(UTC)

    first.signal(signal.SIGKILL)
    assert first.wait_exit(10) == -signal.SIGKILL
    assert box.pidfile_pid() == first.pid  # left behind by the crash
    marks["release"].touch()
    # Let two slots pass while no daemon runs, so the restart has slots to catch up.
    wait_until(lambda: datetime.now(UTC) >= killed_at + timedelta(seconds=2.2), 5)
    second = box.daemon()

    crashed = next(r for r in box.runs("block.block") if r.id == run_id)
    assert crashed.status == "abandoned"
    assert crashed.error_message == f"process {first.pid} on {crashed.host} died while running it"
    caught_up = wait_until(
        lambda: [
            r
            for r in box.runs("block.block")
            if r.trigger == "catchup" and r.status == "succeeded" and r.scheduled_for > killed_at
        ],
        15,
    )
    assert caught_up[0].pid == second.pid
    second.signal(signal.SIGTERM)
    assert second.wait_exit(15) == 0


def test_sigterm_waits_for_the_running_job(sandbox: Sandbox) -> None:
    box = sandbox
    finished = box.root / "finished"
    box.write_job("slow", source(SLOW, finished=str(finished)))
    daemon = box.daemon()
    run_id = running_run(box, "slow.slow")

    daemon.signal(signal.SIGTERM)

    assert daemon.wait_exit(15) == 0, daemon.tail()
    assert finished.exists()
    run = next(r for r in box.runs("slow.slow") if r.id == run_id)
    assert run.status == "succeeded"
    assert run.duration_seconds is not None and run.duration_seconds >= 1.9
    assert not box.pidfile.exists()


def test_sigterm_abandons_a_job_longer_than_the_grace_period(sandbox: Sandbox) -> None:
    marks = blocking_job(sandbox, limit=20)
    daemon = sandbox.daemon(grace_period="1s")
    run_id = running_run(sandbox, "block.block")

    daemon.signal(signal.SIGTERM)

    # Well before the job's own 20 s limit: the daemon does not wait for it past the grace period.
    assert daemon.wait_exit(10) == 0, daemon.tail()
    assert not marks["finished"].exists()
    run = next(r for r in sandbox.runs("block.block") if r.id == run_id)
    assert run.status == "abandoned"
    assert run.error_message == "the daemon stopped before the run finished"
    assert not sandbox.pidfile.exists()


def test_second_sigterm_exits_at_once(sandbox: Sandbox) -> None:
    marks = blocking_job(sandbox, limit=20)
    daemon = sandbox.daemon(grace_period="15s")
    running_run(sandbox, "block.block")
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_output("waiting up to 15s for 1 running jobs")

    daemon.signal(signal.SIGTERM)

    assert daemon.wait_exit(3) == 1, daemon.tail()
    assert not marks["finished"].exists()


def test_sighup_loads_a_new_job_module(sandbox: Sandbox) -> None:
    sandbox.write_job("tick", source(TICK, out=str(sandbox.root / "ticks")))
    daemon = sandbox.daemon()
    wait_until(lambda: succeeded(sandbox, "tick.tick"), 15)
    sandbox.write_job("fresh", source(TICK.replace("def tick", "def fresh"), out=str(sandbox.root / "fresh")))

    daemon.signal(signal.SIGHUP)

    daemon.wait_for_output("reloaded: 2 jobs, 0 problems")
    wait_until(lambda: succeeded(sandbox, "fresh.fresh"), 15)
    assert daemon.alive()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0


def test_sighup_keeps_the_jobs_of_a_module_that_no_longer_imports(sandbox: Sandbox) -> None:
    ticks = sandbox.root / "ticks"
    sandbox.write_job("tick", source(TICK, out=str(ticks)))
    daemon = sandbox.daemon()
    wait_until(lambda: succeeded(sandbox, "tick.tick"), 15)
    sandbox.write_job("tick", source(TICK, out=str(ticks)) + "\nthis is not python\n")

    daemon.signal(signal.SIGHUP)

    daemon.wait_for_output("reloaded: 1 jobs, 1 problems")
    before = len(succeeded(sandbox, "tick.tick"))
    wait_until(lambda: len(succeeded(sandbox, "tick.tick")) >= before + 2, 15)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0


# -- how it is run ----------------------------------------------------------------


def test_control_runs_from_the_code_folder_with_pythonpath(sandbox: Sandbox) -> None:
    """As the original README: cd code && PYTHONPATH=$PYTHONPATH:$(pwd) python scheduler/control.py."""
    code = REPO / "code"
    env = sandbox.env()
    env["PYTHONPATH"] = f"{env.get('PYTHONPATH', '')}:{code}"
    del env["SCHEDULER_JOBS_PATH"]  # the default: the example jobs in code/jobs

    def control(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "scheduler/control.py", command],
            cwd=code,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    status = control("status")
    assert (status.returncode, status.stdout, status.stderr) == (3, "not running\n", "")
    check = control("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok    heartbeat.ping: every 10s; module heartbeat, next " in check.stdout
    assert check.stdout.endswith(
        f"0 problems; database {sandbox.db_url} (not created yet: the daemon creates it)\n"
    )


def test_second_instance_on_the_same_sqlite_database_is_refused(sandbox: Sandbox) -> None:
    sandbox.write_job("tick", source(TICK, out=str(sandbox.root / "ticks")))
    first = sandbox.daemon()

    second = sandbox.daemon(ready=False, pidfile=str(sandbox.root / "other.pid"))

    assert second.wait_exit(15) == 1
    assert "SQLite is single-node, use PostgreSQL for several instances" in second.output()
    assert f"(pid {first.pid})" in second.output()
    assert first.alive()
    before = len(succeeded(sandbox, "tick.tick"))
    wait_until(lambda: len(succeeded(sandbox, "tick.tick")) > before, 15)
    assert all(r.pid == first.pid for r in sandbox.runs("tick.tick"))


def test_info_log_has_an_end_line_per_run_and_a_start_line_per_run_still_going(sandbox: Sandbox) -> None:
    sandbox.write_job("tick", source(TICK, out=str(sandbox.root / "ticks")))
    sandbox.write_job("slow", source(SLOW, finished=str(sandbox.root / "finished")))
    daemon = sandbox.daemon()
    wait_until(lambda: len(succeeded(sandbox, "tick.tick")) >= 3 and succeeded(sandbox, "slow.slow"), 15)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0

    log = sandbox.info_log.read_text()
    ends = [int(n) for n in re.findall(r"run (\d+) of tick\.tick succeeded in [0-9.]+s \(slot ", log)]
    ran = succeeded(sandbox, "tick.tick")
    assert len(ran) >= 3
    assert sorted(ends) == ran
    # The 2 s job's start is logged while it runs, before its end; a short run has its end line only.
    (slow,) = succeeded(sandbox, "slow.slow")
    start = log.index(f"run {slow} of slow.slow started (slot ")
    assert start < log.index(f"run {slow} of slow.slow succeeded in ")
