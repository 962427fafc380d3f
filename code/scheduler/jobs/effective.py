"""When a job runs next: its effective schedule and its cursor, from stored facts only.

The one owner of both, used by the dispatcher, the CLI/API/dashboard (`next`,
`jobs`), metrics and the watchdog, so that every surface shows the slot the
daemon claims next. Pure functions: no clock reads, no database.

- The effective schedule is the operator's override (interval or cron), else
  the code's definition.
- The cursor is the last slot decided: the latest scheduled slot recorded (any
  status, manual triggers excluded), else the time the job was first defined
  (its anchor with `first_run="interval"`, so the first run comes one interval
  later, as with timeloop).
  While the job is active, an operator change (resume, new schedule, clearing
  it) moves the cursor to the change time: slots before a change are never
  caught up, so a resume never records the paused period as `missed`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scheduler.jobs.schedules import CronSchedule, IntervalSchedule, Schedule
from scheduler.store.reads import JobRow


def schedule_of(row: JobRow) -> Schedule:
    """The effective schedule: the operator's override, else the code's."""
    if row.override_interval_seconds is not None:
        return IntervalSchedule(timedelta(seconds=row.override_interval_seconds), row.anchor_at)
    if row.override_cron is not None:
        return CronSchedule(row.override_cron, row.override_timezone or "UTC")
    return code_schedule_of(row)


def code_schedule_of(row: JobRow) -> Schedule:
    """The schedule as declared in code (the stored definition)."""
    if row.definition.get("interval_seconds") is not None:
        interval = timedelta(seconds=row.definition["interval_seconds"])
        start = row.definition.get("start_at")
        anchor = datetime.fromisoformat(start) if start else row.anchor_at
        return IntervalSchedule(interval, anchor)
    return CronSchedule(row.definition["cron"], row.definition.get("timezone") or "UTC")


def change_time(row: JobRow, now: datetime) -> datetime | None:
    """When an active job's schedule or state last changed by an operator (never after `now`)."""
    if row.paused or row.changed_at is None:
        return None
    # A change stamped ahead of this reader's clock (a skewed peer) counts from `now`.
    return min(row.changed_at, now)


def cursor_of(row: JobRow, last_slot: datetime | None, now: datetime) -> datetime:
    """The last slot decided, as a daemon starting at `now` would take it."""
    cursor = last_slot or row.defined_at
    if last_slot is None and row.definition.get("first_run") == "interval":
        schedule = schedule_of(row)
        if isinstance(schedule, IntervalSchedule):  # timeloop's way: one interval before the first run
            cursor = max(cursor, schedule.anchor)
    changed = change_time(row, now)
    return max(cursor, changed) if changed is not None else cursor


def cursor_after_change(cursor: datetime, row: JobRow, now: datetime) -> datetime:
    """A running daemon's cursor once it reads `row` changed in the database.

    An operator change on an active job (resume, new schedule, cleared
    override) moves it to the change time, as `cursor_of` does for a daemon
    that starts after the change; `cursor` is the last slot recorded.
    """
    changed = change_time(row, now)
    return max(cursor, changed) if changed is not None else cursor


def active(row: JobRow) -> bool:
    """Neither paused by an operator nor disabled in code."""
    return not row.paused and bool(row.definition.get("enabled", True))


def next_run_at(row: JobRow, last_slot: datetime | None, now: datetime) -> datetime | None:
    """The next slot the daemon claims; None while paused or disabled in code."""
    if not active(row):
        return None
    return schedule_of(row).next_after(cursor_of(row, last_slot, now))


def upcoming(row: JobRow, last_slot: datetime | None, now: datetime, count: int) -> list[datetime]:
    """The next `count` slots after `now` (and after the cursor), from the effective schedule."""
    schedule = schedule_of(row)
    slots: list[datetime] = []
    at = max(now, cursor_of(row, last_slot, now))
    for _ in range(count):
        at = schedule.next_after(at)
        slots.append(at)
    return slots


def zone_of(row: JobRow) -> str:
    """The zone a job's times are shown in: its effective cron zone, else its declared zone."""
    schedule = schedule_of(row)
    if isinstance(schedule, CronSchedule):
        return schedule.timezone
    return str(row.definition.get("timezone") or "UTC")


def validate_override(interval: timedelta | None, cron: str | None, timezone: str | None) -> None:
    """Raises JobDefinitionError, naming what is wrong, for an operator override."""
    if interval is not None:
        IntervalSchedule(interval, datetime(2026, 1, 1, tzinfo=UTC))
    if cron is not None:
        CronSchedule(cron, timezone or "UTC")
