"""The dashboard pages' data: what each page reads from the store, handed to its renderer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scheduler.cluster.health import HealthReport
from scheduler.operator import queries as views
from scheduler.operator.catalog import JobCatalog
from scheduler.operator.web import dashboard, listing, pages
from scheduler.store import Store

JOB_PAGE_RUNS = 50  # runs in a job page's strip and chart


def front_page(
    store: Store,
    catalog: JobCatalog,
    health: HealthReport,
    now: datetime,
    wanted: listing.Filter,
    writable: bool,
    default_isolation: str = "thread",
) -> str:
    """Raises StoreUnavailable."""
    return dashboard.render_page(
        listing=listing.build(store, now, wanted, catalog.rows(), default_isolation=default_isolation),
        runs=views.list_runs(store, limit=25),
        instances=views.list_instances(store, now, limit=10),
        alerts=views.list_alerts(store, True, 20),
        health=health,
        now=now,
        writable=writable,
    )


def job_page(
    store: Store, name: str, now: datetime, writable: bool, default_isolation: str = "thread"
) -> str:
    """Raises NotFoundError, StoreUnavailable."""
    job = views.show_job(store, name, now, recent=1)
    runs = store.runs.recent_per_job([name], JOB_PAGE_RUNS)[name]
    row = store.jobs.get(name)
    state = listing.job_state(row, runs[0] if runs else None, _next_at(job), now)
    if state == "active" and listing.skipping(runs):
        state = "skipping"
    incidents = [i for i in views.list_alerts(store, False, 500) if i.get("subject") == name]
    return pages.render_job(
        job=job,
        state=state,
        isolated=listing.isolated(row, default_isolation),
        runs=runs,
        slots=[] if job["paused"] or not job["enabled"] else views.next_slots(store, name, now, 5)["slots"],
        incidents=incidents[:20],
        audit=views.list_audit(store, name, 20),
        now=now,
        writable=writable,
    )


def _next_at(job: dict[str, Any]) -> datetime | None:
    slot = job["next_run"]
    return datetime.fromisoformat(slot["at"]) if slot else None
