"""Job names the API paths can carry: '/', '\\' and control characters are refused at declaration."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from scheduler.errors import JobDefinitionError
from scheduler.jobs.discovery import load_jobs
from scheduler.jobs.registry import make_spec


def work() -> None:
    """A job function; never called here."""


@pytest.mark.parametrize(
    ("name", "found"),
    [
        ("reports/daily", "'/'"),
        ("<img src=x onerror=alert(1)>/x", "'/'"),
        ("a\\b", "'\\\\'"),
        ("bell\x07", "'\\x07'"),
        ("two\nlines", "'\\n'"),
        ("zero\u200bwidth", "'\\u200b'"),
    ],
)
def test_job_name_with_a_slash_or_control_character_is_refused_naming_the_character(
    name: str, found: str
) -> None:
    with pytest.raises(JobDefinitionError) as info:
        make_spec(work, name=name, interval=timedelta(seconds=1))
    assert str(info.value) == (
        f"job {name!r}: name must not contain '/', '\\' or control characters; found {found}"
    )


@pytest.mark.parametrize(
    ("name", "message"), [("", "non-empty"), ("   ", "non-empty"), ("x" * 201, "at most 200")]
)
def test_job_name_that_is_blank_or_longer_than_the_column_is_refused(name: str, message: str) -> None:
    with pytest.raises(JobDefinitionError, match=message):
        make_spec(work, name=name, interval=timedelta(seconds=1))


def test_names_with_dots_dashes_spaces_and_markup_without_a_slash_are_kept() -> None:
    for name in ("etl.load", "nightly-report", "a b", "<b>x</b>".replace("/", ""), "ünïcode.job"):
        assert make_spec(work, name=name, interval=timedelta(seconds=1)).name == name


def test_module_declaring_a_job_name_with_a_slash_is_a_load_problem_and_its_other_jobs_load(
    tmp_path: Path,
) -> None:
    (tmp_path / "mixed.py").write_text(
        "from datetime import timedelta\nfrom scheduler import job\n"
        "@job(interval=timedelta(seconds=5))\ndef fine(): pass\n"
    )
    (tmp_path / "slashed.py").write_text(
        "from datetime import timedelta\nfrom scheduler import job\n"
        "@job(interval=timedelta(seconds=5), name='a/b')\ndef bad(): pass\n"
    )
    result = load_jobs(tmp_path)
    assert list(result.specs) == ["mixed.fine"]
    assert len(result.problems) == 1
    assert "slashed.py" in str(result.problems[0])
    assert "job 'a/b': name must not contain '/'" in str(result.problems[0])
