"""The watchdog: findings become incidents, and each transition queues its notice.

Flow, one way: findings (pure, findings.py) -> incidents (this module, stored
by `store.incidents`) -> outbox (`store.outbox`, or the local spool while the
database is away) -> Slack (outbox.py, slack.py). Every payload is built here,
before the transaction that records the transition and queues it.

Each pass reads what changed since the last one (alerting/facts.py), compares
the findings with the open incidents: a new finding opens an incident, a
finding that went away closes one, a finding whose text changed updates the
incident (at most every `alert_update_every`, and edits its Slack message in
token mode). An incident that lasts sends nothing more, and a restart or a
new leader neither repeats nor loses a message.

The watchdog runs in its own thread, never on the heartbeat thread. Job checks
run on the leader only, and only once the start-up catch-up has decided the
slots missed while the daemon was down (so a restart does not report every
job late). The checks of the scheduler itself run on every instance, since
the leader may be the one that is gone: no live instance, and this instance
cut off from the database. The database incident cannot be written while the
database is away: its opening message is spooled to a file and sent from
there, and the incident is recorded, with its recovery, once the database
answers again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from scheduler.alerting.crashes import crashed
from scheduler.alerting.facts import JobRows, RunFacts
from scheduler.alerting.findings import (
    MAX_STREAK,
    LatenessMemo,
    Snapshot,
    detect_jobs,
    group_late,
    no_instance,
    overloaded,
    span,
)
from scheduler.alerting.outbox import OutboxSender
from scheduler.alerting.record import KINDS, Finding
from scheduler.alerting.slack import Notifier, build_payload, make_notifier
from scheduler.alerting.spool import LocalOutbox, SpooledNotice
from scheduler.clock import Clock
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.errors import SchedulerError
from scheduler.store import InstanceRow, Store
from scheduler.store.incidents import IncidentRow, Opening

log = logging.getLogger(__name__)

# The kinds check_jobs decides: every kind but those with a pass of their own (check_instances,
# check_database) and the notify-test message, which is never an incident.
JOB_KINDS = tuple(k for k in KINDS if k not in ("instance", "database", "test"))
LOOP_WAIT = 1.0
# While a burst of runs drains here, a due pass waits (looking every BURST_WAIT) for up to
# BURST_DEFER: it would read every run the burst changes while they are still being written,
# and its GIL time comes out of the burst's starts.
BURST_WAIT = 0.1
BURST_DEFER = 10.0
OVERLOAD_WINDOW = timedelta(minutes=5)  # an instance stays "overloaded" this long after its last lost slot
CRASH_WINDOW = timedelta(minutes=15)  # a host stays "crashed" this long after a daemon death was found
TEXT_UPDATED_AT = "text_updated_at"  # in an incident's details: when its text was last replaced
# Job checks wait for the start-up catch-up at most this long (a dispatcher that keeps deferring
# slots to its peers must not keep the watchdog quiet for ever).
STARTUP_WAIT = timedelta(minutes=2)


@dataclass(frozen=True)
class Plan:
    opens: list[Finding]
    closes: list[IncidentRow]
    realerts: list[IncidentRow]
    updates: list[tuple[IncidentRow, Finding]] = field(default_factory=list)


# -- pure decisions ---------------------------------------------------------------


def plan(
    findings: Iterable[Finding],
    open_now: Iterable[IncidentRow],
    now: datetime,
    realert_after: timedelta,
    update_every: timedelta | None = None,
) -> Plan:
    """Open what is new, close what went away, remind about what lasts (if re-alerts are on),
    and replace the text of what lasts but reads differently now (at most every `update_every`)."""
    wanted = {f.key: f for f in findings}
    current = {i.key: i for i in open_now}
    realerts = []
    if realert_after > timedelta(0):
        realerts = [
            i
            for key, i in current.items()
            if key in wanted and i.last_notified_at is not None and now - i.last_notified_at >= realert_after
        ]
    updates = []
    if update_every is not None:
        updates = [
            (i, wanted[key])
            for key, i in current.items()
            if key in wanted and wanted[key].summary != i.summary and _text_age(i, now) >= update_every
        ]
    return Plan(
        opens=[f for key, f in wanted.items() if key not in current],
        closes=[i for key, i in current.items() if key not in wanted],
        realerts=realerts,
        updates=updates,
    )


def _text_age(incident: IncidentRow, now: datetime) -> timedelta:
    updated = incident.details.get(TEXT_UPDATED_AT)
    return now - (datetime.fromisoformat(updated) if updated else incident.opened_at)


def alive_with_margin(recent: list[InstanceRow], now: datetime, ttl: timedelta) -> list[InstanceRow]:
    """Instances whose lease ran out less than a lease TTL ago: a busy instance is late, not dead."""
    return [i for i in recent if i.stopped_at is None and i.expires_at + ttl >= now]


# -- I/O: snapshots, transitions, the loop --------------------------------------


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
        leading: Callable[[], bool] = lambda: True,
        bursting: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.bursting = bursting  # runs wait here for a thread or for their slot
        self.clock = clock
        self.settings = settings
        self.health = health
        self.leading = leading
        self.notifier = notifier or make_notifier(
            settings.slack_webhook_url, settings.slack_token, settings.slack_channel, settings.slack_base_url
        )
        self.spool = LocalOutbox(settings.state_dir / f"alerts-{settings.instance_name}.json")
        self.sender = OutboxSender(
            store, self.notifier, clock, worker or settings.instance_name, spool=self.spool
        )
        self.facts = RunFacts(store)
        self._born = clock.monotonic()
        self.rows = JobRows(store)
        self.memo = LatenessMemo()

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

    def check_jobs(self, now: datetime) -> str:
        """Delayed, inactive, failing, skipping, overrunning, broken jobs; overloaded, crashed instances.

        Raises StoreUnavailable.
        """
        return self.apply(self.decide_jobs(now), now)

    def decide_jobs(self, now: datetime) -> Plan:
        """Read what changed and decide the job transitions, writing nothing. Raises StoreUnavailable."""
        rows = self.rows.refresh(now)
        failures = max((int(r.definition.get("alert_after_failures") or 1) for r in rows), default=1)
        depth = min(MAX_STREAK, max(failures, self.settings.skip_alert_after))
        activity = self.facts.refresh([r.name for r in rows], depth, now)
        alive = self.store.cluster.alive(now)
        snap = Snapshot(now, rows, activity, alive, self.settings.skip_alert_after, self.memo)
        found = detect_jobs(snap)
        found += overloaded(self.store.runfacts.overloads(now - OVERLOAD_WINDOW), OVERLOAD_WINDOW)
        found += crashed(self.store.runfacts.crashes(now - CRASH_WINDOW), CRASH_WINDOW)
        current = self.store.incidents.open_incidents(JOB_KINDS)
        found = group_late(found, {i.key for i in current}, self.settings.alert_group_after)
        update_every = self.settings.alert_update_every
        return plan(found, current, now, self.settings.realert_after, update_every)

    def check_instances(self, now: datetime) -> str:
        """No live instance. Runs on every instance. Raises StoreUnavailable.

        Never while this instance renews its own heartbeat: it is alive. Otherwise
        an instance counts as alive for one lease TTL past its lease.
        """
        age = self.health.heartbeat_age()
        finding = None
        if age is None or age > self.settings.lease_ttl.total_seconds():
            recent = self.store.cluster.recent()
            alive = alive_with_margin(recent, now, self.settings.lease_ttl)
            finding = no_instance(alive, recent, now)
        current = self.store.incidents.open_incidents(("instance",))
        findings = [finding] if finding else []
        return self.apply(plan(findings, current, now, self.settings.realert_after), now)

    def check_database(self, now: datetime) -> str:
        """This instance's view of the database, from `Health`; alerts after `db_alert_after`.

        The opening message is spooled locally (the outbox is in the database);
        the incident is written, already closed, once the database is back,
        with the opening (sent, or still to send) and its recovery.
        """
        report = self.health.report()
        key = (self.settings.instance_name, "database")
        spooled = self.spool.find(key)
        if not report.database_up:
            if report.database_down_for < self.settings.db_alert_after.total_seconds():
                return f"database unreachable for {report.database_down_for:.0f}s; not alerting yet"
            if spooled is None:
                since = now - timedelta(seconds=report.database_down_for)
                host = self.settings.instance_name
                finding = Finding(host, "database", self._db_summary(report.reason), since, host=host)
                payload = self._payload(finding, "open")
                self.spool.add(*key, finding.summary, finding.stored_details(), payload, now)
                log.error("incident opened: database: %s", finding.summary)
            return f"database unreachable for {report.database_down_for:.0f}s"
        if spooled is None:
            return "database reachable"
        self._record_outage(spooled, now)
        log.warning("incident closed: database reachable again from %s", self.settings.instance_name)
        return "database reachable again; outage recorded"

    def _record_outage(self, spooled: SpooledNotice, now: datetime) -> None:
        """Write the outage incident with its notices; then the spool entry goes. Raises StoreUnavailable."""
        since = datetime.fromisoformat(spooled.details["since"])
        finding = Finding(spooled.subject, spooled.kind, spooled.summary, since, host=spooled.subject)
        opening = None
        if spooled.payload is not None and spooled.status != "failed":
            sent_at = datetime.fromisoformat(spooled.sent_at) if spooled.sent_at else None
            opening = Opening(spooled.payload, sent_at, spooled.slack_ts)
        self.store.incidents.record_outage(
            spooled.subject,
            spooled.kind,
            spooled.summary,
            spooled.details,
            since,
            now,
            opening,
            self._payload(finding, "recover", now),
        )
        self.spool.remove(spooled.id)

    def _db_summary(self, reason: str) -> str:
        while reason.startswith("database unavailable: "):  # Health and StoreUnavailable both say so
            reason = reason.removeprefix("database unavailable: ")
        return f"{self.settings.instance_name} cannot reach the database: {reason}"

    # -- transitions ------------------------------------------------------------

    def apply(self, decided: Plan, now: datetime) -> str:
        """Write the transitions; each queues its notice, built beforehand. Returns a sentence."""
        counts = {
            "opened": sum(self._open(f, now) for f in decided.opens),
            "closed": sum(self._close(i, now) for i in decided.closes),
            "reminded": sum(self._remind(i, now) for i in decided.realerts),
            "updated": sum(self._update(i, f, now) for i, f in decided.updates),
        }
        return ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "no change"

    def _open(self, f: Finding, now: datetime) -> bool:
        payload = self._payload(f, "open")
        incident = self.store.incidents.open_incident(
            f.subject, f.kind, f.summary, f.stored_details(), now, payload
        )
        if incident is None:
            return False
        log.warning(
            "incident opened: %s %s: %s",
            f.kind,
            f.subject,
            f.summary,
            extra={"job": f.subject, "action": "incident-open"},
        )
        return True

    def _close(self, i: IncidentRow, now: datetime) -> bool:
        payload = self._payload(Finding.from_incident(i), "recover", now)
        if self.store.incidents.close_incident(i.id, now, payload) is None:
            return False
        log.info(
            "incident closed: %s %s after %s",
            i.kind,
            i.subject,
            span(now - i.opened_at),
            extra={"job": i.subject, "action": "incident-close"},
        )
        return True

    def _remind(self, i: IncidentRow, now: datetime) -> bool:
        payload = self._payload(Finding.from_incident(i), "realert")
        if not self.store.incidents.realert(i.id, now - self.settings.realert_after, now, payload):
            return False
        log.info("incident still open: %s %s", i.kind, i.subject, extra={"job": i.subject})
        return True

    def _update(self, i: IncidentRow, f: Finding, now: datetime) -> bool:
        details = {**f.stored_details(), TEXT_UPDATED_AT: now.isoformat()}
        # Only a message that can be edited in place is updated: a webhook would post a new one each time.
        payload = self._payload(f, "update") if self.notifier.can_edit else None
        if not self.store.incidents.update_text(i.id, f.summary, details, i.summary, now, payload):
            return False
        log.info("incident updated: %s %s: %s", f.kind, f.subject, f.summary, extra={"job": f.subject})
        return True

    def _payload(self, finding: Finding, event: str, at: datetime | None = None) -> dict[str, Any] | None:
        return build_payload(finding, event, at) if self.notifier.configured else None

    # -- the loop ---------------------------------------------------------------

    def step(self, now: datetime) -> str:
        """One pass: the scheduler checks, the job checks (leader, after catch-up), then delivery."""
        done = [self.check_database(now), self.sender.drain_spool()]
        if not self.health.database_up:
            return "; ".join(d for d in done if d)
        recovered = self.health.recovered_at
        if (
            recovered is not None
            and self.clock.monotonic() - recovered < self.settings.lease_ttl.total_seconds()
        ):
            # Heartbeats (ours too) lapsed during the outage and are being renewed: not "no instance".
            done.append("heartbeats settling after a database outage")
        else:
            done.append(self.check_instances(now))
        if not self.leading():
            done.append("jobs: not the leader")
        elif not self.health.caught_up and self._since_start() < STARTUP_WAIT:
            done.append("jobs: waiting for the start-up catch-up")
        else:
            done.append(f"jobs: {self.check_jobs(now)} ({self.facts.rows_read} changed rows read)")
        done.append(self.sender.drain())
        return "; ".join(d for d in done if d)

    def _since_start(self) -> timedelta:
        return timedelta(seconds=self.clock.monotonic() - self._born)

    def run(self, stop: threading.Event) -> None:
        """A pass every `watchdog_interval`; delivery (spool, outbox) every second."""
        interval = self.settings.watchdog_interval.total_seconds()
        next_check = self.clock.monotonic()
        while not stop.is_set():
            mono = self.clock.monotonic()
            if next_check <= mono < next_check + BURST_DEFER and self.bursting():
                self.clock.wait(BURST_WAIT, stop)
                continue
            try:
                if mono >= next_check:
                    next_check = self.clock.monotonic() + interval
                    log.debug("watchdog: %s", self.step(self.clock.now()))
                else:
                    self.sender.drain_spool()
                    if self.health.database_up:
                        self.sender.drain()
            except SchedulerError as exc:
                log.warning("watchdog pass failed: %s", exc)
            except Exception:
                log.exception("watchdog pass failed; carrying on")
            self.clock.wait(LOOP_WAIT, stop)
