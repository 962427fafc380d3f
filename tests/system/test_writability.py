"""Folders the daemon must write are checked up front: one line naming the setting and path.

/sys stands in for a read-only filesystem: even root cannot create files there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.system

READ_ONLY = Path("/sys")
JOB = (
    "from datetime import timedelta\nfrom scheduler import job\n"
    "@job(interval=timedelta(minutes=1))\ndef j(): pass\n"
)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    box.write_job("j", JOB)
    yield box
    box.close()


def one_line(text: str) -> str:
    assert "Traceback" not in text and text.count("\n") == 1, text
    return text.rstrip("\n")


@pytest.mark.parametrize("folder", [READ_ONLY, READ_ONLY / "scheduler-test" / "deeper"])
def test_check_reports_a_sqlite_database_that_cannot_be_created(sandbox: Sandbox, folder: Path) -> None:
    result = sandbox.control("check", database_url=f"sqlite:///{folder / 'scheduler.db'}")
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("error")]
    assert errors == [errors[0]] and errors[0].startswith(f"error database {folder / 'scheduler.db'}: ")
    assert f"cannot write in {READ_ONLY}" in errors[0]
    assert "the daemon creates it" not in result.stdout


def test_db_upgrade_in_a_folder_that_cannot_be_created_is_one_line(sandbox: Sandbox) -> None:
    url = f"sqlite:///{READ_ONLY / 'scheduler-test' / 'scheduler.db'}"
    result = sandbox.control("db", "upgrade", database_url=url)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"error: database folder {READ_ONLY / 'scheduler-test'}: cannot create it: ")


@pytest.mark.parametrize("command", ["run", "start"])
@pytest.mark.parametrize("setting", ["log_dir", "state_dir"])
def test_daemon_refuses_to_start_with_a_folder_it_cannot_write(
    sandbox: Sandbox, command: str, setting: str
) -> None:
    folder = READ_ONLY / "scheduler-test"
    result = sandbox.control(command, timeout=30, **{setting: str(folder)})
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(
        f"config: SCHEDULER_{setting.upper()}: cannot write in {READ_ONLY} (to create {folder}): "
    )
    assert sandbox.pidfile_pid() is None
