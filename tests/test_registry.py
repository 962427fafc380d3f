"""The `@job` decorator, JobSpec validation, and loading job modules from a folder."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scheduler.errors import JobDefinitionError
from scheduler.jobs.discovery import load_jobs
from scheduler.jobs.registry import JobSpec, job, make_spec
from scheduler.jobs.schedules import CronSchedule, IntervalSchedule

ANCHOR = datetime(2026, 3, 1, 12, tzinfo=UTC)


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def spec_of(func: Any) -> JobSpec:
    spec = func.__scheduler_job__
    assert isinstance(spec, JobSpec)
    return spec


# -- @job -------------------------------------------------------------------------


def test_job_decorator_records_its_options_and_leaves_the_function_callable() -> None:
    @job(
        interval=timedelta(seconds=30),
        timeout=timedelta(seconds=5),
        retries=2,
        retry_delay=timedelta(seconds=1),
        overlap="queue",
        catchup="all",
        jitter=timedelta(seconds=3),
        grace=timedelta(minutes=2),
        alert_after_failures=3,
    )
    def refresh() -> str:
        return "done"

    spec = spec_of(refresh)
    assert refresh() == "done"
    assert spec.name == f"{__name__}.refresh"
    assert spec.interval == timedelta(seconds=30)
    assert (spec.timeout, spec.retries, spec.retry_delay) == (timedelta(seconds=5), 2, timedelta(seconds=1))
    assert (spec.overlap, spec.catchup, spec.jitter) == ("queue", "all", timedelta(seconds=3))
    assert (spec.grace, spec.alert_after_failures, spec.enabled) == (timedelta(minutes=2), 3, True)


def test_job_defaults_skip_overlaps_and_run_the_latest_missed_slot() -> None:
    @job(cron="0 6 * * *", timezone="Europe/Paris", name="reports.daily")
    def daily() -> None: ...

    spec = spec_of(daily)
    assert spec.name == "reports.daily"
    assert (spec.cron, spec.timezone, spec.interval) == ("0 6 * * *", "Europe/Paris", None)
    assert (spec.overlap, spec.catchup, spec.retries, spec.timeout) == ("skip", "latest", 0, None)


def test_interval_spec_schedule_starts_at_the_anchor_or_start_at() -> None:
    @job(interval=timedelta(minutes=1))
    def plain() -> None: ...

    start = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)

    @job(interval=timedelta(minutes=1), start_at=start)
    def anchored() -> None: ...

    assert spec_of(plain).schedule(ANCHOR) == IntervalSchedule(timedelta(minutes=1), ANCHOR)
    assert spec_of(anchored).schedule(ANCHOR) == IntervalSchedule(timedelta(minutes=1), start)
    assert spec_of(anchored).schedule(ANCHOR).next_after(ANCHOR) == start


def test_cron_spec_schedule_and_description() -> None:
    @job(cron="*/5 * * * *", timezone="Europe/London")
    def often() -> None: ...

    assert spec_of(often).schedule(ANCHOR) == CronSchedule("*/5 * * * *", "Europe/London")
    assert spec_of(often).describe() == "cron */5 * * * * (Europe/London)"


def test_definition_is_json_able_and_complete() -> None:
    @job(interval=timedelta(seconds=90), timeout=timedelta(seconds=10), start_at=ANCHOR)
    def tidy() -> None: ...

    definition = spec_of(tidy).definition()
    assert definition["interval_seconds"] == 90.0
    assert definition["timeout_seconds"] == 10.0
    assert definition["start_at"] == ANCHOR.isoformat()
    assert definition["cron"] is None
    assert json.loads(json.dumps(definition)) == definition


INVALID = [
    pytest.param({}, "exactly one of interval= or cron=", id="neither-interval-nor-cron"),
    pytest.param(
        {"interval": timedelta(seconds=1), "cron": "* * * * *"}, "exactly one of", id="both-interval-and-cron"
    ),
    pytest.param({"interval": timedelta(0)}, "interval must be positive", id="zero-interval"),
    pytest.param({"interval": timedelta(seconds=-1)}, "interval must be positive", id="negative-interval"),
    pytest.param({"interval": 30}, "interval must be a timedelta", id="interval-not-timedelta"),
    pytest.param({"cron": "99 * * * *"}, "bad cron expression", id="bad-cron"),
    pytest.param({"cron": "0 6 * * *", "timezone": "Nowhere/City"}, "unknown time zone", id="bad-cron-tz"),
    pytest.param(
        {"interval": timedelta(1), "timezone": "Nowhere/City"}, "unknown time zone", id="bad-interval-tz"
    ),
    pytest.param(
        {"interval": timedelta(1), "timeout": timedelta(0)}, "timeout must be positive", id="timeout"
    ),
    pytest.param({"interval": timedelta(1), "retries": -1}, "retries must be >= 0", id="retries"),
    pytest.param(
        {"interval": timedelta(1), "retry_delay": timedelta(seconds=-1)}, "must not be negative", id="delay"
    ),
    pytest.param(
        {"interval": timedelta(1), "jitter": timedelta(seconds=-1)}, "must not be negative", id="jit"
    ),
    pytest.param({"interval": timedelta(1), "overlap": "parallel"}, "overlap must be", id="overlap"),
    pytest.param({"interval": timedelta(1), "catchup": "some"}, "catchup must be", id="catchup"),
    pytest.param(
        {"interval": timedelta(1), "start_at": datetime(2026, 1, 1)}, "start_at must be tz-aware", id="naive"
    ),
    pytest.param(
        {"interval": timedelta(1), "alert_after_failures": 0}, "alert_after_failures must be", id="alert"
    ),
]


@pytest.mark.parametrize(("options", "message"), INVALID)
def test_invalid_declaration_raises_naming_the_job(options: dict[str, Any], message: str) -> None:
    def broken() -> None: ...

    with pytest.raises(JobDefinitionError, match=message) as info:
        job(**options)(broken)
    assert str(info.value).startswith(f"job '{__name__}.broken': ")


def test_invalid_declaration_names_the_explicit_name() -> None:
    with pytest.raises(JobDefinitionError, match="^job 'billing.nightly': "):
        job(cron="nonsense", name="billing.nightly")(lambda: None)


# -- ctx detection -------------------------------------------------------------------


def _no_args() -> None: ...


def _one_arg(ctx: Any) -> None: ...


def _one_required_one_optional(ctx: Any, verbose: bool = False) -> None: ...


def _two_args(a: Any, b: Any) -> None: ...


def _var_args(*args: Any) -> None: ...


def _keyword_only(*, ctx: Any) -> None: ...


@pytest.mark.parametrize(
    ("func", "wants"),
    [
        (_no_args, False),
        (_one_arg, True),
        (_one_required_one_optional, True),
        (_two_args, False),
        (_var_args, False),
        (_keyword_only, False),
    ],
)
def test_a_function_with_one_positional_parameter_gets_the_context(func: Any, wants: bool) -> None:
    spec = make_spec(func, name="t." + func.__name__, interval=timedelta(seconds=1))
    assert spec.wants_ctx is wants


def test_a_function_given_fixed_args_does_not_get_the_context() -> None:
    spec = make_spec(_one_arg, name="t.fixed", interval=timedelta(seconds=1), args=("x",))
    assert spec.wants_ctx is False


# -- load_jobs -----------------------------------------------------------------------

GOOD = """
    from datetime import timedelta
    from scheduler import job

    @job(interval=timedelta(seconds=30))
    def ping(ctx):
        ctx.log.info("alive")

    @job(cron="0 6 * * *", timezone="Europe/London", name="custom.daily")
    def daily():
        pass
"""


def test_load_jobs_collects_decorated_functions_named_module_dot_function(tmp_path: Path) -> None:
    write(tmp_path, "health.py", GOOD)
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["custom.daily", "health.ping"]
    ping = result.specs["health.ping"]
    assert ping.interval == timedelta(seconds=30)
    assert ping.wants_ctx is True
    assert ping.module == "scheduler_jobs.health"
    assert result.specs["custom.daily"].wants_ctx is False


BROKEN = {
    "syntax.py": ("def oops(:\n    pass\n", "SyntaxError"),
    "missing_dep.py": ("import not_a_real_module_xyz\n", "ModuleNotFoundError: No module named"),
    "explodes.py": (
        "raise RuntimeError('config server down\\nsecond line')\n",
        "RuntimeError: config server down",
    ),
    "bad_decl.py": (
        "from scheduler import job\n@job(cron='77 * * * *')\ndef f():\n    pass\n",
        "job 'bad_decl.f': bad cron expression",
    ),
    "exits.py": ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
}


@pytest.mark.parametrize("filename", sorted(BROKEN))
def test_a_module_that_fails_to_import_is_one_line_naming_the_file_and_others_still_load(
    tmp_path: Path, filename: str
) -> None:
    source, expected = BROKEN[filename]
    write(tmp_path, "a_good.py", GOOD)
    write(tmp_path, filename, source)
    write(
        tmp_path,
        "z_good.py",
        "from datetime import timedelta\nfrom scheduler import job\n"
        "@job(interval=timedelta(seconds=5))\ndef tick():\n    pass\n",
    )

    result = load_jobs(tmp_path)

    assert sorted(result.specs) == ["a_good.ping", "custom.daily", "z_good.tick"]
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.where.endswith(filename)
    assert expected in problem.message
    line = str(problem)
    assert "\n" not in line
    assert line.startswith(problem.where + ": ")


def test_a_syntax_error_reports_its_line(tmp_path: Path) -> None:
    write(tmp_path, "syntax.py", "x = 1\n\ndef oops(:\n    pass\n")
    (problem,) = load_jobs(tmp_path).problems
    assert "(line 3)" in problem.message
    assert "Traceback" in problem.detail or "SyntaxError" in problem.detail


def test_duplicate_job_names_are_reported_and_the_first_kept(tmp_path: Path) -> None:
    decl = (
        "from datetime import timedelta\nfrom scheduler import job\n"
        "@job(interval=timedelta(seconds={s}), name='shared.name')\ndef f():\n    pass\n"
    )
    write(tmp_path, "first.py", decl.format(s=10))
    write(tmp_path, "second.py", decl.format(s=20))

    result = load_jobs(tmp_path)

    assert list(result.specs) == ["shared.name"]
    assert result.specs["shared.name"].interval == timedelta(seconds=10)
    (problem,) = result.problems
    assert problem.where.endswith("second.py")
    assert "duplicate job name 'shared.name'" in problem.message
    assert "scheduler_jobs.first" in problem.message


TIMELOOP = """
    from datetime import timedelta
    from timeloop import Timeloop

    tl = Timeloop()

    @tl.job(interval=timedelta(seconds=20))
    def cleanup_tmp():
        print("cleaned")

    @tl.job(interval=timedelta(minutes=2))
    def rotate(ctx=None):
        pass
"""


def test_a_timeloop_module_is_discovered_with_its_intervals(tmp_path: Path) -> None:
    write(tmp_path, "legacy.py", TIMELOOP)
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["legacy.cleanup_tmp", "legacy.rotate"]
    cleanup = result.specs["legacy.cleanup_tmp"]
    assert cleanup.interval == timedelta(seconds=20)
    assert cleanup.wants_ctx is False
    assert cleanup.overlap == "skip" and cleanup.catchup == "latest"
    assert result.specs["legacy.rotate"].interval == timedelta(minutes=2)
    assert result.specs["legacy.rotate"].wants_ctx is False


def test_a_timeloop_job_with_a_bad_interval_is_reported_and_others_still_load(tmp_path: Path) -> None:
    write(tmp_path, "a_good.py", GOOD)
    write(
        tmp_path,
        "legacy_bad.py",
        """
        from timeloop import Timeloop
        tl = Timeloop()

        @tl.job(interval=5)
        def every_five():
            pass
        """,
    )
    result = load_jobs(tmp_path)
    assert sorted(result.specs) == ["a_good.ping", "custom.daily"]
    (problem,) = result.problems
    assert problem.where.endswith("legacy_bad.py")
    assert "legacy_bad.every_five" in problem.message and "timedelta" in problem.message


def test_the_shipped_timeloop_example_loads_as_module_dot_function() -> None:
    jobs_dir = Path(__file__).resolve().parents[1] / "code" / "jobs"
    result = load_jobs(jobs_dir)
    assert not [p for p in result.problems if "legacy_timeloop" in p.where]
    assert result.specs["legacy_timeloop.cleanup_tmp"].interval == timedelta(seconds=20)


def test_underscore_modules_and_other_files_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "_helpers.py", "raise RuntimeError('must not be imported')\n")
    write(tmp_path, "__init__.py", "raise RuntimeError('must not be imported')\n")
    write(tmp_path, "notes.txt", "not python")
    write(tmp_path, "real.py", GOOD)
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert "real.ping" in result.specs


def test_a_module_can_import_its_underscore_helper(tmp_path: Path) -> None:
    write(tmp_path, "_shared_helper_mod.py", "VALUE = 42\n")
    write(
        tmp_path,
        "user.py",
        """
        from datetime import timedelta
        from scheduler import job
        from _shared_helper_mod import VALUE

        @job(interval=timedelta(seconds=VALUE))
        def f():
            pass
        """,
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert result.specs["user.f"].interval == timedelta(seconds=42)


def test_imported_jobs_are_not_counted_twice(tmp_path: Path) -> None:
    write(tmp_path, "origin.py", GOOD)
    write(tmp_path, "reexport.py", "from scheduler_jobs.origin import ping\n")
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["custom.daily", "origin.ping"]


def test_loading_again_picks_up_edited_modules(tmp_path: Path) -> None:
    path = write(tmp_path, "edited.py", GOOD)
    assert load_jobs(tmp_path).specs["edited.ping"].interval == timedelta(seconds=30)
    path.write_text(textwrap.dedent(GOOD).replace("seconds=30", "seconds=45"))
    assert load_jobs(tmp_path).specs["edited.ping"].interval == timedelta(seconds=45)


def test_a_missing_jobs_folder_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    result = load_jobs(tmp_path / "absent")
    assert result.specs == {}
    (problem,) = result.problems
    assert "absent" in problem.where and "not a directory" in problem.message
