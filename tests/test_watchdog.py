"""The watchdog: what it detects, one Slack message per incident, recovery, dedup across processes.

Each test drives the steps directly on a FakeClock (`check_jobs(now)`, then
`sender.drain()`); the notices go through the real slack_sdk client to a fake
Slack server, and the store is SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scheduler.alerting.findings import grace_for, lateness
from scheduler.alerting.record import Finding
from scheduler.alerting.watchdog import BURST_DEFER, Watchdog, plan
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.daemon.wiring import build_service
from scheduler.errors import SchedulerError
from scheduler.jobs.registry import make_spec
from scheduler.operator.alerts import send_test
from scheduler.store import Claim, Claimed, InstanceRow, JobRow, Outcome, Owner, Store
from scheduler.store.incidents import IncidentRow

from tests.support.fakeslack import FakeSlack
from tests.support.outbox import notices
from tests.support.tcpproxy import TcpProxy

TOKEN = "xoxb-222222222-watchdogTokenSecret"
OWNER = Owner("inst-a", "node-a", 4242)
JOB = "reports.daily"


def job_func() -> None:
    pass


STATE_DIR: list[Path] = []  # this test's state dir (the local alert spool), set by `state_dir`


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path) -> Iterator[Path]:
    STATE_DIR.append(tmp_path / "var")
    yield STATE_DIR[-1]
    STATE_DIR.clear()


def settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {
        "instance_name": "node-a",
        "watchdog_interval": timedelta(seconds=15),
        "state_dir": STATE_DIR[-1],
    }
    return replace(Settings(), **{**values, **changes})


def token_settings(fake: FakeSlack, **changes: Any) -> Settings:
    return settings(slack_token=TOKEN, slack_base_url=fake.api_url, **changes)


def watchdog(store: Store, clock: FakeClock, config: Settings, worker: str = "inst-a") -> Watchdog:
    return Watchdog(store, clock, config, Health(clock), worker=worker)


def define(store: Store, clock: FakeClock, name: str = JOB, **options: Any) -> JobRow:
    options.setdefault("interval", timedelta(seconds=60))
    spec = make_spec(job_func, name=name, **options)
    return store.jobs.sync([spec], clock.now())[name]


def join(store: Store, clock: FakeClock, jobs: list[str], problems: list[dict[str, str]] | None = None,
         instance: str = "inst-a", ttl: timedelta = timedelta(days=1)) -> None:  # fmt: skip
    now = clock.now()
    row = InstanceRow(
        instance, "node-a", 4242, "1.0.0", now, now, now + ttl, None, "alive", jobs, problems or []
    )
    store.cluster.register(row)


def start_run(store: Store, clock: FakeClock, slot: datetime, job: str = JOB) -> Claimed:
    [won] = store.runs.claim([Claim(job, slot)], OWNER, clock.now(), clock.now() + timedelta(days=1))
    store.runs.mark_started([(won.run_id, won.fence, clock.now())])  # its function began, as in the pool
    return won


def finish(store: Store, clock: FakeClock, run: Claimed, status: str = "succeeded", error: str = "") -> None:
    error_type, error_message = ("ValueError", error) if error else (None, None)
    store.runs.finish(
        [Outcome(run.run_id, run.fence, status, clock.now(), None, 1, error_type, error_message)]
    )


def check(wd: Watchdog, clock: FakeClock) -> str:
    """One leader check and one outbox drain."""
    sentence = wd.check_jobs(clock.now())
    wd.sender.drain()
    return sentence


def texts(fake: FakeSlack) -> list[str]:
    return [str(m["body"]["text"]) for m in fake.messages]


def header(message: dict[str, Any]) -> str:
    return str(message["body"]["blocks"][0]["text"]["text"])


def opened(store: Store) -> list[tuple[str, str]]:
    return sorted((i.subject, i.kind) for i in store.incidents.open_incidents())


# -- pure decisions ---------------------------------------------------------------

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def row(**options: Any) -> JobRow:
    options.setdefault("interval", timedelta(seconds=60))
    definition = make_spec(job_func, name=JOB, **options).definition()
    anchor = T0 + timedelta(seconds=1)
    return JobRow(JOB, definition, "every 1m", anchor, T0, T0, T0, False, None, None, None, None, None)


@pytest.mark.parametrize(
    ("options", "grace"),
    [
        pytest.param(
            {"interval": timedelta(seconds=10)}, timedelta(seconds=60), id="short-interval-floor-60s"
        ),
        pytest.param({"interval": timedelta(minutes=5)}, timedelta(seconds=150), id="half-the-interval"),
        pytest.param({"interval": timedelta(days=1)}, timedelta(hours=1), id="long-interval-capped-1h"),
        pytest.param(
            {"interval": timedelta(minutes=10), "jitter": timedelta(seconds=30)},
            timedelta(minutes=5, seconds=30),
            id="jitter-added",
        ),
        pytest.param(
            {"interval": timedelta(minutes=10), "grace": timedelta(seconds=20)},
            timedelta(seconds=20),
            id="explicit-grace-wins",
        ),
    ],
)
def test_grace_defaults_to_half_the_period_clamped_to_1m_1h(
    options: dict[str, Any], grace: timedelta
) -> None:
    job_row = row(**options)
    assert grace_for(job_row, timedelta(seconds=job_row.definition["interval_seconds"])) == grace


SLOT1 = T0 + timedelta(seconds=1)  # the first slot of `row()`: anchor at the next whole second


@pytest.mark.parametrize(
    ("last_started", "now", "kind"),
    [
        pytest.param(None, SLOT1 + timedelta(seconds=59), None, id="never-ran-within-grace"),
        pytest.param(None, SLOT1 + timedelta(seconds=60), "inactive", id="never-ran-past-grace"),
        pytest.param(SLOT1, SLOT1 + timedelta(seconds=119), None, id="next-slot-within-grace"),
        pytest.param(SLOT1, SLOT1 + timedelta(seconds=120), "delayed", id="next-slot-past-grace"),
        pytest.param(
            SLOT1 + timedelta(minutes=60, seconds=5), SLOT1 + timedelta(minutes=61), None, id="on-time"
        ),
    ],
)
def test_lateness_table(last_started: datetime | None, now: datetime, kind: str | None) -> None:
    finding = lateness(row(), last_started, now)
    assert (finding.kind if finding else None) == kind


def test_lateness_counts_only_slots_after_the_definition_changed() -> None:
    changed = replace(row(), updated_at=T0 + timedelta(hours=2))  # e.g. resumed after a pause
    assert lateness(changed, SLOT1, T0 + timedelta(hours=2, seconds=30)) is None
    later = lateness(changed, SLOT1, T0 + timedelta(hours=2, minutes=2))
    assert later is not None and later.kind == "delayed"


def test_cron_job_uses_its_own_slots() -> None:
    daily = row(interval=None, cron="0 6 * * *", timezone="Europe/London")
    # Defined at 12:00 UTC on 1 March; the first slot is 06:00 London (= UTC in March) on 2 March.
    assert lateness(daily, None, datetime(2026, 3, 2, 6, 59, tzinfo=UTC)) is None
    finding = lateness(daily, None, datetime(2026, 3, 2, 7, 0, tzinfo=UTC))
    assert finding is not None and finding.kind == "inactive"
    assert finding.since == datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


def incident(subject: str, kind: str, notified: datetime | None) -> IncidentRow:
    return IncidentRow(1, subject, kind, T0, None, "summary", {}, notified, None)


def test_plan_opens_new_closes_gone_and_reminds_only_when_due() -> None:
    new = Finding("a", "delayed", "late", T0)
    lasting = Finding("b", "failing", "failed", T0)
    told, silent, gone = (
        incident("b", "failing", T0),
        incident("c", "broken", None),
        incident("d", "delayed", T0),
    )
    now = T0 + timedelta(hours=2)
    decided = plan([new, lasting], [told, gone], now, timedelta(0))
    assert (decided.opens, decided.closes, decided.realerts) == ([new], [gone], [])
    decided = plan(
        [new, lasting, Finding("c", "broken", "x", T0)], [told, silent, gone], now, timedelta(hours=2)
    )
    assert decided.realerts == [told]  # due; `silent` was never notified, `gone` closes instead
    assert plan([lasting], [told], now, timedelta(hours=3)).realerts == []


# -- end to end against the fake Slack -------------------------------------------


def test_job_that_never_ran_opens_one_inactive_incident_and_recovers_in_thread(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    define(store, clock)
    join(store, clock, [JOB])
    wd = watchdog(store, clock, token_settings(fake_slack))
    clock.advance(59)  # the first slot (12:00:01) plus the 60 s grace has not passed
    assert check(wd, clock) == "no change"
    clock.advance(2)
    assert check(wd, clock) == "1 opened"
    for _ in range(5):  # it lasts: nothing more is said
        clock.advance(15)
        assert check(wd, clock) == "no change"
    assert len(fake_slack.messages) == 1
    message = fake_slack.messages[0]
    assert header(message) == f":red_circle: Inactive job: {JOB}"
    assert (
        "has never run; its first run was due at 2026-03-01 12:00 UTC (grace 1m)" in message["body"]["text"]
    )
    assert message["body"]["channel"] == "#dev-notify"
    finish(store, clock, start_run(store, clock, clock.now().replace(second=1, microsecond=0)))
    assert check(wd, clock) == "1 closed"
    assert check(wd, clock) == "no change"
    opening, recovery = fake_slack.messages
    assert header(recovery) == f":large_green_circle: Recovered: Inactive job: {JOB}"
    assert recovery["body"]["thread_ts"] == store.incidents.incidents()[0].slack_ts
    assert "thread_ts" not in opening["body"]
    [incident] = store.incidents.incidents(open_only=False, limit=10)
    assert (incident.kind, incident.closed_at, incident.last_notified_at) == (
        "inactive",
        clock.now(),
        T0 + timedelta(seconds=61),
    )
    assert store.incidents.incidents(open_only=True, limit=10) == []


def test_delayed_job_alerts_once_and_recovers_when_it_runs(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    job = define(store, clock)
    join(store, clock, [JOB])
    wd = watchdog(store, clock, token_settings(fake_slack))
    clock.set(job.anchor_at)
    finish(store, clock, start_run(store, clock, job.anchor_at))
    clock.advance(60 + 59)  # slot 2 is due at +60 s; its grace ends at +120 s
    assert check(wd, clock) == "no change"
    clock.advance(1)
    assert check(wd, clock) == "1 opened"
    clock.advance(600)
    assert check(wd, clock) == "no change"
    [message] = fake_slack.messages
    assert header(message) == f":red_circle: Delayed job: {JOB}"
    assert (
        "last run started 2026-03-01 12:00 UTC; the run due at 2026-03-01 12:01 UTC has not started"
        in texts(fake_slack)[0]
    )
    finish(store, clock, start_run(store, clock, clock.now()))
    assert check(wd, clock) == "1 closed"
    assert "Recovered: Delayed job" in header(fake_slack.messages[1])


def test_paused_and_disabled_jobs_are_never_delayed_or_inactive(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    define(store, clock)
    define(store, clock, "reports.off", enabled=False)
    store.jobs.set_paused(JOB, True, "ops", clock.now())
    join(store, clock, [JOB, "reports.off"])
    wd = watchdog(store, clock, token_settings(fake_slack))
    clock.advance(timedelta(hours=3))
    assert check(wd, clock) == "no change"
    store.jobs.set_paused(JOB, False, "ops", clock.now())
    clock.advance(59)  # resumed: only slots after the resume count (the first at +1 s, grace 60 s)
    assert check(wd, clock) == "no change"
    clock.advance(5)
    assert check(wd, clock) == "1 opened"
    assert opened(store) == [(JOB, "inactive")]


def test_failing_after_n_consecutive_failures_then_recovery_on_next_success(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    job = define(store, clock, alert_after_failures=3)
    join(store, clock, [JOB])
    wd = watchdog(store, clock, token_settings(fake_slack))
    slots = [job.anchor_at + timedelta(minutes=n) for n in range(6)]
    clock.set(slots[0])
    finish(store, clock, start_run(store, clock, slots[0]), "failed", "first")
    clock.set(slots[1])
    finish(store, clock, start_run(store, clock, slots[1]), "succeeded")
    for n, slot in enumerate(slots[2:4]):
        clock.set(slot)
        finish(store, clock, start_run(store, clock, slot), "failed", f"boom {n}")
    assert check(wd, clock) == "no change"  # two in a row, alerting after three
    clock.set(slots[4])
    finish(store, clock, start_run(store, clock, slots[4]), "timed_out", "took too long")
    assert check(wd, clock) == "1 opened"
    clock.advance(5)
    assert check(wd, clock) == "no change"
    [message] = fake_slack.messages
    assert header(message) == f":red_circle: Failing job: {JOB}"
    assert "the last 3 runs failed (alerts after 3)" in message["body"]["text"]
    assert "ValueError: took too long" in str(message["body"]["blocks"])
    clock.set(slots[5])
    finish(store, clock, start_run(store, clock, slots[5]), "succeeded")
    assert check(wd, clock) == "1 closed"
    assert header(fake_slack.messages[1]) == f":large_green_circle: Recovered: Failing job: {JOB}"
    assert fake_slack.messages[1]["body"]["thread_ts"] == store.incidents.incidents()[0].slack_ts


def test_overrunning_run_past_its_timeout(store: Store, fake_slack: FakeSlack, clock: FakeClock) -> None:
    job = define(store, clock, timeout=timedelta(seconds=30))
    define(store, clock, "reports.slow", interval=timedelta(minutes=5))  # no timeout: period + grace
    join(store, clock, [JOB, "reports.slow"])
    wd = watchdog(store, clock, token_settings(fake_slack))
    clock.set(job.anchor_at)
    run = start_run(store, clock, job.anchor_at)
    slow = start_run(store, clock, job.anchor_at, "reports.slow")
    clock.advance(30)
    assert check(wd, clock) == "no change"
    clock.advance(1)
    assert check(wd, clock) == "1 opened"
    [message] = fake_slack.messages
    assert header(message) == f":red_circle: Overrunning job: {JOB}"
    assert (
        f"run {run.run_id} has been running for 31s, longer than its timeout of 30s"
        in message["body"]["text"]
    )
    assert "node-a" in str(message["body"]["blocks"])  # the host it runs on
    finish(store, clock, run, "timed_out", "over its timeout")
    assert check(wd, clock) == "1 opened, 1 closed"  # the timed-out run now counts as a failure
    assert opened(store) == [(JOB, "failing")]
    clock.set(job.anchor_at + timedelta(minutes=7, seconds=30))  # 5 min period + 150 s grace
    check(wd, clock)
    assert ("reports.slow", "overrunning") not in opened(store)
    clock.advance(1)
    check(wd, clock)
    assert ("reports.slow", "overrunning") in opened(store)
    finish(store, clock, slow)
    check(wd, clock)
    assert ("reports.slow", "overrunning") not in opened(store)


def test_broken_module_and_job_loaded_nowhere(store: Store, fake_slack: FakeSlack, clock: FakeClock) -> None:
    define(store, clock)
    define(store, clock, "legacy.cleanup")  # its module was removed from every instance
    problem = {"where": "code/jobs/nightly.py", "message": "SyntaxError: invalid syntax (line 3)"}
    join(store, clock, [JOB], [problem])
    wd = watchdog(store, clock, token_settings(fake_slack))
    finish(store, clock, start_run(store, clock, clock.now()))
    assert check(wd, clock) == "1 opened"  # the module; the orphan job waits out the settle time
    clock.advance(31)
    assert check(wd, clock) == "1 opened"
    assert opened(store) == [("code/jobs/nightly.py", "broken"), ("legacy.cleanup", "broken")]
    module, orphan = fake_slack.messages
    assert header(module) == ":red_circle: Broken job: code/jobs/nightly.py"
    assert "failed to load on node-a" in module["body"]["text"]
    assert "SyntaxError: invalid syntax (line 3)" in str(module["body"]["blocks"])
    assert header(orphan) == ":red_circle: Broken job: legacy.cleanup"
    assert "defined in the database but loaded by none of the 1 live instances" in orphan["body"]["text"]
    store.cluster.update_loaded("inst-a", [JOB, "legacy.cleanup"], [])  # fixed and reloaded
    assert check(wd, clock) == "2 closed"
    assert sorted(header(m) for m in fake_slack.messages[2:]) == [
        ":large_green_circle: Recovered: Broken job: code/jobs/nightly.py",
        ":large_green_circle: Recovered: Broken job: legacy.cleanup",
    ]


def test_no_live_instance_is_reported_by_whoever_sees_it_after_two_lease_ttls(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    join(store, clock, [], ttl=timedelta(seconds=10))
    wd = watchdog(store, clock, token_settings(fake_slack, lease_ttl=timedelta(seconds=10)))
    assert wd.check_instances(clock.now()) == "no change"
    clock.advance(11)  # its lease ran out: a busy instance is late, not dead yet
    assert wd.check_instances(clock.now()) == "no change"
    clock.advance(10)
    assert wd.check_instances(clock.now()) == "1 opened"
    clock.advance(60)
    assert wd.check_instances(clock.now()) == "no change"
    wd.sender.drain()
    [message] = fake_slack.messages
    assert header(message) == ":red_circle: Scheduler instance"
    assert (
        "no scheduler instance is alive; the last heartbeat came from node-a (pid 4242)"
        in texts(fake_slack)[0]
    )
    store.cluster.revive("inst-a", clock.now(), clock.now() + timedelta(seconds=10))
    assert wd.check_instances(clock.now()) == "1 closed"
    wd.sender.drain()
    assert header(fake_slack.messages[1]) == ":large_green_circle: Recovered: Scheduler instance"


def test_an_instance_renewing_its_own_heartbeat_never_reports_no_live_instance(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    join(store, clock, [], ttl=timedelta(seconds=10))
    health = Health(clock)
    wd = Watchdog(store, clock, token_settings(fake_slack), health, worker="inst-a")
    clock.advance(60)  # the rows look dead (the row's write lags under load, or a peer's view)...
    health.heartbeat_written()  # ... but this instance's coordinator renews its heartbeat
    assert wd.check_instances(clock.now()) == "no change"
    clock.advance(11)  # no renewal for longer than the lease TTL: this instance is not working
    assert wd.check_instances(clock.now()) == "1 opened"


def test_database_outage_alert_goes_through_the_local_spool_then_is_recorded_when_back(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, state_dir: Path
) -> None:
    config = token_settings(fake_slack, db_alert_after=timedelta(seconds=60))
    health = Health(clock)
    wd = Watchdog(store, clock, config, health, worker="inst-a")
    health.database(False, "database unavailable: connection refused")
    clock.advance(59)
    assert "not alerting yet" in wd.step(clock.now())
    fake_slack.fail_next(1, status=503)  # Slack is away too: retried with backoff
    clock.advance(1)
    assert "spool: 1 retry" in wd.step(clock.now())
    assert fake_slack.messages == [] and (state_dir / "alerts-node-a.json").exists()
    clock.advance(15)
    assert "spool: 1 sent" in wd.step(clock.now())
    restarted = Watchdog(store, clock, config, health, worker="inst-a")  # a restart mid-outage
    clock.advance(15)
    restarted.step(clock.now())
    [message] = fake_slack.messages  # sent once, from the spool
    assert header(message) == ":red_circle: Database problem"
    assert "node-a cannot reach the database: connection refused" in message["body"]["text"]
    assert store.incidents.incidents() == []  # could not be written while the database was away
    health.database(True)
    assert "database reachable again; outage recorded" in restarted.step(clock.now())
    [incident] = store.incidents.incidents()
    assert (incident.kind, incident.opened_at, incident.closed_at) == ("database", T0, clock.now())
    assert [(n.event, n.status) for n in notices(store)] == [("open", "sent"), ("recover", "sent")]
    recovery = fake_slack.messages[1]
    assert header(recovery) == ":large_green_circle: Recovered: Database problem"
    assert recovery["body"]["thread_ts"] == incident.slack_ts is not None
    assert not (state_dir / "alerts-node-a.json").exists()


def test_outage_alert_still_spooled_when_the_database_returns_moves_to_the_outbox(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, state_dir: Path
) -> None:
    config = token_settings(fake_slack, db_alert_after=timedelta(seconds=1))
    health = Health(clock)
    wd = Watchdog(store, clock, config, health, worker="inst-a")
    health.database(False, "connection refused")
    clock.advance(2)
    fake_slack.fail_next(1, status=503)
    wd.step(clock.now())  # spooled, first attempt failed: due again in 5 s
    health.database(True)
    wd.step(clock.now())  # recorded with both notices; the outbox sends the opening first
    assert [header(m) for m in fake_slack.messages] == [
        ":red_circle: Database problem",
        ":large_green_circle: Recovered: Database problem",
    ]
    assert fake_slack.messages[1]["body"]["thread_ts"] == store.incidents.incidents()[0].slack_ts
    assert not (state_dir / "alerts-node-a.json").exists()


def test_restart_neither_repeats_nor_loses_incidents(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    define(store, clock)
    join(store, clock, [JOB])
    config = token_settings(fake_slack)
    clock.advance(61)
    first = watchdog(store, clock, config)
    assert first.check_jobs(clock.now()) == "1 opened"  # ... and the process dies before sending
    second = watchdog(store, clock, config)  # the restarted process
    for _ in range(3):
        clock.advance(15)
        assert check(second, clock) == "no change"
    assert [header(m) for m in fake_slack.messages] == [f":red_circle: Inactive job: {JOB}"]
    finish(store, clock, start_run(store, clock, clock.now()))
    assert check(watchdog(store, clock, config), clock) == "1 closed"  # and another restart
    assert len(fake_slack.messages) == 2
    assert fake_slack.messages[1]["body"]["thread_ts"] == store.incidents.incidents()[0].slack_ts


@pytest.mark.postgres
def test_leader_change_on_postgresql_sends_one_message_per_transition(
    pg_url: str, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    stores = [Store(pg_url), Store(pg_url)]
    stores[0].upgrade()
    try:
        define(stores[0], clock)
        join(stores[0], clock, [JOB])
        config = token_settings(fake_slack)
        dogs = [watchdog(s, clock, config, worker=f"inst-{n}") for n, s in enumerate(stores)]
        clock.advance(61)
        # A leader that lost its lease mid-check and the new one both decide to open the incident:
        plans = [d.decide_jobs(clock.now()) for d in dogs]
        assert [len(p.opens) for p in plans] == [1, 1]
        assert [d.apply(p, clock.now()) for d, p in zip(dogs, plans, strict=True)] == [
            "1 opened",
            "no change",
        ]
        for n in range(6):  # leadership alternates
            clock.advance(15)
            check(dogs[n % 2], clock)
        assert len(fake_slack.messages) == 1
        finish(stores[1], clock, start_run(stores[1], clock, clock.now()))
        clock.advance(15)
        plans = [d.decide_jobs(clock.now()) for d in dogs]
        assert [len(p.closes) for p in plans] == [1, 1]
        assert [d.apply(p, clock.now()) for d, p in zip(dogs, plans, strict=True)] == [
            "1 closed",
            "no change",
        ]
        for n in range(4):
            clock.advance(15)
            check(dogs[n % 2], clock)
        assert [header(m).split(" ", 1)[1] for m in fake_slack.messages] == [
            f"Inactive job: {JOB}",
            f"Recovered: Inactive job: {JOB}",
        ]
        assert {m["body"].get("thread_ts") for m in fake_slack.messages[1:]} == {
            stores[0].incidents.incidents()[0].slack_ts
        }
    finally:
        for s in stores:
            s.dispose()


def test_racing_openers_on_postgresql_leave_one_open_incident(pg_url: str, clock: FakeClock) -> None:
    stores = [Store(pg_url) for _ in range(4)]
    stores[0].upgrade()
    try:
        barrier = threading.Barrier(len(stores))
        results: list[object] = []

        def open_one(store: Store) -> None:
            barrier.wait(timeout=10)
            results.append(
                store.incidents.open_incident(JOB, "failing", "failed", {}, clock.now(), {"text": "x"})
            )

        threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert sum(r is not None for r in results) == 1 and len(results) == len(stores)
        assert len(notices(stores[0])) == 1
    finally:
        for s in stores:
            s.dispose()


def test_realert_reminds_every_realert_after_while_open(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    define(store, clock)
    join(store, clock, [JOB])
    wd = watchdog(store, clock, token_settings(fake_slack, realert_after=timedelta(hours=1)))
    clock.advance(61)
    assert check(wd, clock) == "1 opened"
    clock.advance(timedelta(minutes=59))
    assert check(wd, clock) == "no change"
    clock.advance(timedelta(minutes=1))
    assert check(wd, clock) == "1 reminded"
    assert check(wd, clock) == "no change"
    assert header(fake_slack.messages[1]) == f":red_circle: Still open: Inactive job: {JOB}"


def test_without_slack_incidents_are_recorded_and_logged(
    store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    define(store, clock)
    join(store, clock, [JOB])
    wd = watchdog(store, clock, settings())
    with caplog.at_level(logging.INFO, logger="scheduler"):
        wd.announce()
        clock.advance(61)
        assert check(wd, clock) == "1 opened"
        finish(store, clock, start_run(store, clock, clock.now()))
        assert check(wd, clock) == "1 closed"
    assert "Slack is not configured" in caplog.text
    assert f"incident opened: inactive {JOB}" in caplog.text
    assert [i.kind for i in store.incidents.incidents()] == ["inactive"]
    assert notices(store) == []  # nothing queued that nobody would send


def test_webhook_mode_sends_the_recovery_as_a_new_message(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    define(store, clock)
    join(store, clock, [JOB])
    wd = watchdog(store, clock, settings(slack_webhook_url=fake_slack.webhook_url))
    clock.advance(61)
    check(wd, clock)
    finish(store, clock, start_run(store, clock, clock.now()))
    check(wd, clock)
    assert [m["path"].startswith("/webhook/") for m in fake_slack.messages] == [True, True]
    assert "Recovered: Inactive job" in texts(fake_slack)[1]


def test_secrets_never_reach_the_logs(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    define(store, clock)
    join(store, clock, [JOB])
    for config in (token_settings(fake_slack), settings(slack_webhook_url=fake_slack.webhook_url)):
        wd = watchdog(store, clock, config)
        with caplog.at_level(logging.DEBUG):
            wd.announce()
            clock.advance(61)
            fake_slack.fail_next(1, status=500)
            check(wd, clock)
            clock.advance(60)
            fake_slack.fail_next(1, slack_error="invalid_auth")
            check(wd, clock)
        finish(store, clock, start_run(store, clock, clock.now()))
        check(wd, clock)
    assert "not delivered" in caplog.text
    assert TOKEN not in caplog.text
    assert "fakeWebhookSecret" not in caplog.text


def test_send_test_posts_a_test_message(fake_slack: FakeSlack, clock: FakeClock) -> None:
    result = send_test(token_settings(fake_slack), clock)
    assert re.fullmatch(r"Slack bot token, channel #dev-notify \(ts \d+\.\d+\)", result)
    assert header(fake_slack.messages[0]) == ":large_blue_circle: Test notification"


def test_send_test_fails_with_one_line(fake_slack: FakeSlack, clock: FakeClock) -> None:
    with pytest.raises(SchedulerError, match="^slack: not configured"):
        send_test(settings(), clock)
    fake_slack.fail_next(1, slack_error="invalid_auth")
    with pytest.raises(SchedulerError) as failure:
        send_test(token_settings(fake_slack), clock)
    message = str(failure.value)
    assert message.startswith("slack: test message not sent: Slack refused the message")
    assert "\n" not in message and TOKEN not in message


def service_settings(fake: FakeSlack, tmp_path: Path, database_url: str, **changes: Any) -> Settings:
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    paths = {"state_dir": tmp_path / "var"} if hasattr(Settings(), "state_dir") else {}
    return token_settings(
        fake,
        database_url=database_url,
        jobs_path=jobs,
        log_dir=tmp_path / "logs",
        heartbeat=timedelta(seconds=0.2),
        lease_ttl=timedelta(seconds=1),
        settle_time=timedelta(0),
        grace_period=timedelta(seconds=1),
        watchdog_interval=timedelta(seconds=0.2),
        **paths,
        **changes,
    )


def test_service_reports_a_failing_job_and_a_broken_module_to_slack(
    tmp_path: Path, fake_slack: FakeSlack
) -> None:
    config = service_settings(fake_slack, tmp_path, f"sqlite:///{tmp_path / 'scheduler.db'}")
    (config.jobs_path / "flaky.py").write_text(
        "from datetime import timedelta\n"
        "from scheduler import job\n\n\n"
        "@job(interval=timedelta(seconds=1))\n"
        "def always_fails():\n"
        "    raise RuntimeError('upstream refused')\n"
    )
    (config.jobs_path / "nightly.py").write_text("import module_that_does_not_exist\n")
    service = build_service(config)
    try:
        service.start()
        assert fake_slack.wait_for(2, timeout=20)
    finally:
        service.shutdown()
    headers = sorted(header(m) for m in fake_slack.messages[:2])
    assert headers[0].startswith(":red_circle: Broken job: ") and headers[0].endswith("nightly.py")
    assert headers[1] == ":red_circle: Failing job: flaky.always_fails"
    assert "RuntimeError: upstream refused" in str(fake_slack.messages)
    store = Store(config.database_url)
    try:
        assert {i.kind for i in store.incidents.incidents(open_only=True)} == {"broken", "failing"}
    finally:
        store.dispose()


@pytest.mark.postgres
def test_service_cut_off_from_postgresql_alerts_directly_and_threads_the_recovery(
    pg_url: str, tmp_path: Path, fake_slack: FakeSlack
) -> None:
    setup = Store(pg_url)
    setup.upgrade()
    setup.dispose()
    proxy = TcpProxy()
    config = service_settings(
        fake_slack, tmp_path, proxy.url_for(pg_url), db_alert_after=timedelta(seconds=1)
    )
    service = build_service(config)
    try:
        service.start()
        proxy.cut()
        assert fake_slack.wait_for(1, timeout=20)
        assert header(fake_slack.messages[0]) == ":red_circle: Database problem"
        assert "node-a cannot reach the database" in fake_slack.messages[0]["body"]["text"]
        proxy.restore()
        assert fake_slack.wait_for(2, timeout=20)
    finally:
        service.shutdown()
        proxy.close()
    store = Store(pg_url)
    try:
        [incident] = store.incidents.incidents()
    finally:
        store.dispose()
    assert (incident.subject, incident.kind, incident.closed_at is not None) == ("node-a", "database", True)
    recovery = fake_slack.messages[1]
    assert header(recovery) == ":large_green_circle: Recovered: Database problem"
    assert recovery["body"]["thread_ts"] == incident.slack_ts is not None
    assert len(fake_slack.messages) == 2  # and no "no live instance" while heartbeats were renewed


# -- reading run facts ---------------------------------------------------------------------


def test_run_facts_behind_a_long_run_of_skipped_slots_are_still_found(store: Store) -> None:
    owner = Owner("facts", "facts-host", 1)
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    won = store.runs.claim([Claim("facts.job", start)], owner, start, start + timedelta(hours=1))
    store.runs.mark_started([(won[0].run_id, won[0].fence, start)])  # its function began, as in the pool
    store.runs.finish([Outcome(won[0].run_id, won[0].fence, "failed", start + timedelta(seconds=2))])
    later = [Claim("facts.job", start + timedelta(minutes=i), status="skipped") for i in range(1, 12)]
    store.runs.claim(later, owner, start, start)
    store.runs.claim([Claim("quiet.job", start, status="missed")], owner, start, start)

    activity = store.runfacts.activity(["facts.job", "quiet.job", "never.job"], depth=2)

    assert activity.last_started == {"facts.job": start}  # the run's start
    assert [(r.id, r.status) for r in activity.outcomes["facts.job"]] == [(won[0].run_id, "failed")]
    assert activity.outcomes["quiet.job"] == [] and activity.outcomes["never.job"] == []


def test_a_pass_due_while_a_burst_drains_here_waits_for_it_but_not_past_a_limit(
    store: Store, clock: FakeClock
) -> None:
    """The loop's time is the fake clock's: each wait moves it on, so the loop runs at full speed."""
    config = settings()
    bursting = [True]
    passes: list[float] = []
    stop = threading.Event()
    wd = Watchdog(store, clock, config, Health(clock), worker="inst-a", bursting=lambda: bursting[0])

    def step(now: datetime) -> str:
        passes.append(clock.monotonic())
        if len(passes) == 2:
            bursting[0] = False  # the burst has drained
        if len(passes) == 3:
            stop.set()
        return ""

    wd.step = step  # type: ignore[method-assign]
    born = clock.monotonic()
    loop = threading.Thread(target=wd.run, args=(stop,))
    loop.start()
    loop.join(30)
    stop.set()
    assert not loop.is_alive()
    interval = config.watchdog_interval.total_seconds()
    first, second, third = (p - born for p in passes)
    assert BURST_DEFER <= first < BURST_DEFER + 0.5  # held back while runs wait, up to the limit
    assert interval + BURST_DEFER <= second - first < interval + BURST_DEFER + 0.5  # still draining
    assert interval <= third - second <= interval + 1.0  # no burst: on time
