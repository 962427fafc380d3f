"""The served API against its own OpenAPI document, with schemathesis: every check, bounded, seeded.

A real waitress server on a free port over a SQLite store with jobs, runs, an
instance, an incident and an audit entry; schemathesis reads the document from
the server and sends generated requests (valid and invalid ones, writes with
the bearer token). A fixed seed and a small example budget keep it repeatable
and well under a minute.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.jobs.registry import make_spec
from scheduler.operator.http import Api
from scheduler.operator.metrics import Metrics
from scheduler.operator.server import HttpServer
from scheduler.store import Claim, InstanceRow, Outcome, Owner, Store

TOKEN = "contract-token"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED, EXAMPLES = 20261202, 6


def work() -> None:
    """A job function; never called here."""


@pytest.fixture
def served(sqlite_url: str, clock: FakeClock) -> Iterator[str]:
    store = Store(sqlite_url)
    store.upgrade()
    now = clock.now()
    store.jobs.sync(
        [
            make_spec(work, name="etl.load", interval=timedelta(minutes=10)),
            make_spec(work, name="reports.nightly", cron="30 1 * * *", timezone="Europe/London"),
        ],
        now - timedelta(hours=1),
    )
    owner = Owner("inst-a", "host-a", 4242)
    claimed = store.runs.claim([Claim("etl.load", now)], owner, now, now + timedelta(minutes=1))[0]
    store.runs.finish(
        [Outcome(claimed.run_id, claimed.fence, "succeeded", now + timedelta(seconds=2), started_at=now)]
    )
    store.cluster.register(
        InstanceRow("inst-a", "host-a", 1, "1.0.0", now, now, now + timedelta(days=1), None, "alive", [], [])
    )
    store.incidents.open_incident("etl.load", "failing", "etl.load failed", {}, now, None)
    store.jobs.set_paused("reports.nightly", True, "test", now)
    health = Health(clock)
    health.loop_alive()
    server = HttpServer(
        Api(store, health, clock, TOKEN, Metrics(store, health, clock, "inst-a")), "127.0.0.1", 0
    )
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        store.dispose()


def test_the_served_api_passes_every_schemathesis_check(served: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"{served}/api/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--request-timeout",
            "10",
            "--max-time",
            "40",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "passed" in done.stdout
