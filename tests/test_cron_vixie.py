"""Cron slots against a minute-by-minute model of Vixie cron, across clock changes in five zones.

`vixie_runs` is the test oracle: it parses the fields itself and replays
Vixie cron's main loop (cron.c) one real minute at a time, on "virtual time"
in local wall-clock minutes:
- a job matches when minute, hour and month match and the days match: both
  day-of-month and day-of-week when either field starts with `*`, else either;
- a wildcard job (minute or hour field starting with `*`) runs at every real
  minute whose wall time matches: in both folds of a repeated hour, never in a
  skipped one;
- a fixed-time job runs once when the clock goes back (not again in the second
  fold), and runs the times skipped by a jump forward (up to 3 h) when the
  clock jumps.
The differential test follows our `CronSchedule.next_after` slot by slot, as
the dispatcher does, and compares.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from scheduler.errors import JobDefinitionError
from scheduler.jobs.schedules import CronSchedule

MINUTE = timedelta(minutes=1)
NAIVE_EPOCH = datetime(1970, 1, 1)
RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
ZONES = ["Australia/Lord_Howe", "America/New_York", "Europe/London", "Asia/Kolkata", "UTC"]


def parse_field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            first, last = low, high
        elif "-" in body:
            first, last = (int(x) for x in body.split("-"))
        else:
            first = int(body)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return values


class VixieEntry:
    def __init__(self, expression: str) -> None:
        fields = expression.split()
        self.sets = [parse_field(f, lo, hi) for f, (lo, hi) in zip(fields, RANGES, strict=True)]
        self.days_and = fields[2].startswith("*") or fields[4].startswith("*")
        self.wildcard = fields[0].startswith("*") or fields[1].startswith("*")

    def matches(self, virtual_minute: int) -> bool:
        wall = NAIVE_EPOCH + virtual_minute * MINUTE
        minutes, hours, doms, months, dows = self.sets
        if wall.minute not in minutes or wall.hour not in hours or wall.month not in months:
            return False
        dom, dow = wall.day in doms, wall.isoweekday() % 7 in dows
        return (dom and dow) if self.days_and else (dom or dow)


def local_minute(instant: datetime, zone: ZoneInfo) -> int:
    wall = instant.astimezone(zone).replace(tzinfo=None)
    return int((wall - NAIVE_EPOCH) // MINUTE)


def vixie_runs(expression: str, zone: ZoneInfo, begin: datetime, end: datetime) -> list[datetime]:
    """The instants in [begin, end] at which Vixie cron starts the job (one per instant)."""
    entry = VixieEntry(expression)
    runs: list[datetime] = []
    virtual = local_minute(begin - MINUTE, zone)
    at = begin
    while at <= end:
        running = local_minute(at, zone)
        diff = running - virtual
        due = False
        if diff == 1:
            due = entry.matches(running)
            virtual = running
        elif 0 < diff <= 5:  # woke up a little late: every job for each minute missed
            due = any(entry.matches(v) for v in range(virtual + 1, running + 1))
            virtual = running
        elif 5 < diff <= 180:  # jumped forward (DST): wildcard now, fixed-time for each minute skipped
            due = (
                entry.matches(running)
                if entry.wildcard
                else any(entry.matches(v) for v in range(virtual + 1, running + 1))
            )
            virtual = running
        elif -180 <= diff <= 0:  # went back: wildcard jobs only, until virtual time is caught up
            due = entry.wildcard and entry.matches(running)
        else:  # a large change: start over from now
            due = entry.matches(running)
            virtual = running
        if due:
            runs.append(at)
        at += MINUTE
    return runs


def ours(expression: str, zone: str, begin: datetime, end: datetime) -> list[datetime]:
    schedule = CronSchedule(expression, zone)
    slots = []
    slot = schedule.next_after(begin - timedelta(microseconds=1))
    while slot <= end:
        slots.append(slot)
        following = schedule.next_after(slot)
        assert schedule.previous_before(following) == slot, (expression, zone, slot)
        slot = following
    return slots


def transitions(zone: ZoneInfo) -> list[datetime]:
    """Clock changes in 2026-2027, to the minute."""
    found = []
    at, step = datetime(2026, 1, 1, tzinfo=UTC), timedelta(hours=1)
    while at < datetime(2028, 1, 1, tzinfo=UTC):
        if at.astimezone(zone).utcoffset() != (at + step).astimezone(zone).utcoffset():
            low, high = at, at + step
            while high - low > MINUTE:
                middle = low + (high - low) / 2
                same = middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset()
                low, high = (middle, high) if same else (low, middle)
            found.append(high)
        at += step
    return found


def random_field(rng: random.Random, low: int, high: int, hot: list[int]) -> str:
    kind = rng.random()
    if kind < 0.25:
        return "*"
    if kind < 0.4:
        return f"*/{rng.randint(2, max(2, (high - low) // 2))}"
    pick = hot if hot and rng.random() < 0.7 else list(range(low, high + 1))
    if kind < 0.7:
        return str(rng.choice(pick))
    if kind < 0.85:
        first = rng.choice(pick)
        last = rng.randint(first, min(high, first + rng.randint(0, 5)))
        step = f"/{rng.randint(2, 3)}" if rng.random() < 0.3 else ""
        return f"{first}-{last}{step}"
    return ",".join(str(v) for v in sorted(rng.sample(pick, min(len(pick), 2))))


def random_expression(rng: random.Random, at: datetime) -> str:
    """Fields biased towards the hours and days around `at` (a clock change), so that they matter."""
    local_hours = [(at.hour + d) % 24 for d in range(-3, 4)]
    days = [(at + timedelta(days=d)).day for d in (-1, 0, 1)]
    dows = [((at + timedelta(days=d)).isoweekday() % 7) for d in (-1, 0, 1)]
    return " ".join(
        [
            random_field(rng, 0, 59, [0, 1, 15, 21, 29, 30, 31, 41, 45, 59]),
            random_field(rng, 0, 23, local_hours + [1, 2, 3]),
            random_field(rng, 1, 31, days) if rng.random() < 0.5 else "*",
            random_field(rng, 1, 12, [at.month]) if rng.random() < 0.3 else "*",
            random_field(rng, 0, 6, dows) if rng.random() < 0.5 else "*",
        ]
    )


def test_vixie_oracle_follows_the_day_or_rule_and_the_star_prefix() -> None:
    monday_13th = datetime(2026, 4, 13)
    minute = int((monday_13th - NAIVE_EPOCH) // MINUTE)
    assert VixieEntry("0 0 13 * 5").matches(minute)  # 13th OR Friday: the 13th, a Monday
    assert not VixieEntry("0 0 */13 * 5").matches(minute)  # '*' prefix: 13th AND Friday
    assert VixieEntry("0 0 * * 1").matches(minute)


def test_vixie_oracle_across_clock_changes_in_london() -> None:
    london = ZoneInfo("Europe/London")
    spring = datetime(2027, 3, 28, 0, 0, tzinfo=UTC)  # 01:00 GMT -> 02:00 BST at 01:00Z
    fixed = vixie_runs("30 1 * * *", london, spring, spring + timedelta(hours=3))
    assert fixed == [datetime(2027, 3, 28, 1, 0, tzinfo=UTC)]  # runs when the clock jumps
    assert vixie_runs("*/30 1 * * *", london, spring, spring + timedelta(hours=3)) == []  # skipped
    autumn = datetime(2027, 10, 30, 23, 0, tzinfo=UTC)  # 02:00 BST -> 01:00 GMT at 01:00Z
    assert vixie_runs("30 1 * * *", london, autumn, autumn + timedelta(hours=4)) == [
        datetime(2027, 10, 31, 0, 30, tzinfo=UTC)
    ]
    assert vixie_runs("*/30 1 * * *", london, autumn, autumn + timedelta(hours=4)) == [
        datetime(2027, 10, 31, 0, 0, tzinfo=UTC),
        datetime(2027, 10, 31, 0, 30, tzinfo=UTC),
        datetime(2027, 10, 31, 1, 0, tzinfo=UTC),
        datetime(2027, 10, 31, 1, 30, tzinfo=UTC),
    ]


def test_lord_howe_half_hour_fall_back_keeps_the_three_o_clock_hour() -> None:
    schedule = CronSchedule("* 3 * * *", "Australia/Lord_Howe")
    assert schedule.next_after(datetime(2027, 4, 3, 15, 10, tzinfo=UTC)) == datetime(
        2027, 4, 3, 16, 30, tzinfo=UTC
    )
    day = datetime(2027, 4, 3, 12, tzinfo=UTC), datetime(2027, 4, 4, 12, tzinfo=UTC)
    assert len(ours("* 3 * * *", "Australia/Lord_Howe", *day)) == 60


@pytest.mark.parametrize("expression", ["* 3 * * *", "41 * * * *", "*/21 9 * * *", "30 * * * *"])
def test_the_issue_expressions_agree_with_vixie_cron_around_every_lord_howe_change(expression: str) -> None:
    zone = ZoneInfo("Australia/Lord_Howe")
    for change in transitions(zone):
        begin, end = change - timedelta(hours=30), change + timedelta(hours=30)
        assert ours(expression, zone.key, begin, end) == vixie_runs(expression, zone, begin, end), change


def test_random_expressions_agree_with_vixie_cron_around_the_2026_2027_changes() -> None:
    rng = random.Random(1102)
    windows = {name: transitions(ZoneInfo(name)) for name in ZONES}
    windows["UTC"] = [datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2027, 10, 31, 1, tzinfo=UTC)]
    windows["Asia/Kolkata"] = windows["UTC"]
    assert len(windows["Australia/Lord_Howe"]) == 4 and len(windows["Europe/London"]) == 4
    compared = 0
    for _ in range(300):
        name = rng.choice(ZONES)
        zone = ZoneInfo(name)
        change = rng.choice(windows[name])
        expression = random_expression(rng, change.astimezone(zone))
        begin, end = change - timedelta(hours=4), change + timedelta(hours=4)
        expected = vixie_runs(expression, zone, begin, end)
        assert ours(expression, name, begin, end) == expected, (expression, name, change)
        compared += len(expected)
    assert compared > 1000  # the expressions do fire around the changes


@pytest.mark.parametrize(
    ("alias", "same_as"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ],
)
def test_vixie_aliases_are_accepted(alias: str, same_as: str) -> None:
    start = datetime(2026, 10, 24, 22, 17, tzinfo=UTC)
    got = CronSchedule(alias, "Europe/London")
    want = CronSchedule(same_as, "Europe/London")
    slot = got.next_after(start)
    assert slot == want.next_after(start)
    assert got.previous_before(slot) == want.previous_before(slot)
    assert got.describe() == f"cron {alias} (Europe/London)"


def test_reboot_is_a_clear_error() -> None:
    with pytest.raises(JobDefinitionError, match="@reboot is not supported"):
        CronSchedule("@reboot")
