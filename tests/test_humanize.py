"""The text shared by the CLI, the dashboard and Slack for lengths of time and excerpts."""

from __future__ import annotations

import pytest
from scheduler.humanize import duration, short, span

SPANS = {
    "seconds": (59, "59s"),
    "minutes keep their seconds": (245, "4m 5s"),
    "hours keep their minutes": (2 * 3600 + 3 * 60 + 9, "2h 3m"),
    "days keep their hours": (86400 + 2 * 3600 + 300, "1d 2h"),
    "a zero unit is still shown": (86400 + 300, "1d 0h"),
    "the sign is dropped": (-90, "1m 30s"),
}


@pytest.mark.parametrize("case", SPANS)
def test_span_shows_the_two_largest_units(case: str) -> None:
    seconds, text = SPANS[case]
    assert span(seconds) == text


DURATIONS = {
    "unknown": (None, "-"),
    "under a second in milliseconds": (0.1234, "123 ms"),
    "under a minute with a tenth": (2.008, "2.0 s"),
    "a minute or more as a span": (61.5, "1m 1s"),
}


@pytest.mark.parametrize("case", DURATIONS)
def test_duration_of_a_run_picks_its_unit(case: str) -> None:
    seconds, text = DURATIONS[case]
    assert duration(seconds) == text


def test_short_collapses_whitespace_and_cuts_with_an_ellipsis() -> None:
    assert short("a\n  b\tc", 10) == "a b c"
    assert short("abcdefghij", 5) == "abcd…"
