"""The dashboard's jobs list: each job's state, then filter, sort and one page of it.

Built from light reads (job rows, each job's latest run without its log), so
10,000 jobs cost one pass; the status strips are read for the shown page only.
A job's state, as the filter names it:

- failing: its latest run failed, timed out or was abandoned;
- never-run: no run recorded;
- late: its next slot is past its grace and has not started;
- skipping: its latest SKIP_STREAK slots were all skipped (its runs outlast its period);
- paused; disabled (in its code); else active.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from scheduler.errors import JobDefinitionError
from scheduler.jobs import effective
from scheduler.operator.web.openapi import JOB_SORTS, JOB_STATES
from scheduler.store import JobRow, RunBrief, Store

PAGE_SIZE = 50
STRIP_RUNS = 20  # runs in each job's mini strip on the list
SKIP_STREAK = 3
FAILED = frozenset({"failed", "timed_out", "abandoned"})
DEFAULT_GRACE = timedelta(minutes=1)


@dataclass(frozen=True)
class Filter:
    """What the jobs list shows; `parse` checks a request's query parameters."""

    text: str = ""
    state: str = ""
    sort: str = "name"
    page: int = 1

    @classmethod
    def parse(cls, text: str | None, state: str | None, sort: str | None, page: str | None) -> Filter:
        """Raises JobDefinitionError naming a bad parameter."""
        if state and state not in JOB_STATES:
            raise JobDefinitionError(f"state must be one of {', '.join(JOB_STATES)}; got {state[:40]!r}")
        if sort and sort not in JOB_SORTS:
            raise JobDefinitionError(f"sort must be one of {', '.join(JOB_SORTS)}; got {sort[:40]!r}")
        number = 1
        if page is not None:
            if not page.isdigit() or not 1 <= int(page) <= 1_000_000:
                raise JobDefinitionError(f"page must be a whole number from 1; got {page[:40]!r}")
            number = int(page)
        return cls((text or "").strip()[:200], state or "", sort or "name", number)


@dataclass(frozen=True)
class JobLine:
    """One job as the list shows it."""

    name: str
    schedule: str
    state: str  # the filter's states, the worst one that applies
    paused: bool
    enabled: bool
    next_at: datetime | None
    zone: str
    last: RunBrief | None
    strip: tuple[RunBrief, ...] = ()
    isolated: bool = False  # its runs go to a child process (isolation="process")


@dataclass(frozen=True)
class Listing:
    lines: list[JobLine]
    total: int  # jobs known
    matched: int  # jobs the filter keeps
    page: int
    pages: int
    filter: Filter


def job_state(row: JobRow, last: RunBrief | None, next_at: datetime | None, now: datetime) -> str:
    if not row.definition.get("enabled", True):
        return "disabled"
    if row.paused:
        return "paused"
    if last is not None and last.status in FAILED:
        return "failing"
    if last is None:  # as the watchdog's "inactive": never ran, whether or not a slot is due
        return "never-run"
    if next_at is not None and next_at + _grace(row) < now:
        return "late"
    return "active"


def isolated(row: JobRow, default_isolation: str) -> bool:
    """True if the job's runs go to a child process: its stored `isolation`, else the default."""
    return (row.definition.get("isolation") or default_isolation) == "process"


def _grace(row: JobRow) -> timedelta:
    seconds = row.definition.get("grace_seconds")
    return timedelta(seconds=float(seconds)) if seconds else DEFAULT_GRACE


def skipping(strip: tuple[RunBrief, ...] | list[RunBrief]) -> bool:
    """True if the newest SKIP_STREAK scheduled slots were all skipped."""
    slots = [r for r in strip if r.trigger != "manual"][:SKIP_STREAK]
    return len(slots) == SKIP_STREAK and all(r.status == "skipped" for r in slots)


def build(
    store: Store,
    now: datetime,
    wanted: Filter,
    rows: list[JobRow] | None = None,
    page_size: int = PAGE_SIZE,
    default_isolation: str = "thread",
) -> Listing:
    """The page of jobs `wanted` asks for, with their strips; `rows` are every job's row (read
    here if not given). Raises StoreUnavailable."""
    rows = store.jobs.all() if rows is None else rows
    latest = store.runs.latest_briefs()
    slots = store.runs.last_slots()
    lines = []
    for row in rows:
        next_at = effective.next_run_at(row, slots.get(row.name), now)
        last = latest.get(row.name)
        lines.append(
            JobLine(
                row.name,
                effective.schedule_of(row).describe(),
                job_state(row, last, next_at, now),
                row.paused,
                bool(row.definition.get("enabled", True)),
                next_at,
                effective.zone_of(row),
                last,
                isolated=isolated(row, default_isolation),
            )
        )
    lines = _mark_skipping(store, lines)
    kept = [line for line in lines if wanted.text.lower() in line.name.lower()]
    if wanted.state:
        kept = [line for line in kept if line.state == wanted.state]
    kept.sort(key=_sort_key(wanted.sort))
    pages = max(1, -(-len(kept) // page_size))
    page = min(wanted.page, pages)
    shown = kept[(page - 1) * page_size : page * page_size]
    strips = store.runs.recent_per_job([line.name for line in shown], STRIP_RUNS)
    shown = [_with_strip(line, tuple(strips.get(line.name, []))) for line in shown]
    return Listing(shown, len(lines), len(kept), page, pages, wanted)


def _mark_skipping(store: Store, lines: list[JobLine]) -> list[JobLine]:
    """Active jobs whose latest run was skipped, and the slots before it too, become `skipping`."""
    candidates = [
        line.name for line in lines if line.state == "active" and line.last and line.last.status == "skipped"
    ]
    recent = store.runs.recent_per_job(candidates, SKIP_STREAK * 2)
    return [
        replace(line, state="skipping") if skipping(recent.get(line.name, [])) else line for line in lines
    ]


def _with_strip(line: JobLine, strip: tuple[RunBrief, ...]) -> JobLine:
    return replace(line, strip=strip)


STATE_ORDER = {s: i for i, s in enumerate(("failing", "late", "skipping", "never-run", "paused", "active"))}


def _sort_key(sort: str) -> Any:
    far = datetime.max.replace(tzinfo=None)
    if sort == "next":
        return lambda line: (line.next_at is None, line.next_at.replace(tzinfo=None) if line.next_at else far)
    if sort == "last":  # most recent first; never run last
        return lambda line: (line.last is None, -(line.last.scheduled_for.timestamp() if line.last else 0))
    if sort == "status":
        return lambda line: (STATE_ORDER.get(line.state, len(STATE_ORDER)), line.name)
    return lambda line: line.name
