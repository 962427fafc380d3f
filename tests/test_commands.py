"""Operator commands through control.main() in-process, on SQLite and PostgreSQL, and a few as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scheduler import control
from scheduler.clock import FakeClock
from scheduler.jobs.registry import JobSpec, make_spec
from scheduler.operator import cli as commands
from scheduler.store import Claim, InstanceRow, Outcome, Owner, Store
from scheduler.store.cluster import LEADER

from tests.support.fakeslack import FakeSlack

REPO = Path(__file__).resolve().parents[1]
OWNER = Owner("inst-a", "host-a", 4242)
NOW = datetime(2026, 3, 27, 12, 0, 0, tzinfo=UTC)


def work(ctx: Any) -> None:
    """A job function; never called here."""


def spec(name: str, **options: Any) -> JobSpec:
    return make_spec(work, name=name, **options)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The clock the commands read, set to a fixed instant before the 2026 spring-forward in Europe."""
    fake = FakeClock(NOW)
    monkeypatch.setattr(commands, "clock", fake)
    return fake


@pytest.fixture
def world(store: Store, clock: FakeClock) -> Iterator[Store]:
    """Two jobs: an interval job with runs, a cron job in Europe/London that never ran."""
    defined = NOW - timedelta(hours=1)
    store.jobs.sync(
        [
            spec("etl.load", interval=timedelta(minutes=10)),
            spec("reports.nightly", cron="30 1 * * *", timezone="Europe/London"),
        ],
        defined,
    )
    anchor = store.jobs.get("etl.load").anchor_at
    for i, (status, error) in enumerate([("succeeded", None), ("failed", "disk full"), ("succeeded", None)]):
        slot = anchor + timedelta(minutes=10 * i)
        finish(store, slot, status, error, log=f"line from run {i}\n")
    yield store


def finish(store: Store, slot: datetime, status: str, error: str | None, log: str) -> int:
    claimed = store.runs.claim([Claim("etl.load", slot)], OWNER, slot, slot + timedelta(minutes=1))[0]
    store.runs.finish(
        [
            Outcome(
                claimed.run_id,
                claimed.fence,
                status,
                finished_at=slot + timedelta(seconds=2),
                started_at=slot + timedelta(seconds=0.5),
                error_type="OSError" if error else None,
                error_message=error,
                error_traceback=f"Traceback (most recent call last):\nOSError: {error}\n" if error else None,
                log=log,
            )
        ]
    )
    return claimed.run_id


def cli(url: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = control.main(["--database-url", url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(url: str, *args: str, capsys: pytest.CaptureFixture[str]) -> Any:
    code, out, err = cli(url, *args, "--json", capsys=capsys)
    assert code == 0, err
    return json.loads(out)


def url_of(store: Store) -> str:
    return store.db.url


# -- reading ------------------------------------------------------------------


def test_jobs_lists_next_run_from_the_last_slot_and_the_last_status(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = {j["name"]: j for j in cli_json(url_of(world), "jobs", capsys=capsys)}
    etl, nightly = jobs["etl.load"], jobs["reports.nightly"]
    last_slot = world.runs.last_slots()["etl.load"]
    assert etl["next_run"]["at"] == (last_slot + timedelta(minutes=10)).isoformat()
    assert etl["last_status"] == "succeeded" and etl["paused"] is False
    assert nightly["next_run"] == {
        "at": "2026-03-28T01:30:00+00:00",
        "local": "2026-03-28T01:30:00+00:00",
        "zone": "Europe/London",
        "abbreviation": "GMT",
    }
    assert nightly["last_status"] is None

    code, out, _ = cli(url_of(world), "jobs", capsys=capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["JOB", "SCHEDULE", "NEXT", "RUN", "(JOB", "ZONE)"] + [
        "NEXT",
        "RUN",
        "(UTC)",
        "LAST",
        "PAUSED",
    ]
    row = next(line for line in lines if line.startswith("reports.nightly"))
    assert "2026-03-28 01:30:00 GMT" in row and "2026-03-28 01:30:00Z" in row
    # aligned: every column starts at the same offset on every line
    assert lines[1].index("every 10m") == lines[0].index("SCHEDULE")


def test_next_shows_slots_in_the_job_zone_and_utc_across_the_spring_forward(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    data = cli_json(url_of(world), "next", "reports.nightly", "-n", "3", capsys=capsys)
    assert [(s["at"], s["local"], s["abbreviation"]) for s in data["slots"]] == [
        ("2026-03-28T01:30:00+00:00", "2026-03-28T01:30:00+00:00", "GMT"),
        # 01:30 does not exist on 29 March in London: the slot is 02:00 BST
        ("2026-03-29T01:00:00+00:00", "2026-03-29T02:00:00+01:00", "BST"),
        ("2026-03-30T00:30:00+00:00", "2026-03-30T01:30:00+01:00", "BST"),
    ]
    code, out, _ = cli(url_of(world), "next", "reports.nightly", "-n", "3", capsys=capsys)
    assert code == 0
    assert out.splitlines()[3].split() == ["2", "2026-03-29", "02:00:00", "BST", "2026-03-29", "01:00:00Z"]


def test_next_of_a_paused_job_says_its_slots_pass_unrun(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    world.jobs.set_paused("etl.load", True, "test", NOW)
    code, out, _ = cli(url_of(world), "next", "etl.load", "-n", "2", capsys=capsys)
    assert code == 0 and "paused: these slots pass unrun until resumed" in out
    jobs = {j["name"]: j for j in cli_json(url_of(world), "jobs", capsys=capsys)}
    assert jobs["etl.load"]["next_run"] is None and jobs["etl.load"]["paused"] is True


def test_show_gives_definition_and_recent_runs(world: Store, capsys: pytest.CaptureFixture[str]) -> None:
    job = cli_json(url_of(world), "show", "etl.load", capsys=capsys)
    assert job["definition"]["interval_seconds"] == 600
    assert [r["status"] for r in job["recent_runs"]] == ["succeeded", "failed", "succeeded"]
    code, out, _ = cli(url_of(world), "show", "etl.load", capsys=capsys)
    assert code == 0 and "schedule  every 10m" in out and "OSError: disk full" in out


def test_history_filters_by_job_status_and_limit(world: Store, capsys: pytest.CaptureFixture[str]) -> None:
    failed = cli_json(url_of(world), "history", "etl.load", "--status", "failed", capsys=capsys)
    assert [(r["status"], r["error_message"]) for r in failed] == [("failed", "disk full")]
    assert failed[0]["duration_seconds"] == pytest.approx(1.5)
    latest = cli_json(url_of(world), "history", "--limit", "2", capsys=capsys)
    assert len(latest) == 2 and latest[0]["scheduled_for"] > latest[1]["scheduled_for"]
    code, out, _ = cli(url_of(world), "history", capsys=capsys)
    assert code == 0 and out.splitlines()[0].startswith("RUN  JOB")


def test_logs_prints_the_captured_log_and_the_traceback(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = world.runs.history("etl.load", status="failed")[0]
    code, out, _ = cli(url_of(world), "logs", str(failed.id), capsys=capsys)
    assert code == 0
    assert "line from run 1" in out and "-- error: OSError: disk full" in out and "Traceback" in out
    run = cli_json(url_of(world), "logs", str(failed.id), capsys=capsys)
    assert run["log"] == "line from run 1\n" and run["error_traceback"].startswith("Traceback")


# -- changing -----------------------------------------------------------------


def test_trigger_queues_a_manual_run_and_audits_the_user(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cli_json(url_of(world), "trigger", "etl.load", capsys=capsys)
    run = world.runs.get(result["run_id"])
    assert (run.job, run.trigger, run.status) == ("etl.load", "manual", "queued")
    assert result["instances"] == []  # no daemon: the CLI says the run waits
    code, out, _ = cli(url_of(world), "trigger", "etl.load", capsys=capsys)
    assert code == 0 and "no live instance loads etl.load" in out
    entry = world.jobs.audit_log("etl.load")[0]
    assert (entry.action, entry.actor) == ("trigger", commands.cli_actor())
    assert entry.actor.endswith("@" + os.uname().nodename) and entry.details["run_id"] > run.id


def test_trigger_names_the_live_instances_that_load_the_job(
    world: Store, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    register(world, "inst-a", ["etl.load"], clock.now())
    result = cli_json(url_of(world), "trigger", "etl.load", capsys=capsys)
    assert result["instances"] == ["inst-a"]


def test_trigger_of_a_paused_job_is_refused(world: Store, capsys: pytest.CaptureFixture[str]) -> None:
    world.jobs.set_paused("etl.load", True, "test", NOW)
    code, out, err = cli(url_of(world), "trigger", "etl.load", capsys=capsys)
    assert code == 1 and out == ""
    assert err == "error: job 'etl.load' is paused; resume it before triggering\n"
    assert world.runs.history("etl.load", status="queued") == []


def test_pause_resume_set_and_clear_write_the_audit_trail(
    world: Store, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    url = url_of(world)
    assert cli_json(url, "pause", "etl.load", capsys=capsys)["paused"] is True
    clock.advance(60)
    resumed = cli_json(url, "resume", "etl.load", capsys=capsys)
    assert resumed["paused"] is False
    # resumed: no slot before the resume time runs
    assert datetime.fromisoformat(resumed["next_run"]["at"]) > clock.now()
    job = cli_json(
        url, "set", "etl.load", "--cron", "0 6 * * 1-5", "--timezone", "Europe/Paris", capsys=capsys
    )
    assert job["schedule"] == "cron 0 6 * * 1-5 (Europe/Paris)" and job["overridden"] is True
    assert job["next_run"]["local"] == "2026-03-30T06:00:00+02:00"  # Monday, after the switch to CEST
    job = cli_json(url, "set", "etl.load", "--interval", "5m", capsys=capsys)
    assert job["schedule"] == "every 5m"
    job = cli_json(url, "set", "etl.load", "--clear", capsys=capsys)
    assert job["schedule"] == "every 10m" and job["overridden"] is False
    entries = cli_json(url, "audit", "etl.load", capsys=capsys)
    assert [e["action"] for e in entries] == ["unset", "set", "set", "resume", "pause"]
    assert {e["actor"] for e in entries} == {commands.cli_actor()}
    assert entries[2]["details"] == {"override_cron": "0 6 * * 1-5", "override_timezone": "Europe/Paris"}
    code, out, _ = cli(url, "audit", capsys=capsys)
    assert code == 0 and out.splitlines()[0].split() == ["AT", "(UTC)", "ACTOR", "ACTION", "JOB", "DETAILS"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "61 * * * *"], "error: etl.load: bad cron expression '61 * * * *'"),
        (
            ["--cron", "0 6 * * *", "--timezone", "Mars/Olympus"],
            "error: etl.load: unknown time zone 'Mars/Olympus'",
        ),
        (["--interval", "soon"], "error: etl.load: bad interval 'soon'"),
        (["--interval", "0.2s"], "error: etl.load: interval must be at least 1s"),
        (
            ["--interval", "5m", "--timezone", "UTC"],
            "error: etl.load: timezone applies to a cron schedule only",
        ),
    ],
)
def test_set_rejects_a_bad_value_with_exit_2_and_changes_nothing(
    world: Store, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(url_of(world), "set", "etl.load", *args, capsys=capsys)
    assert code == 2 and out == "" and err.startswith(message) and err.count("\n") == 1
    assert world.jobs.get("etl.load").overridden is False and world.jobs.audit_log() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "error: no job named 'nope'"),
        (["next", "nope"], "error: no job named 'nope'"),
        (["history", "nope"], "error: no job named 'nope'"),
        (["trigger", "nope"], "error: no job named 'nope'"),
        (["pause", "nope"], "error: no job named 'nope'"),
        (["resume", "nope"], "error: no job named 'nope'"),
        (["set", "nope", "--interval", "5m"], "error: no job named 'nope'"),
        (["logs", "999999"], "error: no run with id 999999"),
    ],
)
def test_an_unknown_job_or_run_is_one_line_naming_it_and_exit_1(
    world: Store, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(url_of(world), *args, capsys=capsys)
    assert (code, out, err) == (1, "", message + "\n")


def test_usage_errors_exit_2(world: Store, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ["next", "etl.load", "-n", "0"],
        ["logs", "abc"],
        ["history", "--status", "odd"],
        ["set", "x"],
    ):
        with pytest.raises(SystemExit) as exited:
            control.main(["--database-url", url_of(world), *args])
        assert exited.value.code == 2, args
    capsys.readouterr()


def register(store: Store, instance: str, jobs: list[str], now: datetime) -> None:
    store.cluster.register(
        InstanceRow(
            instance, "host-a", 4242, "1.0.0", now, now, now + timedelta(seconds=10), None, "alive", jobs, []
        )
    )


def test_instances_marks_the_leader(
    world: Store, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    now = clock.now()
    register(world, "inst-a", ["etl.load"], now - timedelta(seconds=1))
    register(world, "inst-b", ["etl.load", "reports.nightly"], now)
    world.cluster.acquire(LEADER, "inst-b", now, now + timedelta(seconds=10))
    found = cli_json(url_of(world), "instances", capsys=capsys)
    assert [(i["id"], i["leader"], len(i["jobs"])) for i in found] == [
        ("inst-b", True, 2),
        ("inst-a", False, 1),
    ]
    code, out, _ = cli(url_of(world), "instances", capsys=capsys)
    assert code == 0 and out.splitlines()[1].split()[:5] == ["inst-b", "host-a", "4242", "alive", "yes"]


def test_every_reading_command_prints_json(world: Store, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = str(world.runs.history("etl.load", limit=1)[0].id)
    for args in (
        ["jobs"],
        ["show", "etl.load"],
        ["next", "etl.load"],
        ["history"],
        ["logs", run_id],
        ["instances"],
        ["audit"],
        ["db", "current"],
    ):
        assert isinstance(cli_json(url_of(world), *args, capsys=capsys), list | dict), args


# -- the database ---------------------------------------------------------------


def test_db_current_and_upgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code, _, err = cli(url, "jobs", capsys=capsys)
    assert code == 1 and err == f"error: database file {tmp_path / 'fresh.db'} does not exist " + (
        "(start the daemon or run 'db upgrade')\n"
    )
    code, out, _ = cli(url, "db", "current", capsys=capsys)
    assert code == 1 and "revision (none), behind: run 'db upgrade'" in out
    code, out, _ = cli(url, "db", "upgrade", capsys=capsys)
    head = Store(url).db.head_revision()
    assert code == 0 and out == f"database {url}: revision {head}, up to date\n"
    assert cli_json(url, "db", "current", capsys=capsys)["up_to_date"] is True
    assert cli_json(url, "jobs", capsys=capsys) == []


def test_a_database_without_schema_is_refused(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(pg_url, "jobs", capsys=capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: database postgresql") and err.endswith(
        "has no schema: run 'scheduler db upgrade'\n"
    )


def test_alerts_lists_the_watchdog_incidents(
    world: Store, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    url = url_of(world)
    assert cli(url, "alerts", capsys=capsys)[1] == "no open incidents\n"
    world.incidents.open_incident(
        "etl.load", "failing", "etl.load failed 3 times", {"streak": 3}, clock.now(), None
    )
    found = cli_json(url, "alerts", capsys=capsys)
    assert [(a["subject"], a["kind"], a["summary"], a["closed_at"]) for a in found] == [
        ("etl.load", "failing", "etl.load failed 3 times", None)
    ]
    assert found[0]["opened_at"] == clock.now().isoformat() and found[0]["details"] == {"streak": 3}
    code, out, _ = cli(url, "alerts", "--all", capsys=capsys)
    assert code == 0 and out.splitlines()[1].split()[1:4] == ["failing", "etl.load", "2026-03-27"]


def test_notify_test_sends_through_the_configured_slack(
    world: Store, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SCHEDULER_SLACK_TOKEN", raising=False)
    monkeypatch.delenv("SCHEDULER_SLACK_WEBHOOK_URL", raising=False)
    code, out, err = cli(url_of(world), "notify-test", capsys=capsys)
    assert code == 1 and out == "" and err.startswith("error: slack: not configured") and err.count("\n") == 1
    monkeypatch.setenv("SCHEDULER_SLACK_WEBHOOK_URL", fake_slack.webhook_url)
    code, out, err = cli(url_of(world), "notify-test", capsys=capsys)
    assert code == 0 and out.startswith("test notification sent: ") and err == ""
    assert fake_slack.wait_for(1) and len(fake_slack.messages) == 1
    assert "fakeWebhookSecret" not in out


# -- as processes ---------------------------------------------------------------


def run(args: list[str], url: str, script: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env["SCHEDULER_DATABASE_URL"] = url
    command = (
        [str(Path(sys.executable).parent / "scheduler")]
        if script
        else [
            sys.executable,
            str(REPO / "code" / "scheduler" / "control.py"),
        ]
    )
    return subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_console_script_and_control_py_give_the_same_answers(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    store.upgrade()
    # defined an hour ahead, so its first slot cannot fall due between the two commands
    store.jobs.sync(
        [spec("etl.load", interval=timedelta(minutes=10))], datetime.now(UTC) + timedelta(hours=1)
    )
    store.dispose()
    by_script = run(["jobs", "--json"], sqlite_url, script=True)
    by_path = run(["jobs", "--json"], sqlite_url, script=False)
    assert by_script.returncode == by_path.returncode == 0, by_script.stderr + by_path.stderr
    assert json.loads(by_script.stdout) == json.loads(by_path.stdout)
    assert json.loads(by_path.stdout)[0]["name"] == "etl.load"
    missing = run(["show", "nope"], sqlite_url, script=False)
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "error: no job named 'nope'\n")
    usage = run(["pause"], sqlite_url, script=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_history_status_choices_are_the_run_statuses_the_store_writes() -> None:
    import scheduler.operator
    from scheduler.store.schema import RUN_STATUSES

    assert scheduler.operator.RUN_STATUSES == RUN_STATUSES
