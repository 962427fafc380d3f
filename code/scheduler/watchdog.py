"""The watchdog: delayed, inactive, failing, overrunning and broken jobs, and the scheduler itself.

Each check reads one snapshot from the database (so it sees every instance's
work), turns it into findings with pure functions, and compares them with the
open incidents: a new finding opens an incident, a finding that went away
closes one. Only transitions queue a Slack notice (in the same transaction,
see `store.alerts`), so an incident that lasts sends nothing more, and a
restart or a new leader neither repeats nor loses a message.

Job checks run on the leader only (a coordinator chore). The checks of the
scheduler itself run on every instance, since the leader may be the one that
is gone: no live instance, and this instance cut off from the database. The
database incident cannot be written while the database is away, so its
opening message is sent directly and the incident is recorded, with its
recovery notice, once the database answers again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler.clock import Clock, SystemClock
from scheduler.config import Settings
from scheduler.errors import SchedulerError
from scheduler.health import Health
from scheduler.notify import Alert, Notifier, TransportError, build_payload, format_utc, make_notifier
from scheduler.outbox import OutboxSender
from scheduler.schedules import Schedule, format_interval
from scheduler.store import InstanceRow, JobRow, Store
from scheduler.store.alerts import Activity, IncidentRow

log = logging.getLogger(__name__)

JOB_KINDS = ("delayed", "inactive", "failing", "overrunning", "broken")
SCHEDULER = "scheduler"  # the subject of incidents about the scheduler as a whole
MIN_GRACE = timedelta(seconds=60)
MAX_GRACE = timedelta(hours=1)
# A job row synced this recently may belong to an instance that is still registering.
LOAD_SETTLE = timedelta(seconds=30)
MAX_STREAK = 100
LOOP_WAIT = 1.0


@dataclass(frozen=True)
class Finding:
    """Something wrong now; becomes an incident keyed by (subject, kind)."""

    subject: str
    kind: str
    summary: str
    since: datetime
    host: str | None = None
    last_error: str | None = None
    action: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.kind)

    def stored_details(self) -> dict[str, Any]:
        extra = {"since": self.since.isoformat(), "host": self.host, "last_error": self.last_error}
        return {**self.details, **{k: v for k, v in extra.items() if v is not None}}


@dataclass(frozen=True)
class Snapshot:
    now: datetime
    jobs: list[JobRow]
    activity: Activity
    alive: list[InstanceRow]


@dataclass(frozen=True)
class Plan:
    opens: list[Finding]
    closes: list[IncidentRow]
    realerts: list[IncidentRow]


# -- pure decisions -------------------------------------------------------------


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
    schedule = row.schedule()
    first = schedule.next_after(row.updated_at)
    latest = schedule.previous_before(now) or first
    grace = grace_for(row, period_at(schedule, latest))
    expected = schedule.previous_before(now - grace + timedelta(microseconds=1))
    if expected is None or expected < first:
        return None
    action = f"scheduler history {row.name}"
    details = {"expected_at": expected.isoformat(), "grace_seconds": grace.total_seconds()}
    if last_started is None:
        summary = f"has never run; its first run was due at {format_utc(first)} (grace {_span(grace)})"
        return Finding(row.name, "inactive", summary, first, action=action, details=details)
    if last_started >= expected:
        return None
    missed = schedule.next_after(max(last_started, row.updated_at))
    summary = (
        f"last run started {format_utc(last_started)}; the run due at {format_utc(missed)} "
        f"has not started (grace {_span(grace)})"
    )
    details["last_started_at"] = last_started.isoformat()
    return Finding(row.name, "delayed", summary, missed, action=action, details=details)


def failing(row: JobRow, outcomes: list[Any]) -> Finding | None:
    """`alert_after_failures` failed or timed-out runs in a row, newest first in `outcomes`."""
    threshold = max(1, int(row.definition.get("alert_after_failures") or 1))
    streak = []
    for run in outcomes:
        if run.status == "succeeded":
            break
        streak.append(run)
    if len(streak) < threshold:
        return None
    latest, first = streak[0], streak[-1]
    count = f"{len(streak)}+" if len(streak) == len(outcomes) == MAX_STREAK else str(len(streak))
    summary = f"the last {count} runs failed" if len(streak) > 1 else "the last run failed"
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
        details={"run_id": latest.id, "failures": len(streak), "threshold": threshold},
    )


def overrunning(row: JobRow, run: Any, now: datetime) -> Finding | None:
    """A run still running past its timeout, or (without one) past its next slot plus grace."""
    if run.started_at is None:
        return None
    timeout = row.definition.get("timeout_seconds")
    if timeout:
        limit = timedelta(seconds=float(timeout))
        reason = f"its timeout of {_span(limit)}"
    else:
        period = period_at(row.schedule(), run.scheduled_for)
        limit = period + grace_for(row, period)
        reason = f"its period plus grace ({_span(limit)}; no timeout set)"
    running_for = now - run.started_at
    if running_for <= limit:
        return None
    summary = f"run {run.id} has been running for {_span(running_for)}, longer than {reason}"
    details = {"run_id": run.id, "limit_seconds": limit.total_seconds()}
    return Finding(row.name, "overrunning", summary, run.started_at, host=run.host, details=details)


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

    def add(finding: Finding | None) -> None:
        if finding is not None:
            found.setdefault(finding.key, finding)

    for row in snap.jobs:
        if row.name in loaded and row.name not in running and not row.paused:
            if row.definition.get("enabled", True):
                add(lateness(row, snap.activity.last_started.get(row.name), snap.now))
        add(failing(row, snap.activity.outcomes.get(row.name, [])))
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


def plan(
    findings: Iterable[Finding], open_now: Iterable[IncidentRow], now: datetime, realert_after: timedelta
) -> Plan:
    """Open what is new, close what went away, remind about what lasts (if re-alerts are on)."""
    wanted = {f.key: f for f in findings}
    current = {i.key: i for i in open_now}
    realerts = []
    if realert_after > timedelta(0):
        realerts = [
            i
            for key, i in current.items()
            if key in wanted and i.last_notified_at is not None and now - i.last_notified_at >= realert_after
        ]
    return Plan(
        opens=[f for key, f in wanted.items() if key not in current],
        closes=[i for key, i in current.items() if key not in wanted],
        realerts=realerts,
    )


def open_alert(finding: Finding) -> Alert:
    return Alert(
        kind=finding.kind,
        subject=finding.subject,
        event="open",
        summary=finding.summary,
        since=finding.since,
        host=finding.host,
        last_error=finding.last_error,
        action=finding.action,
    )


def later_alert(incident: IncidentRow, event: str, now: datetime) -> Alert:
    """The recovery or reminder about a stored incident."""
    since = incident.details.get("since")
    return Alert(
        kind=incident.kind,
        subject=incident.subject,
        event=event,
        summary=incident.summary,
        since=datetime.fromisoformat(since) if since else incident.opened_at,
        host=incident.details.get("host"),
        last_error=incident.details.get("last_error") if event == "realert" else None,
        at=now,
    )


def _span(delta: timedelta) -> str:
    return format_interval(timedelta(seconds=max(1, round(delta.total_seconds()))))


# -- I/O: snapshots, transitions, the loop --------------------------------------


@dataclass
class _Outage:
    """This instance cut off from the database: kept in memory until it can be written."""

    since: datetime
    reason: str
    notified_at: datetime | None = None
    slack_ts: str | None = None
    gave_up: bool = False


class Watchdog:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Settings,
        health: Health,
        notifier: Notifier | None = None,
        *,
        worker: str = "",
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.health = health
        self.notifier = notifier or make_notifier(
            settings.slack_webhook_url, settings.slack_token, settings.slack_channel, settings.slack_base_url
        )
        self.sender = OutboxSender(store, self.notifier, clock, worker or settings.instance_name)
        self._last_jobs_check: datetime | None = None
        self._outage: _Outage | None = None

    def announce(self) -> None:
        """Say once, at start-up, where alerts go."""
        if self.notifier.configured:
            log.info("watchdog: alerts go to %s", self.notifier.describe())
        else:
            log.warning(
                "watchdog: Slack is not configured (set SCHEDULER_SLACK_WEBHOOK_URL or "
                "SCHEDULER_SLACK_TOKEN); incidents are recorded and logged only"
            )

    # -- checks -----------------------------------------------------------------

    def chore(self, now: datetime) -> None:
        """The leader's chore: check the jobs at most every `watchdog_interval`."""
        if (
            self._last_jobs_check is not None
            and now - self._last_jobs_check < self.settings.watchdog_interval
        ):
            return
        self._last_jobs_check = now
        log.debug("watchdog: %s", self.check_jobs(now))

    def check_jobs(self, now: datetime) -> str:
        """Delayed, inactive, failing, overrunning and broken jobs. Raises StoreUnavailable."""
        rows = self.store.jobs.all()
        depth = min(
            MAX_STREAK, max([int(r.definition.get("alert_after_failures") or 1) for r in rows] or [1])
        )
        snap = Snapshot(now, rows, self.store.alerts.activity(depth), self.store.cluster.alive(now))
        current = self.store.alerts.open_incidents(JOB_KINDS)
        return self.apply(plan(detect_jobs(snap), current, now, self.settings.realert_after), now)

    def check_instances(self, now: datetime) -> str:
        """No live instance. Runs on every instance. Raises StoreUnavailable."""
        finding = no_instance(self.store.cluster.alive(now), self.store.cluster.recent(), now)
        current = self.store.alerts.open_incidents(("instance",))
        findings = [finding] if finding else []
        return self.apply(plan(findings, current, now, self.settings.realert_after), now)

    def check_database(self, now: datetime) -> str:
        """This instance's view of the database, from `Health`; alerts after `db_alert_after`.

        The opening message goes straight to Slack (the outbox is in the
        database); the incident is written, already closed, with its recovery
        notice, once the database is back.
        """
        report = self.health.report()
        if not report.database_up:
            if report.database_down_for < self.settings.db_alert_after.total_seconds():
                return f"database unreachable for {report.database_down_for:.0f}s; not alerting yet"
            if self._outage is None:
                since = now - timedelta(seconds=report.database_down_for)
                self._outage = _Outage(since, report.reason)
                log.error("incident opened: database: %s", self._db_summary(report.reason))
            self._send_outage(self._outage, now)
            return f"database unreachable for {report.database_down_for:.0f}s"
        outage, self._outage = self._outage, None
        if outage is None:
            return "database reachable"
        try:
            self.store.alerts.record_closed(
                self.settings.instance_name,
                "database",
                self._db_summary(outage.reason),
                {"since": outage.since.isoformat(), "host": self.settings.instance_name},
                outage.since,
                now,
                outage.notified_at,
                outage.slack_ts,
                lambda incident: self._payload(later_alert(incident, "recover", now)),
            )
        except SchedulerError:
            self._outage = outage  # down again already: write it next time
            raise
        log.warning("incident closed: database reachable again from %s", self.settings.instance_name)
        return "database reachable again; outage recorded"

    def _send_outage(self, outage: _Outage, now: datetime) -> None:
        if outage.notified_at is not None or outage.gave_up or not self.notifier.configured:
            return
        alert = Alert(
            kind="database",
            subject=self.settings.instance_name,
            event="open",
            summary=self._db_summary(outage.reason),
            since=outage.since,
            host=self.settings.instance_name,
        )
        try:
            delivery = self.notifier.send(build_payload(alert))
        except TransportError as exc:
            outage.gave_up = exc.permanent
            log.warning("database alert not delivered%s: %s", "" if exc.permanent else ", will retry", exc)
            return
        outage.notified_at, outage.slack_ts = now, delivery.ts

    def _db_summary(self, reason: str) -> str:
        while reason.startswith("database unavailable: "):  # Health and StoreUnavailable both say so
            reason = reason.removeprefix("database unavailable: ")
        return f"{self.settings.instance_name} cannot reach the database: {reason}"

    # -- transitions ------------------------------------------------------------

    def apply(self, decided: Plan, now: datetime) -> str:
        """Write the transitions; each queues its notice in the same transaction. Returns a sentence."""
        opened = closed = reminded = 0
        for f in decided.opens:
            payload = self._payload(open_alert(f))
            incident = self.store.alerts.open_incident(
                f.subject, f.kind, f.summary, f.stored_details(), now, payload
            )
            if incident is not None:
                opened += 1
                log.warning(
                    "incident opened: %s %s: %s",
                    f.kind,
                    f.subject,
                    f.summary,
                    extra={"job": f.subject, "action": "incident-open"},
                )
        for i in decided.closes:
            if self.store.alerts.close_incident(
                i.id, now, lambda c: self._payload(later_alert(c, "recover", now))
            ):
                closed += 1
                log.info(
                    "incident closed: %s %s after %s",
                    i.kind,
                    i.subject,
                    _span(now - i.opened_at),
                    extra={"job": i.subject, "action": "incident-close"},
                )
        due_before = now - self.settings.realert_after
        for i in decided.realerts:
            notice = lambda c: self._payload(later_alert(c, "realert", now))  # noqa: E731
            if self.store.alerts.realert(i.id, due_before, now, notice):
                reminded += 1
                log.info("incident still open: %s %s", i.kind, i.subject, extra={"job": i.subject})
        parts = [
            f"{n} {what}" for n, what in ((opened, "opened"), (closed, "closed"), (reminded, "reminded"))
        ]
        return ", ".join(p for p in parts if not p.startswith("0 ")) or "no change"

    def _payload(self, alert: Alert) -> dict[str, Any] | None:
        return build_payload(alert) if self.notifier.configured else None

    # -- the loop ---------------------------------------------------------------

    def step(self, now: datetime) -> str:
        """One turn of the per-instance loop: the scheduler checks, then the outbox."""
        done = [self.check_database(now)]
        if self.health.database_up:
            done.append(self.check_instances(now))
            done.append(self.sender.drain())
        return "; ".join(done)

    def run(self, stop: threading.Event) -> None:
        """Check the scheduler every `watchdog_interval`; drain the outbox every second."""
        interval = self.settings.watchdog_interval.total_seconds()
        next_check = self.clock.monotonic()
        while not stop.is_set():
            try:
                if self.clock.monotonic() >= next_check:
                    next_check = self.clock.monotonic() + interval
                    log.debug("watchdog: %s", self.step(self.clock.now()))
                elif self.health.database_up:
                    self.sender.drain()
            except SchedulerError as exc:
                log.warning("watchdog cycle failed: %s", exc)
            except Exception:
                log.exception("watchdog cycle failed; carrying on")
            self.clock.wait(LOOP_WAIT, stop)


# -- for the CLI ------------------------------------------------------------------


def list_incidents(store: Store, open_only: bool = False, limit: int = 50) -> list[IncidentRow]:
    """Incidents, newest first. Raises StoreUnavailable."""
    return store.alerts.incidents(open_only, limit)


def send_test(settings: Settings, clock: Clock | None = None) -> str:
    """Send a test message through the configured notifier; returns where it went.

    Raises SchedulerError with one line if Slack is not configured or refused.
    """
    notifier = make_notifier(
        settings.slack_webhook_url, settings.slack_token, settings.slack_channel, settings.slack_base_url
    )
    if not notifier.configured:
        raise SchedulerError(
            "slack: not configured; set SCHEDULER_SLACK_WEBHOOK_URL or SCHEDULER_SLACK_TOKEN"
        )
    now = (clock or SystemClock()).now()
    summary = f"test message from the scheduler on {settings.instance_name}"
    alert = Alert("test", SCHEDULER, "test", summary, now, host=settings.instance_name)
    try:
        delivery = notifier.send(build_payload(alert))
    except TransportError as exc:
        raise SchedulerError(f"slack: test message not sent: {exc}") from None
    return f"test message sent ({notifier.describe()})" + (f", ts {delivery.ts}" if delivery.ts else "")
