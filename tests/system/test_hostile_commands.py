"""Commands under hostile conditions: a reader that goes away, bad HTTP addresses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from scheduler.jobs.registry import make_spec
from scheduler.store import Claim, Outcome, Owner, Store

from tests.support.sandbox import CONTROL, Sandbox

pytestmark = pytest.mark.system


def work() -> None:
    """A job function; never called here."""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    box.write_job(
        "etl",
        "from datetime import timedelta\nfrom scheduler import job\n"
        "@job(interval=timedelta(minutes=1))\ndef load(): pass\n",
    )
    store = Store(box.db_url)
    store.upgrade()
    now = datetime.now(UTC)
    store.jobs.sync([make_spec(work, name="etl.load", interval=timedelta(minutes=1))], now)
    owner = Owner("inst-a", "host-a", 4242)
    claimed = store.runs.claim([Claim("etl.load", now)], owner, now, now + timedelta(minutes=1))[0]
    log = "".join(f"line {i} of a long captured log\n" for i in range(3000))
    store.runs.finish([Outcome(claimed.run_id, claimed.fence, "succeeded", finished_at=now, log=log)])
    store.dispose()
    yield box
    box.close()


COMMANDS = [
    ["logs", "1"],
    ["logs", "1", "--json"],
    ["show", "etl.load"],
    ["history"],
    ["jobs", "--json"],
    ["next", "etl.load", "-n", "50"],
    ["audit"],
    ["db", "current"],
    ["status"],
    ["check"],
    ["--help"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_command_whose_reader_closed_the_pipe_exits_without_a_traceback(
    sandbox: Sandbox, args: list[str]
) -> None:
    # The reader is gone before the command writes a byte, as with `| head -0`, or `| head` after
    # its lines: every write then fails with EPIPE.
    errors = sandbox.root / "stderr"
    with errors.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(CONTROL), *args],
            env=sandbox.env(),
            stdout=subprocess.PIPE,
            stderr=sink,
        )
        assert process.stdout is not None
        process.stdout.close()
        code = process.wait(60)
    assert errors.read_text() == ""
    assert code in (0, 1, 3)


def test_run_with_an_invalid_http_host_is_one_line_naming_the_setting(sandbox: Sandbox) -> None:
    for command in ("run", "start"):
        result = sandbox.control(command, http_enabled="true", http_host="256.1.1.1", api_token="t")
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr == "config: SCHEDULER_HTTP_HOST: not an IP address or host name: '256.1.1.1'\n"


def test_start_on_a_public_address_without_a_token_is_refused(sandbox: Sandbox) -> None:
    result = sandbox.control("start", http_enabled="true", http_host="0.0.0.0", http_port="18931")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "config: SCHEDULER_HTTP_HOST: 0.0.0.0 is not loopback and no SCHEDULER_API_TOKEN"
    )
    assert sandbox.pidfile_pid() is None


@pytest.mark.parametrize(
    ("args", "url", "message"),
    [
        (["logs", "99999999999999999999"], None, "argument run_id: not a run id"),
        (
            ["db", "current"],
            "postgresql://u:S3cretPW@h:abc/db",
            "database URL postgresql+psycopg2://u:***@h:abc/db",
        ),
        (["db", "current"], "postgresql://u@[::1/db", "the port is not a number"),
    ],
)
def test_malformed_numbers_in_arguments_and_urls_are_one_line_not_a_traceback(
    sandbox: Sandbox, args: list[str], url: str | None, message: str
) -> None:
    result = sandbox.control(*args, **({"database_url": url} if url else {}))
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr and "S3cretPW" not in result.stderr
    assert message in result.stderr.splitlines()[-1]
