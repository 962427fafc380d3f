"""The watchdog's newer findings and behaviours: grouped late jobs, start-up, skipping,
overloaded instances, incident text kept current, and incremental run facts.

Driven step by step on a FakeClock; notices go through the real slack_sdk client to
the fake Slack server; the store is SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from scheduler.alerting.facts import RunFacts
from scheduler.alerting.findings import LatenessMemo, lateness
from scheduler.alerting.watchdog import Watchdog
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.jobs.registry import make_spec
from scheduler.store import Claim, Claimed, JobRow, Outcome, Owner, Store
from scheduler.store.schema import runs

from tests.support.fakeslack import FakeSlack
from tests.support.watchdog import (
    config_fixture,  # noqa: F401  (the `config` fixture)
    define,
    health_fixture,  # noqa: F401  (the `health` fixture)
    job_func,
    pass_and_send,
)

OWNER = Owner("inst-a", "node-a", 4242)


def claim(store: Store, clock: FakeClock, job: str, slot: datetime, status: str = "running") -> Claimed:
    until = clock.now() + timedelta(days=1)
    [won] = store.runs.claim([Claim(job, slot, status=status)], OWNER, clock.now(), until)
    return won


def finish(
    store: Store, clock: FakeClock, run: Claimed, status: str = "succeeded", started: datetime | None = None
) -> None:
    error = ("ValueError", "upstream refused") if status == "failed" else (None, None)
    store.runs.finish(
        [Outcome(run.run_id, run.fence, status, clock.now(), started or run.scheduled_for, 1, *error)]
    )


def headers(fake: FakeSlack) -> list[str]:
    return [str(m["body"]["blocks"][0]["text"]["text"]) for m in fake.messages]


# -- many jobs late at once ---------------------------------------------------------


def test_many_jobs_late_at_once_give_one_grouped_slack_message(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, config: Settings, health: Health
) -> None:
    names = [f"etl.job{n:02d}" for n in range(30)]
    define(store, clock, names)
    wd = Watchdog(store, clock, config, health, worker="inst-a")
    clock.advance(61)  # none of the 30 has run: each would be "inactive"
    assert pass_and_send(wd, clock) == "1 opened"
    [message] = fake_slack.messages
    assert headers(fake_slack) == [":red_circle: Jobs late"]
    assert "30 jobs are late: etl.job00, etl.job01" in message["body"]["text"]
    [incident] = store.incidents.open_incidents()
    assert (incident.subject, incident.kind, incident.details["count"]) == ("scheduler", "late", 30)
    for name in names:
        finish(store, clock, claim(store, clock, name, clock.now()), started=clock.now())
    clock.advance(15)
    assert pass_and_send(wd, clock) == "1 closed"
    assert headers(fake_slack)[1] == ":large_green_circle: Recovered: Jobs late"
    assert len(fake_slack.messages) == 2


def test_fewer_late_jobs_than_the_threshold_are_alerted_one_by_one(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, config: Settings, health: Health
) -> None:
    define(store, clock, ["a.one", "a.two"])
    wd = Watchdog(store, clock, replace(config, alert_group_after=3), health, worker="inst-a")
    clock.advance(61)
    assert pass_and_send(wd, clock) == "2 opened"
    assert sorted(headers(fake_slack)) == [
        ":red_circle: Inactive job: a.one",
        ":red_circle: Inactive job: a.two",
    ]


def test_job_checks_wait_for_the_start_up_catch_up(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, config: Settings
) -> None:
    define(store, clock, [f"etl.job{n:02d}" for n in range(3)])
    clock.advance(120)  # the daemon was down while their first slots passed
    starting = Health(clock)  # the dispatcher has not decided the missed slots yet
    wd = Watchdog(store, clock, config, starting, worker="inst-a")
    assert "jobs: waiting for the start-up catch-up" in wd.step(clock.now())
    assert store.incidents.incidents() == [] and fake_slack.messages == []
    starting.mark_caught_up()
    assert "jobs: 3 opened" in wd.step(clock.now())


def test_job_checks_wait_for_the_catch_up_two_minutes_at_most(
    store: Store, clock: FakeClock, config: Settings
) -> None:
    define(store, clock, ["etl.only"])
    wd = Watchdog(store, clock, config, Health(clock), worker="inst-a")  # never caught up
    clock.advance(119)
    assert "jobs: waiting for the start-up catch-up" in wd.step(clock.now())
    clock.advance(1)
    assert "jobs: 1 opened" in wd.step(clock.now())


# -- skipping, overloaded -------------------------------------------------------------


def test_three_skipped_slots_in_a_row_open_a_skipping_incident(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, config: Settings, health: Health
) -> None:
    define(store, clock, ["slow.job"], timeout=timedelta(hours=1))
    wd = Watchdog(store, clock, config, health, worker="inst-a")
    first = clock.now() + timedelta(seconds=1)
    long_run = claim(store, clock, "slow.job", first)
    for n in (1, 2):
        claim(store, clock, "slow.job", first + timedelta(minutes=n), status="skipped")
    clock.advance(150)
    assert pass_and_send(wd, clock) == "no change"  # two skipped: not yet
    claim(store, clock, "slow.job", first + timedelta(minutes=3), status="skipped")
    clock.advance(60)
    assert pass_and_send(wd, clock) == "1 opened"
    assert headers(fake_slack) == [":red_circle: Job skipping its slots: slow.job"]
    assert (
        "the last 3 slots were skipped because a run was still going"
        in fake_slack.messages[0]["body"]["text"]
    )
    finish(store, clock, long_run)
    finish(store, clock, claim(store, clock, "slow.job", first + timedelta(minutes=4)))
    clock.advance(15)
    assert pass_and_send(wd, clock) == "1 closed"


def lose_slots(store: Store, clock: FakeClock, job: str, count: int) -> None:
    """Slots the dispatcher recorded as lost because the instance fell behind."""
    for n in range(count):
        won = claim(store, clock, job, clock.now() - timedelta(seconds=n + 1), status="missed")
        with store.db.write() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.id == won.run_id)
                .values(error_message="overloaded: 1,400 runs due at once, 900 decided in time")
            )


def test_slots_lost_to_overload_open_an_instance_overloaded_incident(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, config: Settings, health: Health
) -> None:
    define(store, clock, ["busy.job"], interval=timedelta(seconds=1))
    finish(store, clock, claim(store, clock, "busy.job", clock.now()))
    wd = Watchdog(store, clock, config, health, worker="inst-a")
    clock.advance(30)
    finish(store, clock, claim(store, clock, "busy.job", clock.now()))
    lose_slots(store, clock, "busy.job", 4)
    claim(store, clock, "busy.job", clock.now() - timedelta(seconds=10), status="missed")  # a plain miss
    assert pass_and_send(wd, clock) == "1 opened"
    assert headers(fake_slack) == [":red_circle: Instance overloaded"]
    text = fake_slack.messages[0]["body"]["text"]
    assert "node-a lost 4 slots in the last 5m because it fell behind" in text
    clock.advance(timedelta(minutes=5, seconds=1))
    finish(store, clock, claim(store, clock, "busy.job", clock.now()))
    assert pass_and_send(wd, clock) == "1 closed"


# -- incident text stays current --------------------------------------------------------


def test_incident_text_stays_current_and_edits_its_slack_message_at_most_every_interval(
    store: Store, fake_slack: FakeSlack, clock: FakeClock, config: Settings, health: Health
) -> None:
    define(store, clock, ["flaky.job"])
    wd = Watchdog(store, clock, config, health, worker="inst-a")
    first_at = clock.now()
    first = claim(store, clock, "flaky.job", first_at)
    finish(store, clock, first, "failed")
    assert pass_and_send(wd, clock) == "1 opened"
    assert f"latest: run {first.run_id} failed" in fake_slack.messages[0]["body"]["text"]
    latest, failures = first, 1
    while clock.now() - first_at < timedelta(minutes=5):  # more failures: the text waits 5 minutes
        assert pass_and_send(wd, clock) == "no change"
        clock.advance(20)
        latest = claim(store, clock, "flaky.job", clock.now())
        finish(store, clock, latest, "failed")
        failures += 1
    assert pass_and_send(wd, clock) == "1 updated"
    [incident] = store.incidents.open_incidents()
    assert failures > 11
    summary = f"the last {failures} runs failed (alerts after 1); latest: run {latest.run_id} failed"
    assert incident.summary == summary
    [edit] = fake_slack.edits
    assert edit["body"]["ts"] == fake_slack.messages[0]["body"].get("ts", incident.slack_ts)
    assert f"latest: run {latest.run_id} failed" in edit["body"]["text"]
    assert len(fake_slack.messages) == 1  # edited in place, no new message
    clock.advance(20)
    finish(store, clock, claim(store, clock, "flaky.job", clock.now()), "failed")
    assert pass_and_send(wd, clock) == "no change"  # updated less than 5 minutes ago


# -- incremental run facts ----------------------------------------------------------------


def test_incremental_run_facts_match_a_full_read_and_read_only_what_changed(
    store: Store, clock: FakeClock
) -> None:
    names = [f"facts.job{n}" for n in range(12)]
    facts = RunFacts(store)
    rng = random.Random(7)
    open_runs: list[Claimed] = []
    slot = clock.now()
    facts.refresh(names, 3, clock.now())
    assert facts.refresh(names, 3, clock.now()).outcomes == {n: [] for n in names}
    assert facts.rows_read == 0  # nothing changed
    for _ in range(8):
        slot += timedelta(minutes=1)
        clock.advance(60)
        for name in rng.sample(names, 6):
            status = rng.choice(["running", "running", "skipped", "missed"])
            won = claim(store, clock, name, slot, status)
            if won.status == "running":
                open_runs.append(won)
        for run in rng.sample(open_runs, len(open_runs) // 2):
            finish(store, clock, run, rng.choice(["succeeded", "failed", "timed_out"]))
            open_runs.remove(run)
        kept = facts.refresh(names, 3, clock.now())
        full = store.runfacts.activity(names, 3)
        assert kept.last_started == full.last_started
        assert {n: [r.id for r in kept.outcomes[n]] for n in names} == {
            n: [r.id for r in full.outcomes[n]] for n in names
        }
        assert {n: min(kept.skipped[n], 4) for n in names} == {n: min(full.skipped[n], 4) for n in names}
        assert [r.id for r in kept.running] == [r.id for r in full.running]
        exact = [n for n in names if n not in full.failures_at_least]
        assert {n: kept.failures[n] for n in exact} == {n: full.failures[n] for n in exact}
        # Each pass reads the rows of this pass and the last, and the runs still going.
        assert facts.rows_read <= 12 + len(open_runs) + 12


def test_a_quiet_pass_over_many_jobs_reads_no_run_rows(store: Store, clock: FakeClock) -> None:
    names = [f"quiet.job{n}" for n in range(300)]
    with store.db.write() as conn:
        conn.execute(
            runs.insert(),
            [
                {"job": n, "scheduled_for": clock.now(), "status": "succeeded", "started_at": clock.now()}
                for n in names
            ],
        )
    facts = RunFacts(store)
    facts.refresh(names, 1, clock.now())
    clock.advance(15)
    facts.refresh(names, 1, clock.now())
    clock.advance(15)
    assert len(facts.refresh(names, 1, clock.now()).last_started) == 300
    assert facts.rows_read == 0
    with store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 300


def test_lateness_memo_answers_as_the_pure_check_at_every_instant() -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    rows = []
    for name, options in [
        ("every.minute", {"interval": timedelta(seconds=60)}),
        ("every.ten", {"interval": timedelta(minutes=10), "grace": timedelta(seconds=20)}),
        ("weekday.cron", {"cron": "*/7 9-17 * * 1-5", "timezone": "Europe/Paris"}),
    ]:
        definition = make_spec(job_func, name=name, **options).definition()
        rows.append(
            JobRow(name, definition, "", start, start, start, start, False, None, None, None, None, None)
        )
    memo = LatenessMemo()
    rng = random.Random(3)
    last: dict[str, datetime | None] = {row.name: None for row in rows}
    now = start
    for _ in range(3000):
        now += timedelta(seconds=rng.choice([1, 7, 30, 59, 61, 600]))
        for row in rows:
            if rng.random() < 0.1:
                last[row.name] = now - timedelta(seconds=rng.choice([0, 5, 90]))
            assert memo.lateness(row, last[row.name], now) == lateness(row, last[row.name], now), (
                row.name,
                now,
            )
