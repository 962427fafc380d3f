"""Alerts for operators: the Slack test message (`notify-test`).

The incident list is a plain read (`queries.list_alerts`).
"""

from __future__ import annotations

from scheduler.alerting.findings import SCHEDULER
from scheduler.alerting.record import Finding
from scheduler.alerting.slack import TransportError, build_payload, make_notifier
from scheduler.clock import Clock, SystemClock
from scheduler.config import Settings
from scheduler.errors import SchedulerError


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
    finding = Finding(SCHEDULER, "test", summary, now, host=settings.instance_name)
    try:
        delivery = notifier.send(build_payload(finding, "test"))
    except TransportError as exc:
        raise SchedulerError(f"slack: test message not sent: {exc}") from None
    return notifier.describe() + (f" (ts {delivery.ts})" if delivery.ts else "")
