"""When a job is due: pure functions of time, no clock reads.

A schedule maps an instant to the next slot strictly after it. Slots are
tz-aware UTC datetimes; every instance computes the same slots from the same
definition, which is what lets the database settle who runs each one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from scheduler.errors import JobDefinitionError

_US = timedelta(microseconds=1)


class Schedule(Protocol):
    def next_after(self, instant: datetime) -> datetime:
        """The first slot strictly after `instant`."""
        ...

    def previous_before(self, instant: datetime) -> datetime | None:
        """The last slot strictly before `instant`, or None."""
        ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class IntervalSchedule:
    """Fixed-rate slots on a grid: anchor, anchor + interval, ...

    The grid never drifts: a slot depends only on the anchor and the interval,
    not on when or how long earlier runs ran.
    """

    interval: timedelta
    anchor: datetime

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0):
            raise JobDefinitionError(f"interval must be positive, got {self.interval}")
        if self.anchor.tzinfo is None:
            raise JobDefinitionError("interval anchor must be tz-aware")

    def next_after(self, instant: datetime) -> datetime:
        anchor = self.anchor.astimezone(UTC)
        if instant < anchor:
            return anchor
        step = self.interval // _US
        elapsed = (instant - anchor) // _US
        return anchor + timedelta(microseconds=(elapsed // step + 1) * step)

    def previous_before(self, instant: datetime) -> datetime | None:
        anchor = self.anchor.astimezone(UTC)
        if instant <= anchor:
            return None
        step = self.interval // _US
        elapsed = (instant - anchor) // _US
        return anchor + timedelta(microseconds=((elapsed - 1) // step) * step)

    def describe(self) -> str:
        return f"every {format_interval(self.interval)}"


@dataclass(frozen=True)
class CronSchedule:
    """Cron slots in a time zone, computed by cronsim.

    Across DST: a daily 01:30 job in Europe/London runs once on the fall-back
    day (the first 01:30) and at 02:00 on the spring-forward day, when 01:30
    does not exist. Jobs that run more often than hourly run in both folds.
    """

    expression: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        zone = parse_timezone(self.timezone)
        try:
            CronSim(self.expression, datetime(2026, 1, 1, tzinfo=zone))
        except (CronSimError, ValueError, IndexError) as exc:
            raise JobDefinitionError(f"bad cron expression {self.expression!r}: {exc}") from None

    def next_after(self, instant: datetime) -> datetime:
        zone = ZoneInfo(self.timezone)
        local = instant.astimezone(zone)
        # From the second fold of a fall-back hour cronsim can yield a time in the first
        # fold, i.e. before `instant`; skip such ticks so the slot is strictly after.
        for tick in CronSim(self.expression, local):
            slot = tick.astimezone(UTC)
            if slot > instant:
                return slot
        raise JobDefinitionError(f"cron {self.expression!r} has no slot after {instant.isoformat()}")

    def previous_before(self, instant: datetime) -> datetime | None:
        local = instant.astimezone(ZoneInfo(self.timezone))
        if local.microsecond:
            # cronsim skips the initial tick for fractional seconds; start at the whole second after
            local = local.replace(microsecond=0) + timedelta(seconds=1)
        slot = next(CronSim(self.expression, local, reverse=True)).astimezone(UTC)
        if slot >= instant:
            return self.previous_before(slot)
        # Walking back, cronsim can miss slots of the repeated hour on a fall-back day;
        # walking forward from the slot it found fills the gap.
        while (following := self.next_after(slot)) < instant:
            slot = following
        return slot

    def describe(self) -> str:
        return f"cron {self.expression} ({self.timezone})"


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise JobDefinitionError(f"unknown time zone {name!r}") from None


def slots_between(schedule: Schedule, after: datetime, until: datetime) -> Iterator[datetime]:
    """Slots in (after, until], in order."""
    slot = schedule.next_after(after)
    while slot <= until:
        yield slot
        slot = schedule.next_after(slot)


def recent_slots(
    schedule: Schedule, after: datetime, until: datetime, limit: int
) -> tuple[list[datetime], bool]:
    """The latest `limit` slots in (after, until], in order, and whether older ones were cut."""
    found: list[datetime] = []
    cursor = until + _US
    while len(found) <= limit:
        slot = schedule.previous_before(cursor)
        if slot is None or slot <= after:
            break
        found.append(slot)
        cursor = slot
    truncated = len(found) > limit
    return sorted(found[:limit]), truncated


def format_interval(interval: timedelta) -> str:
    seconds = interval.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_interval(text: str) -> timedelta:
    """'90', '90s', '5m', '2h', '1d' -> timedelta. Raises JobDefinitionError."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    unit = raw[-1] if raw and raw[-1] in units else "s"
    number = raw[:-1] if raw and raw[-1] in units else raw
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise JobDefinitionError(f"bad interval {text!r}: use e.g. 30s, 5m, 2h") from None
    if not math.isfinite(value):
        raise JobDefinitionError(f"bad interval {text!r}: use e.g. 30s, 5m, 2h")
    if value <= 0:
        raise JobDefinitionError(f"interval must be positive, got {text!r}")
    try:
        return timedelta(seconds=value)
    except OverflowError:
        raise JobDefinitionError(f"bad interval {text!r}: too large") from None
