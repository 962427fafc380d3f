"""What each command imports: `python -X importtime control.py ...`, module names read off stderr.

`status`, `stop`, `--help` and `start` (its parent, up to the fork) need only
the standard library and the pidfile code; read commands open the store but
never load Alembic, slack_sdk, waitress or prometheus-client; on a SQLite file,
those that read jobs and runs do not load SQLAlchemy either.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import CONTROL, REPO, Sandbox, process_gone, wait_until

pytestmark = pytest.mark.system

# The scheduler modules a lifecycle command may load: settings (with URL redaction), the
# pidfile, the writability check and the parser; each of them imports only the standard library.
LIFECYCLE_MODULES = {
    "scheduler",
    "scheduler.clock",
    "scheduler.config",
    "scheduler.errors",
    "scheduler.redact",
    "scheduler.writable",  # start checks its folders can be written before it forks
    "scheduler.daemon",
    "scheduler.daemon.pidfile",
    "scheduler.operator",
    "scheduler.operator.cli",
}
PIDFILE_PACKAGES = {"daemon", "lockfile"}  # python-daemon's PID lock and the lockfile it builds on
STDLIB_PROBES = {"org"}  # the standard library's copy module tries Jython's org.python.core
HEAVY = ("alembic", "slack_sdk", "waitress", "prometheus_client")


def imported(args: list[str], env: dict[str, str]) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules `control.py ARGS` imports (the parent process's, for a forking command)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(CONTROL), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    names.discard("package")  # the header line
    return names, done


def baseline(env: dict[str, str]) -> set[str]:
    """What the interpreter imports before any of our code (site, .pth hooks, editable finder)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}


def outside_stdlib(names: set[str], env: dict[str, str]) -> set[str]:
    allowed = baseline(env)
    return {
        n
        for n in names - allowed
        if n.split(".")[0] not in sys.stdlib_module_names
        and n.split(".")[0] not in PIDFILE_PACKAGES | STDLIB_PROBES
        and n not in LIFECYCLE_MODULES
    }


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path / "box")
    try:
        yield sandbox
    finally:
        sandbox.close()


@pytest.mark.parametrize("args", [["status"], ["stop"], ["--help"], ["status", "--help"]])
def test_lifecycle_commands_import_only_the_standard_library_and_the_pidfile_code(
    box: Sandbox, args: list[str]
) -> None:
    env = box.env()
    names, done = imported(args, env)
    assert done.returncode in (0, 3), done.stderr[-2000:]
    assert "scheduler.daemon.pidfile" in names or "--help" in args
    assert outside_stdlib(names, env) == set()


def test_start_imports_only_the_pidfile_code_up_to_the_fork(box: Sandbox) -> None:
    env = box.env()
    names, done = imported(["start"], env)
    try:
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith("started (pid ")
        assert outside_stdlib(names, env) == set()
    finally:
        pid = box.pidfile_pid()
        stopped = box.control("stop")
        assert stopped.returncode == 0, stopped.stderr
        if pid is not None:
            wait_until(lambda: process_gone(pid), 15)


LEAN = ("scheduler.store.lite",)  # on SQLite, the read commands of jobs and runs go through sqlite3...
NO_SQLALCHEMY = ("sqlalchemy",)  # ...and so never load SQLAlchemy


@pytest.mark.parametrize(
    ("args", "loaded", "also_absent"),
    [
        (["jobs"], LEAN, NO_SQLALCHEMY),
        (["history", "--limit", "5"], LEAN, NO_SQLALCHEMY),
        (["history", "x.y"], LEAN, NO_SQLALCHEMY),
        (["show", "x.y"], LEAN, NO_SQLALCHEMY),
        (["next", "x.y"], LEAN, NO_SQLALCHEMY),
        (["logs", "1"], LEAN, NO_SQLALCHEMY),
        (["alerts"], ("scheduler.store.incidents",), ()),
    ],
)
def test_read_commands_open_the_store_without_alembic_slack_waitress_or_prometheus(
    box: Sandbox, args: list[str], loaded: tuple[str, ...], also_absent: tuple[str, ...]
) -> None:
    upgraded = box.control("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    names, done = imported(args, box.env())
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert {"scheduler.store", "scheduler.operator.queries", *loaded} <= names
    assert sorted(n for n in names if n.split(".")[0] in (*HEAVY, *also_absent)) == []
