"""Schedules: the interval grid, cron in a time zone, DST, and interval text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from scheduler.errors import JobDefinitionError
from scheduler.jobs.schedules import (
    CronSchedule,
    IntervalSchedule,
    format_interval,
    parse_interval,
    recent_slots,
    slots_between,
)

LONDON = ZoneInfo("Europe/London")
ANCHOR = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def london(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=LONDON, fold=fold)  # type: ignore[misc]


# -- interval grid ------------------------------------------------------------


def test_interval_slots_lie_on_the_grid_from_the_anchor() -> None:
    schedule = IntervalSchedule(timedelta(seconds=10), ANCHOR)
    slots = list(slots_between(schedule, ANCHOR, ANCHOR + timedelta(seconds=60)))
    assert slots == [ANCHOR + timedelta(seconds=10 * k) for k in range(1, 7)]


def test_interval_next_after_is_strictly_after_even_on_a_slot() -> None:
    schedule = IntervalSchedule(timedelta(seconds=10), ANCHOR)
    on_slot = ANCHOR + timedelta(seconds=30)
    assert schedule.next_after(on_slot) == ANCHOR + timedelta(seconds=40)
    assert schedule.next_after(on_slot - timedelta(microseconds=1)) == on_slot


def test_interval_before_the_anchor_the_first_slot_is_the_anchor() -> None:
    schedule = IntervalSchedule(timedelta(minutes=5), ANCHOR)
    assert schedule.next_after(ANCHOR - timedelta(days=3)) == ANCHOR
    assert schedule.next_after(ANCHOR) == ANCHOR + timedelta(minutes=5)


def test_interval_previous_before_is_strictly_before_and_none_before_the_anchor() -> None:
    schedule = IntervalSchedule(timedelta(seconds=10), ANCHOR)
    assert schedule.previous_before(ANCHOR) is None
    assert schedule.previous_before(ANCHOR - timedelta(hours=1)) is None
    assert schedule.previous_before(ANCHOR + timedelta(microseconds=1)) == ANCHOR
    assert schedule.previous_before(ANCHOR + timedelta(seconds=30)) == ANCHOR + timedelta(seconds=20)
    assert schedule.previous_before(ANCHOR + timedelta(seconds=35)) == ANCHOR + timedelta(seconds=30)


@pytest.mark.parametrize("interval", [timedelta(seconds=7), timedelta(milliseconds=100), timedelta(hours=25)])
def test_interval_grid_does_not_drift_over_many_slots(interval: timedelta) -> None:
    schedule = IntervalSchedule(interval, ANCHOR)
    slot = ANCHOR
    for _ in range(5000):
        slot = schedule.next_after(slot)
    assert slot == ANCHOR + 5000 * interval
    # Asking from an arbitrary instant lands on the same grid.
    probe = ANCHOR + 4321 * interval + interval / 3
    assert schedule.next_after(probe) == ANCHOR + 4322 * interval


def test_interval_anchor_in_another_offset_gives_utc_slots() -> None:
    anchor = datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    schedule = IntervalSchedule(timedelta(hours=1), anchor)
    slot = schedule.next_after(utc(2026, 3, 1, 12, 30))
    assert slot == utc(2026, 3, 1, 13, 0)
    assert slot.tzinfo == UTC


@pytest.mark.parametrize("interval", [timedelta(0), timedelta(seconds=-5)])
def test_non_positive_interval_is_rejected_with_a_clear_message(interval: timedelta) -> None:
    with pytest.raises(JobDefinitionError, match="interval must be positive"):
        IntervalSchedule(interval, ANCHOR)


def test_naive_anchor_is_rejected() -> None:
    with pytest.raises(JobDefinitionError, match="tz-aware"):
        IntervalSchedule(timedelta(seconds=1), datetime(2026, 1, 1))


def test_interval_describe_names_the_period() -> None:
    assert IntervalSchedule(timedelta(minutes=5), ANCHOR).describe() == "every 5m"


# -- recent_slots ---------------------------------------------------------------


def test_recent_slots_returns_the_latest_slots_in_order_and_reports_the_cut() -> None:
    schedule = IntervalSchedule(timedelta(minutes=1), ANCHOR)
    slots, cut = recent_slots(schedule, ANCHOR, ANCHOR + timedelta(minutes=10), limit=3)
    assert slots == [ANCHOR + timedelta(minutes=m) for m in (8, 9, 10)]
    assert cut is True


def test_recent_slots_is_not_cut_when_all_fit() -> None:
    schedule = IntervalSchedule(timedelta(minutes=1), ANCHOR)
    slots, cut = recent_slots(schedule, ANCHOR, ANCHOR + timedelta(minutes=3), limit=3)
    assert slots == [ANCHOR + timedelta(minutes=m) for m in (1, 2, 3)]
    assert cut is False


def test_recent_slots_excludes_after_and_includes_until() -> None:
    schedule = IntervalSchedule(timedelta(minutes=1), ANCHOR)
    after = ANCHOR + timedelta(minutes=2)
    until = ANCHOR + timedelta(minutes=4)
    slots, _ = recent_slots(schedule, after, until, limit=10)
    assert slots == [ANCHOR + timedelta(minutes=3), until]
    assert recent_slots(schedule, until, until, limit=10) == ([], False)


def test_recent_slots_stops_at_the_anchor() -> None:
    schedule = IntervalSchedule(timedelta(minutes=1), ANCHOR)
    slots, cut = recent_slots(schedule, ANCHOR - timedelta(days=1), ANCHOR + timedelta(minutes=1), limit=10)
    assert slots == [ANCHOR, ANCHOR + timedelta(minutes=1)]
    assert cut is False


def test_slots_between_is_half_open() -> None:
    schedule = CronSchedule("0 * * * *")
    slots = list(slots_between(schedule, utc(2026, 3, 1, 10), utc(2026, 3, 1, 13)))
    assert slots == [utc(2026, 3, 1, 11), utc(2026, 3, 1, 12), utc(2026, 3, 1, 13)]


# -- cron -----------------------------------------------------------------------


def test_cron_in_utc_fires_on_the_expression() -> None:
    schedule = CronSchedule("*/5 * * * *")
    assert schedule.next_after(utc(2026, 3, 1, 12, 2, 30)) == utc(2026, 3, 1, 12, 5)
    assert schedule.next_after(utc(2026, 3, 1, 12, 5)) == utc(2026, 3, 1, 12, 10)
    assert schedule.previous_before(utc(2026, 3, 1, 12, 5)) == utc(2026, 3, 1, 12, 0)
    assert schedule.previous_before(utc(2026, 3, 1, 12, 5, 0, 1)) == utc(2026, 3, 1, 12, 5)


def test_cron_follows_local_time_summer_and_winter() -> None:
    schedule = CronSchedule("0 6 * * *", "Europe/Paris")
    assert schedule.next_after(utc(2026, 1, 10)) == utc(2026, 1, 10, 5)  # CET, UTC+1
    assert schedule.next_after(utc(2026, 7, 10)) == utc(2026, 7, 10, 4)  # CEST, UTC+2


def test_cron_slots_are_utc() -> None:
    slot = CronSchedule("0 6 * * *", "America/New_York").next_after(utc(2026, 1, 10))
    assert slot.tzinfo == UTC and slot == utc(2026, 1, 10, 11)


def test_cron_describe_names_expression_and_zone() -> None:
    assert CronSchedule("0 6 * * *", "Europe/London").describe() == "cron 0 6 * * * (Europe/London)"


@pytest.mark.parametrize("expression", ["bad", "61 * * * *", "* * *", "* * * * * * * *", "0 25 * * *"])
def test_bad_cron_expression_is_rejected_naming_it(expression: str) -> None:
    with pytest.raises(JobDefinitionError, match="bad cron expression") as info:
        CronSchedule(expression)
    assert repr(expression) in str(info.value)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd"])
def test_unknown_time_zone_is_rejected_naming_it(zone: str) -> None:
    with pytest.raises(JobDefinitionError, match="unknown time zone") as info:
        CronSchedule("0 6 * * *", zone)
    assert repr(zone) in str(info.value)


# -- DST: a table of named cases ------------------------------------------------
#
# Europe/London, 2026: clocks go forward 29 March 01:00 GMT -> 02:00 BST (01:00-02:00
# does not exist) and back 25 October 02:00 BST -> 01:00 GMT (01:00-02:00 happens twice).

DST_CASES = [
    pytest.param(
        "30 1 * * *",
        utc(2026, 10, 24, 12),
        utc(2026, 10, 26, 12),
        [london(2026, 10, 25, 1, 30), london(2026, 10, 26, 1, 30)],
        id="daily-0130-runs-once-on-fall-back-day",
    ),
    pytest.param(
        "30 1 * * *",
        utc(2026, 3, 28, 12),
        utc(2026, 3, 30, 12),
        [london(2026, 3, 29, 2, 0), london(2026, 3, 30, 1, 30)],
        id="daily-0130-not-lost-on-spring-forward-runs-at-0200",
    ),
    pytest.param(
        "0 6 * * *",
        utc(2026, 10, 24, 12),
        utc(2026, 10, 26, 12),
        [london(2026, 10, 25, 6), london(2026, 10, 26, 6)],
        id="daily-0600-unaffected-by-fall-back",
    ),
    pytest.param(
        "*/15 * * * *",
        utc(2026, 10, 24, 23, 55),
        utc(2026, 10, 25, 1, 59),
        [
            london(2026, 10, 25, 1, 0),
            london(2026, 10, 25, 1, 15),
            london(2026, 10, 25, 1, 30),
            london(2026, 10, 25, 1, 45),
            london(2026, 10, 25, 1, 0, fold=1),
            london(2026, 10, 25, 1, 15, fold=1),
            london(2026, 10, 25, 1, 30, fold=1),
            london(2026, 10, 25, 1, 45, fold=1),
        ],
        id="every-15-min-runs-in-both-folds",
    ),
    pytest.param(
        "*/15 * * * *",
        utc(2026, 3, 29, 0, 40),
        utc(2026, 3, 29, 1, 20),
        [
            london(2026, 3, 29, 0, 45),
            london(2026, 3, 29, 2, 0),
            london(2026, 3, 29, 2, 15),
        ],
        id="every-15-min-skips-the-missing-hour",
    ),
    pytest.param(
        "0 * * * *",
        utc(2026, 10, 24, 23, 30),
        utc(2026, 10, 25, 2, 30),
        [
            london(2026, 10, 25, 1, 0),
            london(2026, 10, 25, 1, 0, fold=1),
            london(2026, 10, 25, 2, 0),
        ],
        id="hourly-runs-in-both-folds",
    ),
]


@pytest.mark.parametrize(("expression", "after", "until", "expected"), DST_CASES)
def test_dst_change(expression: str, after: datetime, until: datetime, expected: list[datetime]) -> None:
    schedule = CronSchedule(expression, "Europe/London")
    slots = list(slots_between(schedule, after, until))
    assert slots == [e.astimezone(UTC) for e in expected]
    # Walking backwards finds the same slots.
    back, cut = recent_slots(schedule, after, until, limit=len(expected) + 5)
    assert back == slots and cut is False


@pytest.mark.parametrize("expression", ["30 1 * * *", "0 1 * * *", "*/15 * * * *", "0 * * * *", "45 0 * * *"])
@pytest.mark.parametrize("day", [utc(2026, 10, 24, 22), utc(2026, 3, 28, 22)], ids=["fall-back", "spring"])
def test_next_after_and_previous_before_agree_around_dst(expression: str, day: datetime) -> None:
    """From every instant across a DST change: next is strictly after, previous strictly
    before, and nothing lies between them."""
    schedule = CronSchedule(expression, "Europe/London")
    canonical = list(slots_between(schedule, day - timedelta(days=2), day + timedelta(days=2)))
    for minute in range(0, 6 * 60, 5):
        for extra in (timedelta(0), timedelta(seconds=30, microseconds=7)):
            instant = day + timedelta(minutes=minute) + extra
            nxt = schedule.next_after(instant)
            prev = schedule.previous_before(instant)
            assert nxt > instant, f"next_after({instant}) = {nxt}"
            assert prev is not None and prev < instant, f"previous_before({instant}) = {prev}"
            assert nxt == min(s for s in canonical if s > instant), f"next_after({instant})"
            assert prev == max(s for s in canonical if s < instant), f"previous_before({instant})"


# -- interval text ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", timedelta(seconds=90)),
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1.5m", timedelta(seconds=90)),
        (" 10S ", timedelta(seconds=10)),
        ("0.5", timedelta(milliseconds=500)),
    ],
)
def test_parse_interval_accepts_units(text: str, expected: timedelta) -> None:
    assert parse_interval(text) == expected


@pytest.mark.parametrize("text", ["", "x", "5w", "m", "5 minutes", "1e400", "inf", "nan"])
def test_parse_interval_rejects_garbage_naming_it(text: str) -> None:
    with pytest.raises(JobDefinitionError) as info:
        parse_interval(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text", ["0", "-5", "0m", "-1h"])
def test_parse_interval_rejects_non_positive(text: str) -> None:
    with pytest.raises(JobDefinitionError, match="must be positive"):
        parse_interval(text)


@pytest.mark.parametrize(
    ("interval", "text"),
    [
        (timedelta(seconds=1), "1s"),
        (timedelta(seconds=59), "59s"),
        (timedelta(minutes=1), "1m"),
        (timedelta(seconds=90), "90s"),
        (timedelta(hours=1), "1h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(days=2), "2d"),
        (timedelta(milliseconds=500), "0.5s"),
    ],
)
def test_format_interval_uses_the_largest_whole_unit(interval: timedelta, text: str) -> None:
    assert format_interval(interval) == text
    assert parse_interval(text) == interval
