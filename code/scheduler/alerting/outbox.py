"""Delivering queued notices to Slack: claim, send, then mark; retries with backoff.

Every message goes through here: the database outbox (`store.outbox`), and
the local spool (alerting/spool.py) that holds the database-outage alert while
the database is away. An "update" notice edits the incident's opening message
(chat.update, token mode); a "recover" one is a reply in its thread.

A notice stays `pending` until Slack has accepted it. A sender claims due
notices for `CLAIM_HOLD` (longer than a send can take), so two senders never
send one notice; a sender that dies mid-send leaves its claim to lapse and the
notice is sent again later. That is the one case where Slack may show a
message twice: when Slack took it but the sender died before writing `sent`.

Retry policy: HTTP 429 waits for Retry-After when Slack sends it; 5xx,
connection errors and timeouts back off exponentially (5 s, 10 s, ... up to
10 min); a permanent refusal (bad token, unknown channel) marks the notice
`failed` with the error. A notice still undelivered a day after it was queued
is marked `failed` as well: by then it is no news.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from scheduler.alerting.slack import Delivery, Notifier, TransportError
from scheduler.alerting.spool import LocalOutbox, SpooledNotice
from scheduler.clock import Clock
from scheduler.store import Store
from scheduler.store.outbox import ClaimedNotice

log = logging.getLogger(__name__)

CLAIM_HOLD = timedelta(seconds=60)  # well above the notifier's 10 s request timeout
BASE_BACKOFF = timedelta(seconds=5)
MAX_BACKOFF = timedelta(minutes=10)
GIVE_UP_AFTER = timedelta(days=1)
BATCH = 20
MAX_ROUNDS = 10


def backoff(attempts: int, retry_after: float | None) -> timedelta:
    """How long to wait before attempt `attempts + 1`: Slack's Retry-After if given, else exponential."""
    if retry_after is not None:
        return timedelta(seconds=retry_after)
    exponential: timedelta = BASE_BACKOFF * 2 ** min(max(0, attempts - 1), 20)
    return min(MAX_BACKOFF, exponential)


class OutboxSender:
    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        clock: Clock,
        worker: str,
        *,
        hold: timedelta = CLAIM_HOLD,
        spool: LocalOutbox | None = None,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.worker = worker
        self.hold = hold
        self.spool = spool

    def drain(self) -> str:
        """Send every notice due now; returns a sentence saying what happened.

        Raises StoreUnavailable if the database is away (nothing is lost: the
        notices stay pending). A notice Slack could not take now is due again
        after its backoff; once Slack rate-limits or fails, the rest waits too.
        Claims repeat (up to `MAX_ROUNDS` batches) so a recovery queued behind
        its opening message goes out in the same drain.
        """
        if not self.notifier.configured:
            return "Slack not configured"
        counts = {"sent": 0, "retry": 0, "failed": 0}
        for _ in range(MAX_ROUNDS):
            claimed = self.store.outbox.claim_due(self.worker, self.clock.now(), self.hold, BATCH)
            if not claimed or not self._send_batch(claimed, counts):
                break
        return ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "no notices due"

    def _send_batch(self, claimed: list[ClaimedNotice], counts: dict[str, int]) -> bool:
        """Send in order; False (and the rest given back) once Slack asks to wait."""
        for index, notice in enumerate(claimed):
            outcome, due = self.deliver(notice)
            counts[outcome] += 1
            if due is not None:
                # Slack is rate-limiting or failing: the rest waits as long as this one.
                for rest in claimed[index + 1 :]:
                    self.store.outbox.release(rest.row.id, self.worker, due)
                return False
        return True

    def deliver(self, notice: ClaimedNotice) -> tuple[str, datetime | None]:
        """Send one claimed notice and record the result.

        Returns ('sent' | 'failed', None) or ('retry', when it is due again).
        """
        row = notice.row
        try:
            delivery = self._attempt(row.event, row.payload, notice.thread_ts)
        except TransportError as exc:
            now = self.clock.now()
            if exc.permanent or now - row.created_at >= GIVE_UP_AFTER:
                why = str(exc) if exc.permanent else f"gave up after {row.attempts} attempts: {exc}"
                self._mark(self.store.outbox.mark_failed(row.id, self.worker, why), row.id)
                log.error("notice %s (%s) not delivered, giving up: %s", row.id, row.event, why)
                return "failed", None
            wait = backoff(row.attempts, exc.retry_after)
            self._mark(self.store.outbox.mark_retry(row.id, self.worker, now + wait, str(exc)), row.id)
            log.warning(
                "notice %s (%s) not delivered (attempt %d), retrying in %.0fs: %s",
                row.id,
                row.event,
                row.attempts,
                wait.total_seconds(),
                exc,
            )
            return "retry", now + wait
        self._mark(self.store.outbox.mark_sent(row.id, self.worker, self.clock.now(), delivery.ts), row.id)
        log.info(
            "notice %s (%s) sent to %s",
            row.id,
            row.event,
            self.notifier.describe(),
            extra={"action": "notify"},
        )
        return "sent", None

    def _mark(self, held: bool, notice_id: int) -> None:
        if not held:
            # Our claim lapsed and another sender took the notice over: it may be sent twice.
            log.warning("notice %s: claim lapsed before its result was written", notice_id)

    def _attempt(self, event: str, payload: dict[str, Any], ts: str | None) -> Delivery:
        if event != "update":
            return self.notifier.send(payload, thread_ts=ts)
        if ts is None:
            raise TransportError("no opening message to edit (it was never delivered)", permanent=True)
        return self.notifier.update(payload, ts)

    # -- the local spool ----------------------------------------------------------

    def drain_spool(self) -> str:
        """Send the spooled notices that are due; works with the database away."""
        if self.spool is None or not self.notifier.configured:
            return ""
        counts = {"sent": 0, "retry": 0, "failed": 0}
        for entry in self.spool.due(self.clock.now()):
            counts[self._deliver_spooled(self.spool, entry)] += 1
        done = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
        return f"spool: {done}" if done else ""

    def _deliver_spooled(self, spool: LocalOutbox, entry: SpooledNotice) -> str:
        assert entry.payload is not None  # an entry without one is spooled `failed`
        attempts = entry.attempts + 1
        try:
            delivery = self.notifier.send(entry.payload)
        except TransportError as exc:
            now = self.clock.now()
            if exc.permanent or now - datetime.fromisoformat(entry.created_at) >= GIVE_UP_AFTER:
                spool.update(entry.id, status="failed", attempts=attempts, last_error=str(exc))
                log.error("spooled %s alert not delivered, giving up: %s", entry.kind, exc)
                return "failed"
            wait = backoff(attempts, exc.retry_after)
            due = (now + wait).isoformat()
            spool.update(entry.id, attempts=attempts, next_attempt_at=due, last_error=str(exc))
            log.warning(
                "spooled %s alert not delivered (attempt %d), retrying in %.0fs: %s",
                entry.kind,
                attempts,
                wait.total_seconds(),
                exc,
            )
            return "retry"
        sent_at = self.clock.now().isoformat()
        spool.update(entry.id, status="sent", attempts=attempts, sent_at=sent_at, slack_ts=delivery.ts)
        log.info(
            "spooled %s alert sent to %s", entry.kind, self.notifier.describe(), extra={"action": "notify"}
        )
        return "sent"
