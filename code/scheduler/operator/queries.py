"""The read side shared by the CLI, the HTTP API, the dashboard and metrics.

`scheduler jobs --json` and `GET /api/jobs` return the same plain dicts, built
here from store rows, so a script can move between them. Instants are ISO 8601
UTC strings; a job's next run is also given in the job's own time zone. The
writes (trigger, pause, resume, set schedule) are in `scheduler.operator.actions`.

The next run is computed from the database alone by `scheduler.jobs.effective`,
which the dispatcher uses too: the effective schedule's first slot after the
job's cursor (its latest recorded slot, or when it was defined, or when it was
last resumed or rescheduled).
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from scheduler.errors import JobDefinitionError
from scheduler.jobs import effective
from scheduler.store.reads import RUN_STATUSES, JobRow, Reader, RunRow

if TYPE_CHECKING:  # the read commands on SQLite import this module without SQLAlchemy
    from scheduler.store import AuditEntry, InstanceRow, Store

MAX_LIMIT = 1000
MAX_SLOTS = 100


def iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


# -- jobs -----------------------------------------------------------------


def slot_view(at: datetime, zone: str) -> dict[str, Any]:
    local = at.astimezone(ZoneInfo(zone))
    return {"at": iso(at), "local": local.isoformat(), "zone": zone, "abbreviation": local.tzname()}


def job_view(row: JobRow, last: RunRow | None, last_slot: datetime | None, now: datetime) -> dict[str, Any]:
    zone = effective.zone_of(row)
    upcoming_at = effective.next_run_at(row, last_slot, now)
    return {
        "name": row.name,
        "schedule": effective.schedule_of(row).describe(),
        "code_schedule": row.schedule_text,
        "overridden": row.overridden,
        "timezone": zone,
        "enabled": bool(row.definition.get("enabled", True)),
        "paused": row.paused,
        "next_run": slot_view(upcoming_at, zone) if upcoming_at else None,
        "due": upcoming_at is not None and upcoming_at <= now,
        "last_run": run_view(last) if last else None,
        "last_status": last.status if last else None,
        "changed_by": row.changed_by,
        "changed_at": iso(row.changed_at),
        "loaded_at": iso(row.loaded_at),
    }


def list_jobs(store: Reader, now: datetime) -> list[dict[str, Any]]:
    latest = store.runs.latest_per_job()
    slots = store.runs.last_slots()
    return [job_view(r, latest.get(r.name), slots.get(r.name), now) for r in store.jobs.all()]


def show_job(store: Reader, name: str, now: datetime, recent: int = 10) -> dict[str, Any]:
    """One job with its definition, overrides and recent runs. Raises NotFoundError."""
    row = store.jobs.get(name)
    runs = store.runs.history(job=name, limit=recent)
    view = job_view(row, runs[0] if runs else None, store.runs.last_slots().get(name), now)
    view.update(
        definition=row.definition,
        override={
            "interval_seconds": row.override_interval_seconds,
            "cron": row.override_cron,
            "timezone": row.override_timezone,
        },
        anchor_at=iso(row.anchor_at),
        defined_at=iso(row.defined_at),
        updated_at=iso(row.updated_at),
        recent_runs=[run_view(r) for r in runs],
    )
    return view


def next_slots(store: Reader, name: str, now: datetime, count: int) -> dict[str, Any]:
    """The next `count` slots of a job, in UTC and in its zone. Raises NotFoundError."""
    if not 1 <= count <= MAX_SLOTS:
        raise JobDefinitionError(f"count must be 1-{MAX_SLOTS}, got {count}")
    row = store.jobs.get(name)
    zone = effective.zone_of(row)
    slots = effective.upcoming(row, store.runs.last_slots().get(name), now, count)
    return {
        "job": name,
        "schedule": effective.schedule_of(row).describe(),
        "timezone": zone,
        "paused": row.paused,
        "enabled": bool(row.definition.get("enabled", True)),
        "slots": [slot_view(s, zone) for s in slots],
    }


# -- runs, instances, audit -------------------------------------------------


def run_view(run: RunRow, with_log: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": run.id,
        "job": run.job,
        "scheduled_for": iso(run.scheduled_for),
        "trigger": run.trigger,
        "status": run.status,
        "attempt": run.attempt,
        "instance": run.owner,
        "host": run.host,
        "pid": run.pid,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_seconds": run.duration_seconds,
        "lateness_seconds": run.lateness_seconds,
        "error_type": run.error_type,
        "error_message": run.error_message,
    }
    if with_log:
        view.update(log=run.log, log_truncated=run.log_truncated, error_traceback=run.error_traceback)
    return view


def list_runs(
    store: Reader, job: str | None = None, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Recent runs, newest slot first. Raises JobDefinitionError for a bad filter."""
    if status is not None and status not in RUN_STATUSES:
        raise JobDefinitionError(f"status must be one of {', '.join(RUN_STATUSES)}; got {status!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise JobDefinitionError(f"limit must be 1-{MAX_LIMIT}, got {limit}")
    if job is not None:
        store.jobs.get(job)  # a typo in the name is an error, not an empty history
    return [run_view(r) for r in store.runs.history(job=job, status=status, limit=limit)]


def show_run(store: Reader, run_id: int) -> dict[str, Any]:
    """Raises NotFoundError."""
    return run_view(store.runs.get(run_id), with_log=True)


def instance_view(row: InstanceRow, leader: str | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "host": row.host,
        "pid": row.pid,
        "version": row.version,
        "status": row.status,
        "leader": row.id == leader,
        "started_at": iso(row.started_at),
        "heartbeat_at": iso(row.heartbeat_at),
        "expires_at": iso(row.expires_at),
        "stopped_at": iso(row.stopped_at),
        "jobs": list(row.jobs),
        "problems": list(row.problems),
    }


def list_instances(store: Store, now: datetime, limit: int = 50) -> list[dict[str, Any]]:
    """Recent instances, newest first; `leader` marks the holder of a valid leader lease."""
    from scheduler.store.cluster import LEADER

    lease = store.cluster.lease(LEADER)
    leader = None
    if lease is not None and lease.holder and lease.expires_at is not None and lease.expires_at >= now:
        leader = lease.holder
    return [instance_view(r, leader) for r in store.cluster.recent(limit)]


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "job": entry.job,
        "details": entry.details,
    }


def list_audit(store: Store, job: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    if not 1 <= limit <= MAX_LIMIT:
        raise JobDefinitionError(f"limit must be 1-{MAX_LIMIT}, got {limit}")
    return [audit_view(e) for e in store.jobs.audit_log(job, limit)]


def list_alerts(store: Store, open_only: bool = True, limit: int = 50) -> list[dict[str, Any]]:
    """Incidents raised by the watchdog, newest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise JobDefinitionError(f"limit must be 1-{MAX_LIMIT}, got {limit}")
    return [plain(i) for i in store.incidents.incidents(open_only, limit)]


def plain(value: Any) -> Any:
    """A dataclass, mapping or list as JSON-able values (datetimes as ISO strings)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
