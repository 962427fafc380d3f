"""What the watchdog tests driven on a FakeClock share (test_watchdog_findings, test_watchdog_crash).

The `config` and `health` fixtures are registered by importing `config_fixture` and
`health_fixture` into a test module; tests take them as `config` and `health`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from scheduler.alerting.watchdog import Watchdog
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.jobs.registry import make_spec
from scheduler.store import InstanceRow, Store

from tests.support.fakeslack import FakeSlack

TOKEN = "xoxb-333333333-watchdogTokenSecret"


def job_func() -> None:
    pass


@pytest.fixture(name="config")
def config_fixture(fake_slack: FakeSlack, tmp_path: Path) -> Settings:
    """This instance is node-a; notices go to the fake Slack in token mode."""
    return replace(
        Settings(),
        instance_name="node-a",
        state_dir=tmp_path / "var",
        slack_token=TOKEN,
        slack_base_url=fake_slack.api_url,
    )


@pytest.fixture(name="health")
def health_fixture(clock: FakeClock) -> Health:
    """Past its start-up: the dispatcher has caught up, so missed slots count."""
    health = Health(clock)
    health.mark_caught_up()
    return health


def define(
    store: Store,
    clock: FakeClock,
    names: list[str],
    *,
    instance: str = "inst-a",
    pid: int = 4242,
    **options: Any,
) -> None:
    """Jobs `names` (every 60 s unless `options` say otherwise), loaded by a live instance on node-a."""
    options.setdefault("interval", timedelta(seconds=60))
    now = clock.now()
    store.jobs.sync([make_spec(job_func, name=name, **options) for name in names], now)
    row = InstanceRow(instance, "node-a", pid, "1.0.0", now, now, now + timedelta(days=1), None, "alive",
                      names, [])  # fmt: skip
    store.cluster.register(row)


def pass_and_send(wd: Watchdog, clock: FakeClock) -> str:
    """One job pass and one outbox drain; returns the pass's sentence."""
    sentence = wd.check_jobs(clock.now())
    wd.sender.drain()
    return sentence
