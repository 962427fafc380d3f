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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from scheduler.alerting.findings import (
    MAX_STREAK,
    SCHEDULER,
    Finding,
    Snapshot,
    detect_jobs,
    no_instance,
    span,
)
from scheduler.alerting.outbox import OutboxSender
from scheduler.alerting.slack import Alert, Notifier, TransportError, build_payload, make_notifier
from scheduler.clock import Clock, SystemClock
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.errors import SchedulerError
from scheduler.store import Store
from scheduler.store.alerts import IncidentRow

log = logging.getLogger(__name__)

JOB_KINDS = ("delayed", "inactive", "failing", "overrunning", "broken", "paused")
LOOP_WAIT = 1.0


@dataclass(frozen=True)
class Plan:
    opens: list[Finding]
    closes: list[IncidentRow]
    realerts: list[IncidentRow]


# -- pure decisions: transitions and their messages ------------------------------


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
        return self.apply(self.decide_jobs(now), now)

    def decide_jobs(self, now: datetime) -> Plan:
        """Read a snapshot and decide the job transitions, writing nothing. Raises StoreUnavailable."""
        rows = self.store.jobs.all()
        depth = min(
            MAX_STREAK, max((int(r.definition.get("alert_after_failures") or 1) for r in rows), default=1)
        )
        activity = self.store.alerts.activity([r.name for r in rows], depth)
        snap = Snapshot(now, rows, activity, self.store.cluster.alive(now))
        current = self.store.alerts.open_incidents(JOB_KINDS)
        return plan(detect_jobs(snap), current, now, self.settings.realert_after)

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
                    span(now - i.opened_at),
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
        if not self.health.database_up:
            return done[0]
        recovered = self.health.recovered_at
        if (
            recovered is not None
            and self.clock.monotonic() - recovered < self.settings.lease_ttl.total_seconds()
        ):
            # Heartbeats (ours too) lapsed during the outage and are being renewed: not "no instance".
            done.append("heartbeats settling after a database outage")
        else:
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
    """Send a test message through the configured notifier; returns where it went, e.g.
    'Slack bot token, channel #dev-notify (ts 1700000000.000100)'.

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
    return notifier.describe() + (f" (ts {delivery.ts})" if delivery.ts else "")
