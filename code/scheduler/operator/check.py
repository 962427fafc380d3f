"""`scheduler check`: load the job modules and the database as the daemon would, and say what was found.

Every job found is listed with its module, schedule and next slot, so that
nothing can vanish unseen; a module that declares no job is a warning; a
module that fails to load, or a database that does not answer, is an error
(exit 1). `--json` gives the same as one object.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler import writable
from scheduler.config import Settings
from scheduler.errors import SchedulerError
from scheduler.jobs import effective
from scheduler.jobs.discovery import LoadResult, load_jobs
from scheduler.jobs.registry import JobSpec, module_label
from scheduler.redact import redact_url
from scheduler.store import JobRow, Store

EXIT_OK, EXIT_FAIL = 0, 1


def run(settings: Settings, as_json: bool, now: datetime | None = None) -> int:
    """Print the report; returns the exit code."""
    now = now or datetime.now(UTC)
    result = load_jobs(settings.jobs_path)
    database = _database(settings)
    jobs = [
        _job_entry(spec, database.get("rows", {}), database.get("last_slots", {}), now, settings)
        for spec in result.specs.values()
    ]
    report: dict[str, Any] = {
        "jobs": jobs,
        "problems": [{"where": p.where, "message": p.message} for p in result.problems],
        "warnings": [{"where": w.where, "message": w.message} for w in result.warnings],
        "modules": {module_label(m): names for m, names in result.modules.items()},
        "database": {k: v for k, v in database.items() if k not in ("rows", "last_slots")},
    }
    failed = bool(result.problems) or "error" in database
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report, result)
    return EXIT_FAIL if failed else EXIT_OK


def _job_entry(
    spec: JobSpec,
    rows: dict[str, JobRow],
    last_slots: dict[str, datetime],
    now: datetime,
    settings: Settings,
) -> dict[str, Any]:
    row = rows.get(spec.name)
    if row is not None:  # known to the database: overrides, pause and cursor count
        schedule = effective.schedule_of(row).describe()
        next_at = effective.next_run_at(row, last_slots.get(spec.name), now)
        paused = row.paused
    else:  # new: its first slot if the daemon started now
        anchor = (now + timedelta(seconds=1)).replace(microsecond=0)
        schedule, paused = spec.describe(), False
        next_at = spec.schedule(anchor).next_after(now) if spec.enabled else None
        if next_at is not None and spec.first_run == "interval" and spec.interval is not None:
            next_at += spec.interval
    entry: dict[str, Any] = {
        "name": spec.name,
        "module": module_label(spec.module),
        "schedule": schedule,
        "enabled": spec.enabled,
        "paused": paused,
        "next_run": next_at.isoformat() if next_at else None,
    }
    entry["isolation"] = "process" if spec.isolated(settings.default_isolation) else "thread"
    return entry


def _database(settings: Settings) -> dict[str, Any]:
    """What check says of the database, with the job rows and cursors if it has them."""
    sqlite_file = _sqlite_file(settings)
    if sqlite_file is not None and not sqlite_file.exists():
        why = writable.problem(sqlite_file.parent)
        if why is not None:  # the daemon could not create it either
            return {"url": str(sqlite_file), "error": why, "state": "cannot be created"}
        return {"url": redact_url(settings.database_url), "state": "not created yet: the daemon creates it"}
    store = Store(settings.database_url)
    try:
        current, head = store.db.current_revision(), store.db.head_revision()
        facts: dict[str, Any] = {"url": store.safe_url, "revision": current, "code_revision": head}
        if current == head:
            facts["rows"] = {r.name: r for r in store.jobs.all()}
            facts["last_slots"] = store.runs.last_slots()
        return facts
    except SchedulerError as exc:
        return {"url": store.safe_url, "error": str(exc)}
    finally:
        store.dispose()


def _sqlite_file(settings: Settings) -> Path | None:
    """The SQLite database file, or None (PostgreSQL, or an in-memory database)."""
    path = settings.database_url.split(":///", 1)[-1] if settings.is_sqlite else ""
    return Path(path) if path and path != ":memory:" else None


def _print_text(report: dict[str, Any], result: LoadResult) -> None:
    for job in report["jobs"]:
        state = "" if job["enabled"] else " (disabled)"
        state += " (paused)" if job["paused"] else ""
        state += " (process isolation)" if job["isolation"] == "process" else ""
        where = f"module {job['module']}, next {job['next_run'] or 'never'}"
        print(f"ok    {job['name']}: {job['schedule']}{state}; {where}")
    for warning in result.warnings:
        print(f"warn  {warning}")
    for problem in result.problems:
        print(f"error {problem}")
    database = report["database"]
    summary = f"{len(report['jobs'])} jobs, {len(report['problems'])} problems"
    if report["warnings"]:
        summary += f", {len(report['warnings'])} warnings"
    if "error" in database:
        print(f"error database {database['url']}: {database['error']}")
        if database.get("state") == "cannot be created":
            print(f"{summary}; database {database['url']} cannot be created")
        return
    if database.get("revision") not in (None, database.get("code_revision")):
        print(
            f"note  database schema {database['revision']}, code {database['code_revision']}: "
            "run 'db upgrade' or start the daemon"
        )
    state = f" ({database['state']})" if "state" in database else ""
    print(f"{summary}; database {database['url']}{state}")
