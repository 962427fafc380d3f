"""When a job is due: pure functions of time, no clock reads.

A schedule maps an instant to the next slot strictly after it. Slots are
tz-aware UTC datetimes; every instance computes the same slots from the same
definition, which is what lets the database settle who runs each one.
"""

from __future__ import annotations

import functools
import math
import re
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


_BUCKET = timedelta(hours=3)  # slots near a clock change are computed per bucket and cached
_NEAR = timedelta(hours=3)  # more than any clock change (Lord Howe: 30 min, most zones: 1 h)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SINGLE_RANGE = re.compile(r"^(\d+)-\1/\d+$")
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def cron_fields(expression: str) -> str:
    """The five (or six) fields of an expression, aliases such as `@daily` expanded."""
    text = expression.strip()
    if text.lower() == "@reboot":
        raise JobDefinitionError(
            "@reboot is not supported: jobs run on a schedule; use an interval job with start_at= instead"
        )
    fields = ALIASES.get(text.lower(), text)
    # cronsim 2.8 reads a one-value range with a step ('3-3/2') as '3/2' (3 to the end, every 2nd).
    return " ".join(",".join(_SINGLE_RANGE.sub(r"\1", p) for p in f.split(",")) for f in fields.split())


@dataclass(frozen=True)
class CronSchedule:
    """Cron slots in a time zone, with Vixie cron's rules across clock changes.

    cronsim matches the fields on the local wall clock; the mapping to instants
    is ours, because cronsim 2.8 loses slots at half-hour shifts
    (Australia/Lord_Howe; docs/upstream/cronsim-half-hour-dst.md). As in Vixie
    cron, a job whose minute or hour field starts with `*` is a wildcard job:
    it runs at every real minute whose wall time matches, so in both folds of
    a repeated hour and never in a skipped one. Any other job is a fixed-time
    job: it runs once on a fall-back day (the first fold), and a time skipped
    by a spring-forward runs when the clock jumps (01:30 in Europe/London runs
    at 02:00 BST that day).
    """

    expression: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        parse_timezone(self.timezone)
        fields = cron_fields(self.expression)
        try:
            CronSim(fields, datetime(2026, 1, 1))
        except (CronSimError, ValueError, IndexError) as exc:
            raise JobDefinitionError(f"bad cron expression {self.expression!r}: {exc}") from None

    @property
    def wildcard(self) -> bool:
        """Vixie cron's wildcard job: the minute or the hour field starts with `*`."""
        parts = cron_fields(self.expression).split()
        minute, hour = (parts[1], parts[2]) if len(parts) == 6 else (parts[0], parts[1])
        return (
            minute.startswith("*") or hour.startswith("*") or (len(parts) == 6 and parts[0].startswith("*"))
        )

    def next_after(self, instant: datetime) -> datetime:
        zone = ZoneInfo(self.timezone)
        if not _near_change(instant, zone):
            wall = _wall(instant, zone)
            for candidate in CronSim(cron_fields(self.expression), wall):
                slot = _unambiguous(candidate, zone)
                if slot is not None and slot > instant:
                    return slot
                break
        bucket = _bucket_of(instant)
        for step in range(3):
            for slot in _slots_in_bucket(self.expression, self.timezone, bucket + step):
                if slot > instant:
                    return slot
        resume = _bucket_start(bucket + 3) - _US
        if resume.year > instant.year + 30:
            raise JobDefinitionError(f"cron {self.expression!r} has no slot after {instant.isoformat()}")
        return self.next_after(resume)

    def previous_before(self, instant: datetime) -> datetime | None:
        zone = ZoneInfo(self.timezone)
        if not _near_change(instant, zone):
            wall = _wall(instant, zone)
            if wall.microsecond:  # cronsim skips a tick at the start's whole second otherwise
                wall = wall.replace(microsecond=0) + timedelta(seconds=1)
            for candidate in CronSim(cron_fields(self.expression), wall, reverse=True):
                slot = _unambiguous(candidate, zone)
                if slot is not None and slot < instant:
                    return slot
                break
        bucket = _bucket_of(instant)
        for step in range(3):
            for slot in reversed(_slots_in_bucket(self.expression, self.timezone, bucket - step)):
                if slot < instant:
                    return slot
        resume = _bucket_start(bucket - 2)
        if resume.year < 1971:
            return None
        return self.previous_before(resume)

    def describe(self) -> str:
        return f"cron {self.expression} ({self.timezone})"


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _near_change(instant: datetime, zone: ZoneInfo) -> bool:
    """A clock change within _NEAR of `instant`."""
    return (instant - _NEAR).astimezone(zone).utcoffset() != (instant + _NEAR).astimezone(zone).utcoffset()


def _unambiguous(wall: datetime, zone: ZoneInfo) -> datetime | None:
    """The one instant showing `wall`, or None if it shows twice or never."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return first if first == second else None


def _slots_at(wall: datetime, zone: ZoneInfo, wildcard: bool) -> list[datetime]:
    """The instants a job matching local time `wall` runs at (Vixie cron's rules)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first < second:  # shown twice (fall-back): wildcard jobs run in both folds
        return [first, second] if wildcard else [first]
    # never shown (spring-forward): a fixed-time job runs when the clock jumps
    return [] if wildcard else [_jump(wall, zone, second, first)]


def _jump(wall: datetime, zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The instant the clock jumps over `wall`: the first in (low, high] showing a later time."""
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if _wall(middle, zone) > wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def _bucket_of(instant: datetime) -> int:
    return int((instant - _EPOCH) // _BUCKET)


def _bucket_start(bucket: int) -> datetime:
    return _EPOCH + bucket * _BUCKET


@functools.lru_cache(maxsize=4096)
def _slots_in_bucket(expression: str, timezone: str, bucket: int) -> tuple[datetime, ...]:
    """Every slot in one bucket of time, in order, from the wall times that can map into it."""
    zone = ZoneInfo(timezone)
    begin, end = _bucket_start(bucket), _bucket_start(bucket + 1)
    wildcard = CronSchedule(expression, timezone).wildcard
    first_wall = _wall(begin, zone) - _NEAR - timedelta(minutes=1)
    last_wall = _wall(end, zone) + _NEAR
    found: set[datetime] = set()
    for wall in CronSim(cron_fields(expression), first_wall):
        if wall > last_wall:
            break
        found.update(s for s in _slots_at(wall, zone, wildcard) if begin <= s < end)
    return tuple(sorted(found))


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
