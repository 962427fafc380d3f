"""The operator's writes shared by the CLI and the HTTP API: trigger, pause, resume, set schedule.

Each validates its input, changes the database with an audit entry, and returns
the job as `scheduler.operator.queries` shows it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from scheduler.errors import JobDefinitionError, RefusedError
from scheduler.jobs import effective
from scheduler.jobs.schedules import parse_interval
from scheduler.operator.queries import job_view
from scheduler.store import Store

MIN_INTERVAL = timedelta(seconds=1)  # an override below this would spin the dispatcher


def trigger(store: Store, name: str, actor: str, now: datetime) -> dict[str, Any]:
    """Queue a manual run; a live instance that loads the job runs it once (skipped if busy).

    Raises NotFoundError, or RefusedError while the job is paused or disabled in code.
    """
    row = store.jobs.get(name)
    if not row.definition.get("enabled", True):
        raise RefusedError(f"job {name!r} is disabled in its code; it cannot be triggered")
    if row.paused:
        raise RefusedError(f"job {name!r} is paused; resume it before triggering")
    run_id = store.runs.enqueue(name, now)
    store.jobs.add_audit(actor, "trigger", name, {"run_id": run_id}, now)
    loaders = [i.id for i in store.cluster.alive(now) if name in i.jobs]
    return {"job": name, "run_id": run_id, "status": "queued", "instances": loaders}


def set_paused(store: Store, name: str, paused: bool, actor: str, now: datetime) -> dict[str, Any]:
    """Pause or resume; idempotent. Raises NotFoundError."""
    row = store.jobs.set_paused(name, paused, actor, now)
    return job_view(row, store.runs.latest_per_job().get(name), store.runs.last_slots().get(name), now)


def set_schedule(
    store: Store,
    name: str,
    actor: str,
    now: datetime,
    *,
    interval: str | float | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    clear: bool = False,
) -> dict[str, Any]:
    """Override a job's schedule, or clear the override.

    `interval` is seconds or text like '5m'. Raises JobDefinitionError for a bad
    combination or value, NotFoundError for an unknown job.
    """
    given = [k for k, v in (("interval", interval), ("cron", cron)) if v is not None]
    if clear and (given or timezone is not None):
        raise JobDefinitionError("clear takes no interval, cron or timezone")
    if not clear and len(given) != 1:
        raise JobDefinitionError("give exactly one of interval or cron (or clear)")
    if timezone is not None and cron is None:
        raise JobDefinitionError("timezone applies to a cron schedule only")
    if cron is not None and len(cron) > 200:
        raise JobDefinitionError("cron expression is longer than 200 characters")
    if timezone is not None and len(timezone) > 64:
        raise JobDefinitionError("timezone is longer than 64 characters")
    period = None if interval is None else _interval(interval)
    effective.validate_override(period, cron, timezone)
    row = store.jobs.set_schedule(name, actor, now, interval=period, cron=cron, timezone=timezone)
    return job_view(row, store.runs.latest_per_job().get(name), store.runs.last_slots().get(name), now)


def _interval(value: str | float) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise JobDefinitionError(f"bad interval {value!r}: use seconds or text like 5m")
    try:
        period = timedelta(seconds=value) if isinstance(value, int | float) else parse_interval(value)
    except (OverflowError, ValueError):
        raise JobDefinitionError(f"bad interval {value!r}: out of range") from None
    if period < MIN_INTERVAL:
        raise JobDefinitionError(
            f"interval must be at least {MIN_INTERVAL.total_seconds():g}s, got {value!r}"
        )
    return period
