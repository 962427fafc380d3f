"""What is wrong, as pure functions of a snapshot: no clock reads, no I/O.

Each function maps database facts (job rows, run facts, live instances) and
`now` to findings; the watchdog turns findings into incident transitions.

Defaults chosen:
- grace: the definition's `grace_seconds`, else half the job's period clamped
  to [60 s, 1 h], plus its jitter. A job is delayed when its latest slot whose
  grace has run out has not started, inactive when it never ran at all.
- failing: `alert_after_failures` (default 1) failed or timed-out runs in a
  row; an abandoned run (its instance was lost) neither counts nor resets.
- overrunning: a run still running past its timeout, or without one past its
  period plus grace (it is eating into the next slot).
- skipping: `skip_alert_after` (default 3) slots in a row recorded `skipped`.
- late: `alert_group_after` (default 5) or more jobs newly delayed or inactive
  in one pass give one grouped finding instead of one each.
- overloaded: slots recorded `missed` with an error starting 'overloaded:' (the
  dispatcher fell behind) in the last few minutes, per instance.
- paused: a job the crash-loop guard paused, until someone resumes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler.alerting.record import Finding, format_utc
from scheduler.engine.guard import AUTO_PAUSE_ACTOR
from scheduler.jobs.effective import schedule_of
from scheduler.jobs.schedules import Schedule, format_interval
from scheduler.store import InstanceRow, JobRow
from scheduler.store.history import RunRow
from scheduler.store.runfacts import Activity, Overload

SCHEDULER = "scheduler"  # the subject of incidents about the scheduler as a whole
MIN_GRACE = timedelta(seconds=60)
MAX_GRACE = timedelta(hours=1)
# A job row synced this recently may belong to an instance that is still registering.
LOAD_SETTLE = timedelta(seconds=30)
MAX_STREAK = 100
LATE_KINDS = ("delayed", "inactive")
GROUP_LIST = 20  # job names listed in a grouped message; the rest are counted
_STDLIB = re.compile(r'File "[^"]*/lib/python3\.\d+/(?!site-packages/)')


@dataclass
class LatenessMemo:
    """Lateness answers kept between passes, per job: asked again only when the job row
    (by identity: the watchdog keeps unchanged rows) or its last start changed, or when
    its expected slot moved. Most of 10,000 jobs are not near a deadline at any pass."""

    entries: dict[str, tuple[JobRow, datetime | None, datetime, Finding | None]] = field(default_factory=dict)

    def lateness(self, row: JobRow, last_started: datetime | None, now: datetime) -> Finding | None:
        entry = self.entries.get(row.name)
        if entry is not None and entry[0] is row and entry[1] == last_started and now < entry[2]:
            return entry[3]
        finding, recheck = _lateness(row, last_started, now)
        self.entries[row.name] = (row, last_started, recheck, finding)
        return finding

    def keep_only(self, names: set[str]) -> None:
        for gone in self.entries.keys() - names:
            del self.entries[gone]


@dataclass(frozen=True)
class Snapshot:
    now: datetime
    jobs: list[JobRow]
    activity: Activity
    alive: list[InstanceRow]
    skip_alert_after: int = 3
    memo: LatenessMemo | None = None


def period_at(schedule: Schedule, slot: datetime) -> timedelta:
    """The gap from `slot` to the slot after it."""
    return schedule.next_after(slot) - slot


def grace_for(row: JobRow, period: timedelta) -> timedelta:
    """The definition's `grace_seconds`, else half the period clamped to [60 s, 1 h], plus jitter."""
    explicit = row.definition.get("grace_seconds")
    if explicit is not None:
        return timedelta(seconds=float(explicit))
    jitter = timedelta(seconds=float(row.definition.get("jitter_seconds") or 0))
    return min(max(MIN_GRACE, period / 2), MAX_GRACE) + jitter


def lateness(row: JobRow, last_started: datetime | None, now: datetime) -> Finding | None:
    """Delayed (its latest slot past grace has not started) or inactive (it never ran).

    Only slots after the definition last changed (`updated_at`: code change,
    pause, resume or schedule override) count.
    """
    return _lateness(row, last_started, now)[0]


def _lateness(row: JobRow, last_started: datetime | None, now: datetime) -> tuple[Finding | None, datetime]:
    """The finding, and the instant before which it cannot change (the row and last start unchanged)."""
    schedule = schedule_of(row)
    first = schedule.next_after(row.updated_at)
    latest = schedule.previous_before(now) or first
    grace = grace_for(row, period_at(schedule, latest))
    expected = schedule.previous_before(now - grace + timedelta(microseconds=1))
    # `expected` moves when the next slot's grace runs out, and the grace (of a cron job)
    # may change once the next slot has passed: until the earlier, the answer stands.
    tick = timedelta(microseconds=1)
    recheck = min(schedule.next_after(now - grace) + grace - tick, schedule.next_after(now - tick) + tick)
    return _late(row, schedule, first, grace, expected, last_started), recheck


def _late(
    row: JobRow,
    schedule: Schedule,
    first: datetime,
    grace: timedelta,
    expected: datetime | None,
    last_started: datetime | None,
) -> Finding | None:
    if expected is None or expected < first:
        return None
    action = f"scheduler history {row.name}"
    details = {"expected_at": expected.isoformat(), "grace_seconds": grace.total_seconds()}
    if last_started is None:
        summary = f"has never run; its first run was due at {format_utc(first)} (grace {span(grace)})"
        return Finding(row.name, "inactive", summary, first, action=action, details=details)
    if last_started >= expected:
        return None
    missed = schedule.next_after(max(last_started, row.updated_at))
    summary = (
        f"last run started {format_utc(last_started)}; the run due at {format_utc(missed)} "
        f"has not started (grace {span(grace)})"
    )
    details["last_started_at"] = last_started.isoformat()
    return Finding(row.name, "delayed", summary, missed, action=action, details=details)


def failing(
    row: JobRow, outcomes: list[RunRow], failures: int | None = None, at_least: bool = False
) -> Finding | None:
    """`alert_after_failures` failed or timed-out runs in a row, newest first in `outcomes`.

    `failures` is the length of the streak when it is known beyond `outcomes`
    (the watchdog counts it as runs end); `at_least`: it may be longer.
    """
    threshold = max(1, int(row.definition.get("alert_after_failures") or 1))
    streak = []
    for run in outcomes:
        if run.status == "succeeded":
            break
        streak.append(run)
    if not streak:
        return None
    total = max(len(streak), failures or 0)
    if total < threshold:
        return None
    latest, first = streak[0], streak[-1]
    at_least = at_least or (failures is None and len(streak) == len(outcomes) == MAX_STREAK)
    count = f"{total}+" if at_least else str(total)
    summary = f"the last {count} runs failed" if total > 1 else "the last run failed"
    summary += f" (alerts after {threshold}); latest: run {latest.id} {latest.status}"
    error = ": ".join(p for p in (latest.error_type, latest.error_message) if p) or latest.status
    return Finding(
        row.name,
        "failing",
        summary,
        first.finished_at or first.scheduled_for,
        host=latest.host,
        last_error=error,
        action=f"scheduler history {row.name}",
        details={"run_id": latest.id, "failures": total, "threshold": threshold},
    )


def overrunning(row: JobRow, run: RunRow, now: datetime) -> Finding | None:
    """A run still running past its timeout, or (without one) past its next slot plus grace."""
    if run.started_at is None:
        return None
    timeout = row.definition.get("timeout_seconds")
    if timeout:
        limit = timedelta(seconds=float(timeout))
        reason = f"its timeout of {span(limit)}"
    else:
        period = period_at(schedule_of(row), run.scheduled_for)
        limit = period + grace_for(row, period)
        reason = f"its period plus grace ({span(limit)}; no timeout set)"
    running_for = now - run.started_at
    if running_for <= limit:
        return None
    summary = f"run {run.id} has been running for {span(running_for)}, longer than {reason}"
    details: dict[str, Any] = {"run_id": run.id, "limit_seconds": limit.total_seconds()}
    stuck = None
    if run.error_traceback:  # a thread run stuck well past its timeout: the runner noted its stack
        details["stack"] = run.error_traceback
        stuck = "stuck at " + innermost_frame(run.error_traceback)
        summary += f"; its thread is {stuck}"
    return Finding(
        row.name, "overrunning", summary, run.started_at, host=run.host, last_error=stuck, details=details
    )


def innermost_frame(stack: str) -> str:
    """`File "x.py", line 3, in f: code`: the innermost frame of a formatted stack outside the
    standard library (a job waiting in `threading` is stuck where it called it)."""
    lines = [line.strip() for line in stack.strip().splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if line.startswith("File ")]
    if not frames:
        return lines[-1] if lines else "?"
    own = [i for i in frames if not _STDLIB.search(lines[i])]
    last = (own or frames)[-1]
    code = lines[last + 1] if last + 1 < len(lines) else ""
    return f"{lines[last]}: {code}" if code else lines[last]


def auto_paused(row: JobRow, outcomes: list[RunRow]) -> Finding | None:
    """A job paused by the crash-loop guard (not by a person): it stays off until resumed."""
    if not row.paused or row.changed_by != AUTO_PAUSE_ACTOR:
        return None
    since = row.changed_at or row.updated_at
    latest = outcomes[0] if outcomes else None
    error = ": ".join(p for p in (latest.error_type, latest.error_message) if p) if latest else None
    summary = f"paused by the crash-loop guard at {format_utc(since)} after failing run after run"
    return Finding(
        row.name, "paused", summary, since, last_error=error, action=f"scheduler resume {row.name}"
    )


def skipping(row: JobRow, streak: int, threshold: int, newest: datetime | None) -> Finding | None:
    """`threshold` slots in a row recorded `skipped`: its runs take longer than its period."""
    if streak < threshold or newest is None:
        return None
    period = span(period_at(schedule_of(row), newest))
    count = f"{streak}+" if streak > MAX_STREAK else str(streak)
    summary = (
        f"the last {count} slots were skipped because a run was still going "
        f"(alerts after {threshold}): its runs take longer than its period of {period}"
    )
    action = f"scheduler history {row.name}; lengthen its interval or shorten its runs"
    details = {"skipped": streak, "threshold": threshold}
    return Finding(row.name, "skipping", summary, newest, action=action, details=details)


def overloaded(overloads: list[Overload], window: timedelta) -> list[Finding]:
    """Instances that recorded slots as lost because they fell behind, in the last `window`."""
    findings = []
    for o in overloads:
        summary = (
            f"{o.host} lost {o.count} slots in the last {span(window)} because it fell behind "
            f"(latest {format_utc(o.latest)})"
        )
        findings.append(
            Finding(
                o.host,
                "overloaded",
                summary,
                o.latest,
                host=o.host,
                last_error=o.error,
                action="scheduler history --status missed; add instances or spread the jobs",
                details={"lost": o.count},
            )
        )
    return findings


def group_late(findings: list[Finding], open_keys: set[tuple[str, str]], threshold: int) -> list[Finding]:
    """Many jobs late at once (a start-up, a stall) become one "late" incident listing them.

    Late jobs already alerted one by one keep their incidents; the new ones are
    folded into the group while it is open, and the group closes when none is left.
    """
    group_key = (SCHEDULER, "late")
    late = [f for f in findings if f.kind in LATE_KINDS and f.key not in open_keys]
    if not late or (len(late) < threshold and group_key not in open_keys):
        return findings
    names = sorted(f.subject for f in late)
    listed = ", ".join(names[:GROUP_LIST])
    more = f" and {len(names) - GROUP_LIST} more" if len(names) > GROUP_LIST else ""
    summary = f"{len(names)} jobs are late: {listed}{more}"
    group = Finding(
        SCHEDULER,
        "late",
        summary,
        min(f.since for f in late),
        action="scheduler jobs",
        details={"jobs": names[:200], "count": len(names)},
    )
    return [f for f in findings if f.kind not in LATE_KINDS or f.key in open_keys] + [group]


def broken(jobs: list[JobRow], alive: list[InstanceRow], now: datetime) -> list[Finding]:
    """Job modules that failed to import on a live instance; jobs no live instance loaded."""
    if not alive:
        return []  # "no live instance" says it all
    problems: dict[str, tuple[str, list[str]]] = {}
    for inst in alive:
        for problem in inst.problems:
            where, message = str(problem.get("where", "?")), str(problem.get("message", ""))
            problems.setdefault(where, (message, []))[1].append(inst.host)
    loaded = {name for inst in alive for name in inst.jobs}
    stems = {Path(where).stem: where for where in problems}
    orphans: dict[str, list[str]] = {}
    findings = []
    for row in jobs:
        if row.name in loaded or now - (row.loaded_at or row.defined_at) < LOAD_SETTLE:
            continue
        module = str(row.definition.get("module", "")).rsplit(".", 1)[-1]
        if module in stems:
            orphans.setdefault(stems[module], []).append(row.name)
            continue
        summary = f"defined in the database but loaded by none of the {len(alive)} live instances"
        action = "deploy its module to the instances, or remove the job from the database"
        findings.append(Finding(row.name, "broken", summary, row.loaded_at or row.defined_at, action=action))
    for where, (message, hosts) in sorted(problems.items()):
        summary = f"failed to load on {', '.join(sorted(set(hosts)))}"
        if where in orphans:
            summary += f"; not running: {', '.join(sorted(orphans[where]))}"
        details = {"jobs": sorted(orphans.get(where, []))}
        findings.append(
            Finding(
                where, "broken", summary, now, last_error=message, action="scheduler check", details=details
            )
        )
    return findings


def detect_jobs(snap: Snapshot) -> list[Finding]:
    """Every job finding in a snapshot. Paused and disabled jobs are never delayed or inactive."""
    loaded = {name for inst in snap.alive for name in inst.jobs}
    running = {run.job for run in snap.activity.running}
    rows = {row.name: row for row in snap.jobs}
    found: dict[tuple[str, str], Finding] = {}
    late = lateness if snap.memo is None else snap.memo.lateness
    if snap.memo is not None:
        snap.memo.keep_only(set(rows))

    def add(finding: Finding | None) -> None:
        if finding is not None:
            found.setdefault(finding.key, finding)

    for row in snap.jobs:
        if row.name in loaded and row.name not in running and not row.paused:
            if row.definition.get("enabled", True):
                add(late(row, snap.activity.last_started.get(row.name), snap.now))
        failures = snap.activity.failures.get(row.name)
        at_least = row.name in snap.activity.failures_at_least
        add(failing(row, snap.activity.outcomes.get(row.name, []), failures, at_least))
        streak = snap.activity.skipped.get(row.name, 0)
        add(skipping(row, streak, snap.skip_alert_after, snap.activity.newest.get(row.name)))
        add(auto_paused(row, snap.activity.outcomes.get(row.name, [])))
    for run in snap.activity.running:
        if run.job in rows:
            add(overrunning(rows[run.job], run, snap.now))
    for finding in broken(snap.jobs, snap.alive, snap.now):
        add(finding)
    return list(found.values())


def no_instance(alive: list[InstanceRow], known: list[InstanceRow], now: datetime) -> Finding | None:
    """No instance heartbeats; `known` are recent instance rows, for the last heartbeat seen."""
    if alive:
        return None
    if not known:
        return Finding(SCHEDULER, "instance", "no scheduler instance has ever registered", now)
    last = max(known, key=lambda inst: inst.heartbeat_at)
    summary = f"no scheduler instance is alive; the last heartbeat came from {last.host} (pid {last.pid})"
    return Finding(SCHEDULER, "instance", summary, last.heartbeat_at, host=last.host)


def span(delta: timedelta) -> str:
    """A duration for people: 45s, 2m, 1h."""
    return format_interval(timedelta(seconds=max(1, round(delta.total_seconds()))))
