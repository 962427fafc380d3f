"""The watchdog's `crashed` incident: a daemon that died while a run was in flight (the next daemon
on its host marked the run abandoned) opens one incident per host, posted to Slack through the
outbox, and recovers after a quiet window.

Driven step by step on a FakeClock; notices go through the real slack_sdk client to the fake
Slack server; the store is SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from scheduler.alerting.watchdog import CRASH_WINDOW, Watchdog
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.store import Claim, Owner, Store

from tests.support.fakeslack import FakeSlack
from tests.support.watchdog import (
    config_fixture,  # noqa: F401  (the `config` fixture)
    define,
    health_fixture,  # noqa: F401  (the `health` fixture)
    pass_and_send,
)

DEAD = Owner("inst-old", "node-a", 4242)  # the daemon that died
JOBS = ["crashy.job", "other.job"]


@pytest.fixture
def watchdog(store: Store, clock: FakeClock, config: Settings, health: Health) -> Watchdog:
    define(store, clock, JOBS, instance="inst-new", pid=5151, interval=timedelta(hours=1))
    for name in JOBS:  # paused: their slots going unstarted is no incident, only the crash is
        store.jobs.set_paused(name, True, "ops@host", clock.now())
    return Watchdog(store, clock, config, health, worker="inst-new")


def in_flight(store: Store, clock: FakeClock, job: str, owner: Owner = DEAD) -> int:
    """A run its daemon had started when it died: still `running`, with the daemon's pid."""
    slot = clock.now()
    [won] = store.runs.claim([Claim(job, slot)], owner, slot, slot + timedelta(days=1))
    store.runs.mark_started([(won.run_id, won.fence, slot)])
    return won.run_id


def restart(store: Store, clock: FakeClock, dead_pid: int = DEAD.pid) -> list[int]:
    """What the next daemon on node-a does at its start: abandon the dead daemon's runs."""
    return [r.id for r in store.runs.reap_local("node-a", lambda pid: pid != dead_pid, clock.now())]


def texts(fake: FakeSlack) -> list[str]:
    return [str(m["body"]["text"]) for m in fake.messages]


def test_a_daemon_that_died_with_a_run_in_flight_opens_one_crashed_incident_until_a_quiet_window(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, watchdog: Watchdog
) -> None:
    assert pass_and_send(watchdog, clock) == "no change"
    run = in_flight(store, clock, "crashy.job")
    clock.advance(5)
    assert pass_and_send(watchdog, clock) == "no change"  # running, not yet known to be dead
    assert restart(store, clock) == [run]
    clock.advance(1)
    assert pass_and_send(watchdog, clock) == "1 opened"
    [incident] = store.incidents.open_incidents(("crashed",))
    assert (incident.subject, incident.kind) == ("node-a", "crashed")
    [posted] = texts(fake_slack)
    assert posted.startswith("[scheduler] Daemon crashed")
    assert f"the daemon on node-a (pid 4242) died while run {run} of crashy.job was in flight" in posted
    for _ in range(3):  # opened once: later passes inside the window post nothing
        clock.advance(60)
        assert pass_and_send(watchdog, clock) == "no change"
    assert len(fake_slack.messages) == 1
    clock.advance(CRASH_WINDOW)
    assert pass_and_send(watchdog, clock) == "1 closed"
    assert store.incidents.open_incidents(("crashed",)) == []
    assert len(fake_slack.messages) == 2
    assert "Recovered" in str(fake_slack.messages[1]["body"])


def test_a_daemon_crashing_again_inside_the_window_keeps_its_one_incident_open(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, watchdog: Watchdog
) -> None:
    in_flight(store, clock, "crashy.job")
    restart(store, clock)
    assert pass_and_send(watchdog, clock) == "1 opened"
    clock.advance(CRASH_WINDOW - timedelta(minutes=1))
    again = Owner("inst-mid", "node-a", 4343)
    second = in_flight(store, clock, "other.job", again)
    assert restart(store, clock, again.pid) == [second]
    clock.advance(timedelta(minutes=2))  # past the first death's window, inside the second's
    assert pass_and_send(watchdog, clock) == "1 updated"  # the text names the latest death
    [incident] = store.incidents.open_incidents(("crashed",))
    assert f"(pid 4343) died while run {second} of other.job" in incident.summary
    assert len(fake_slack.messages) == 1  # still the one message
    clock.advance(CRASH_WINDOW)
    assert pass_and_send(watchdog, clock) == "1 closed"


def test_runs_abandoned_for_another_reason_are_not_a_crash(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, watchdog: Watchdog
) -> None:
    in_flight(store, clock, "crashy.job")
    assert restart(store, clock, dead_pid=-1) == []  # its daemon is alive: nothing abandoned
    clock.advance(timedelta(days=2))  # the lease runs out: the reaper abandons it, a lost instance
    assert len(store.runs.reap(clock.now(), reason="its instance was lost")) == 1
    watchdog.check_jobs(clock.now())
    assert store.incidents.open_incidents(("crashed",)) == []
