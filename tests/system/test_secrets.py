"""Credentials in a database URL never reach the terminal or the log, however the URL is written."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.system

SECRET = "S3cretPW"
TICK = """
from datetime import timedelta
from scheduler import job

@job(interval=timedelta(seconds=30))
def tick():
    pass
"""


@pytest.fixture
def sandbox(tmp_path: Path, pg_url: str) -> Iterator[Sandbox]:
    # Trust authentication: the server ignores the password, so the daemon connects and logs its URL.
    box = Sandbox(tmp_path, f"{pg_url}?password={SECRET}&sslpassword={SECRET}x")
    box.write_job("tick", TICK)
    yield box
    box.close()


def test_password_in_query_parameters_is_hidden_from_check_db_current_and_the_log(sandbox: Sandbox) -> None:
    upgrade = sandbox.control("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    outputs = [upgrade]
    for args in (("check",), ("db", "current"), ("db", "current", "--json")):
        result = sandbox.control(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        outputs.append(result)
    daemon = sandbox.daemon()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0

    log = sandbox.info_log.read_text()
    assert "started instance" in log and "password=***&sslpassword=***" in log
    texts = [r.stdout + r.stderr for r in outputs] + [log, daemon.output()]
    assert all(SECRET not in text for text in texts)
    assert "password=***" in outputs[2].stdout


def test_unreachable_database_error_does_not_show_a_password_with_a_raw_at_sign(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, f"postgresql://sched:{SECRET}@x@127.0.0.1:1/db?passfile=/secret/{SECRET}")
    try:
        for args in (("check",), ("db", "current"), ("jobs",), ("start",)):
            result = box.control(*args)
            assert result.returncode != 0, args
            assert SECRET not in result.stdout + result.stderr, args
    finally:
        box.close()
