"""Health: the reason /healthz and the watchdog give."""

from __future__ import annotations

from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.errors import StoreUnavailable


def test_unavailable_database_reason_says_so_once(clock: FakeClock) -> None:
    health = Health(clock)
    health.database(False, str(StoreUnavailable("database unavailable: database is locked")))
    assert health.report().reason == "database unavailable: database is locked"


def test_reason_without_the_prefix_gets_it(clock: FakeClock) -> None:
    health = Health(clock)
    health.database(False, "connection refused")
    report = health.report()
    assert (report.ok, report.reason) == (False, "database unavailable: connection refused")
