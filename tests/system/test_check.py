"""`control.py check`: the example jobs pass; each broken module or bad setting is one line, non-zero."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.system

GOOD = """
from datetime import timedelta
from scheduler import job

@job(interval=timedelta(seconds=30))
def fine(ctx):
    pass
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    yield box
    box.close()


def test_check_accepts_the_example_jobs(sandbox: Sandbox) -> None:
    examples = Path(__file__).resolve().parents[2] / "code" / "jobs"

    result = sandbox.control("check", jobs_path=str(examples))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [x for x in lines if not x.startswith("ok    ")] == [
        f"4 jobs, 0 problems; database {sandbox.db_url} (not created yet: the daemon creates it)"
    ]
    assert not list(sandbox.root.glob("*.db")), "check must not create the database"
    daily = [
        x for x in lines if x.startswith("ok    reports.daily_summary: cron 0 6 * * * (Europe/London); ")
    ]
    assert len(daily) == 1 and "module reports, next " in daily[0] and daily[0].endswith(":00:00+00:00")
    assert [
        x
        for x in lines
        if x.startswith("ok    legacy_timeloop.cleanup_tmp: every 20s; module legacy_timeloop")
    ]


BROKEN = {
    "syntax_error": ("def oops(:\n", "SyntaxError: invalid syntax (line 1)"),
    "bad_cron": (
        'from scheduler import job\n@job(cron="61 * * * *")\ndef c(ctx): pass\n',
        "bad cron expression '61 * * * *'",
    ),
    "unknown_zone": (
        'from scheduler import job\n@job(cron="0 6 * * *", timezone="Mars/Olympus")\ndef z(ctx): pass\n',
        "unknown time zone 'Mars/Olympus'",
    ),
    "zero_interval": (
        "from datetime import timedelta\nfrom scheduler import job\n"
        "@job(interval=timedelta(0))\ndef z(ctx): pass\n",
        "interval must be positive",
    ),
    "duplicate": (
        "from datetime import timedelta\nfrom scheduler import job\n"
        '@job(interval=timedelta(1), name="base.fine")\ndef fine(ctx): pass\n',
        "duplicate job name 'base.fine' (first defined in scheduler_jobs.base)",
    ),
}


def test_check_names_each_broken_module_in_one_line(sandbox: Sandbox) -> None:
    sandbox.write_job("base", GOOD)
    broken = {case: sandbox.write_job(case, code) for case, (code, _) in BROKEN.items()}

    result = sandbox.control("check")

    assert result.returncode == 1, result.stdout + result.stderr
    errors = [x for x in result.stdout.splitlines() if x.startswith("error")]
    assert len(errors) == len(BROKEN), result.stdout
    for case, path in sorted(broken.items()):
        named = [x for x in errors if x.startswith(f"error {path}: ")]
        assert len(named) == 1, (case, result.stdout)
        assert BROKEN[case][1] in named[0]
    assert "ok    base.fine: every 30s; module base, next " in result.stdout
    summary = f"1 jobs, {len(BROKEN)} problems; database {sandbox.db_url}"
    assert result.stdout.endswith(f"{summary} (not created yet: the daemon creates it)\n")


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("pool_size", "0", "SCHEDULER_POOL_SIZE: must be at least 1, got 0"),
        (
            "database_url",
            "mysql://u:secret@h/db",
            "SCHEDULER_DATABASE_URL: unsupported scheme 'mysql' (use sqlite:/// or postgresql://)",
        ),
        ("grace_period", "soon", "SCHEDULER_GRACE_PERIOD: not a duration: 'soon'"),
    ],
)
def test_check_bad_setting_exits_2_naming_it(
    sandbox: Sandbox, setting: str, value: str, message: str
) -> None:
    sandbox.write_job("base", GOOD)

    result = sandbox.control("check", **{setting: value})

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"config: {message}")
    assert "secret" not in result.stdout + result.stderr


def test_check_hides_the_password_of_an_unreachable_database(sandbox: Sandbox) -> None:
    sandbox.write_job("base", GOOD)

    result = sandbox.control("check", database_url="postgresql://u:secret@127.0.0.1:1/db", timeout=30)

    assert result.returncode == 1
    assert "u:***@127.0.0.1:1/db: database unavailable: " in result.stdout
    assert "secret" not in result.stdout + result.stderr


def test_check_json_lists_every_job_with_module_schedule_and_next_slot_and_warns_of_empty_modules(
    sandbox: Sandbox,
) -> None:
    sandbox.write_job("base", GOOD)
    sandbox.write_job("empty", "VALUE = 1\n")
    (sandbox.jobs / "billing").mkdir()
    (sandbox.jobs / "billing" / "invoices.py").write_text(GOOD)

    result = sandbox.control("check", "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [(j["name"], j["module"], j["schedule"]) for j in report["jobs"]] == [
        ("base.fine", "base", "every 30s"),
        ("billing.invoices.fine", "billing.invoices", "every 30s"),
    ]
    assert all(datetime.fromisoformat(j["next_run"]) for j in report["jobs"])
    assert [(Path(w["where"]).name, w["message"]) for w in report["warnings"]] == [
        ("empty.py", "declares no job")
    ]
    assert report["problems"] == []
    assert report["database"]["state"] == "not created yet: the daemon creates it"

    text = sandbox.control("check")
    assert text.returncode == 0
    assert [x for x in text.stdout.splitlines() if x.startswith("warn  ")] == [
        f"warn  {sandbox.jobs / 'empty.py'}: declares no job"
    ]
    assert "2 jobs, 0 problems, 1 warnings;" in text.stdout
