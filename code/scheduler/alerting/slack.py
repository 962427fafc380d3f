"""Slack: alert payloads (pure) and their delivery.

`build_payload` turns an `Alert` into a Block Kit message and does no I/O.
A `Notifier` delivers one payload and reports a failure as `TransportError`,
permanent or not. It never retries, not even through slack_sdk's own retry
handlers: retry policy, and the pending row that survives a restart, belong
to the caller's outbox.

The bot token and the webhook URL (whose path is the credential) never appear
in an error message, a log line, `describe()` or `repr()`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.client import HTTPException
from typing import Any, Protocol
from urllib.parse import urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

from scheduler.errors import SchedulerError

KINDS = ("delayed", "inactive", "failing", "overrunning", "broken", "paused", "instance", "database", "test")
EVENTS = ("open", "recover", "realert", "test")

# Incidents about the scheduler itself have subject "scheduler", not a job.
SCHEDULER_WIDE = frozenset({"instance", "database", "test"})

_TITLES = {
    "delayed": "Delayed job",
    "inactive": "Inactive job",
    "failing": "Failing job",
    "overrunning": "Overrunning job",
    "broken": "Broken job",
    "paused": "Job paused by the crash-loop guard",
    "instance": "Scheduler instance",
    "database": "Database problem",
    "test": "Test notification",
}
_EMOJI = {
    "open": ":red_circle:",
    "realert": ":red_circle:",
    "recover": ":large_green_circle:",
    "test": ":large_blue_circle:",
}
_PREFIX = {"open": "", "realert": "Still open: ", "recover": "Recovered: ", "test": ""}

# Block Kit limits (characters): header text, section field, section text.
HEADER_LIMIT = 150
FIELD_LIMIT = 2000
TEXT_LIMIT = 3000
ERROR_LIMIT = 300

# Slack error codes that a later attempt can get past; every other code
# (invalid_auth, channel_not_found, not_in_channel, no_service...) needs a person.
_TRANSIENT_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
    }
)

# slack_sdk logs request URLs at DEBUG and failures with their text at ERROR;
# for a webhook that text is the secret. This logger is outside the logging
# tree, so no configuration can turn it on; send() reports failures itself.
_SDK_LOG = logging.Logger("scheduler.alerting.slack.slack_sdk", level=logging.CRITICAL + 1)


@dataclass(frozen=True)
class Alert:
    """What the watchdog hands over; pure data.

    Raises ValueError for an unknown kind or event, or a naive datetime.
    """

    kind: str
    subject: str
    event: str
    summary: str
    since: datetime
    host: str | None = None
    last_error: str | None = None
    action: str | None = None
    at: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Alert.kind: unknown kind {self.kind!r}")
        if self.event not in EVENTS:
            raise ValueError(f"Alert.event: unknown event {self.event!r}")
        if self.since.tzinfo is None:
            raise ValueError("Alert.since: must be tz-aware")
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("Alert.at: must be tz-aware")


def build_payload(alert: Alert) -> dict[str, Any]:
    """Slack message: {"text": fallback, "blocks": [...Block Kit...]}. Pure."""
    title = _TITLES[alert.kind]
    scoped = alert.kind not in SCHEDULER_WIDE
    headline = f"{_PREFIX[alert.event]}{title}"
    header = f"{_EMOJI[alert.event]} {headline}" + (f": {alert.subject}" if scoped else "")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip(_line(header), HEADER_LIMIT), "emoji": True},
        },
        {"type": "section", "fields": [_field(k, v) for k, v in _facts(alert, scoped)]},
    ]
    if alert.last_error:
        error = _clip(_line(alert.last_error), ERROR_LIMIT).replace("`", "'")
        blocks.append(_section(f"*Last error*\n`{_escape(error)}`"))
    if alert.action:
        action = _escape(_line(alert.action).replace("`", "'"))
        text = _clip(f"How to act: `{action}`", TEXT_LIMIT)
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
    fallback = f"[scheduler] {headline}" + (f" {alert.subject}" if scoped else "")
    fallback = _clip(_escape(_line(f"{fallback}: {alert.summary}")), TEXT_LIMIT)
    return {"text": fallback, "blocks": blocks}


def _facts(alert: Alert, scoped: bool) -> list[tuple[str, str]]:
    facts = [
        ("Job" if scoped else "Scope", alert.subject),
        ("Problem", alert.summary),
        ("Since", format_utc(alert.since)),
    ]
    if alert.event == "recover" and alert.at is not None:
        facts.append(("Recovered", f"{format_utc(alert.at)} (after {_duration(alert.at - alert.since)})"))
    if alert.host:
        facts.append(("Host", alert.host))
    return facts


def format_utc(instant: datetime) -> str:
    """'2026-11-25 08:00 UTC'."""
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(span: timedelta) -> str:
    seconds = max(0, int(span.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join(parts[:2]) if parts else f"{seconds}s"


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _clip(f"*{label}*\n{_escape(value)}", FIELD_LIMIT)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, TEXT_LIMIT)}}


def _line(text: str) -> str:
    return " ".join(text.split())


def _escape(text: str) -> str:
    # The three characters Slack's mrkdwn reserves for links and mentions.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]  # do not leave half an entity such as "&am"
    return cut + "…"


class TransportError(SchedulerError):
    """Slack did not take the message.

    `permanent`: sending the same message again cannot help (bad token,
    unknown channel); otherwise retry, not before `retry_after` seconds when
    Slack said so.
    """

    def __init__(self, message: str, *, permanent: bool, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True)
class Delivery:
    ts: str | None  # the message ts in token mode, to thread the recovery under; None for webhooks


class Notifier(Protocol):
    configured: bool

    def send(self, payload: dict[str, Any], thread_ts: str | None = None) -> Delivery:
        """Deliver one payload once. Raises TransportError."""
        ...

    def describe(self) -> str:
        """Where messages go, without the secret."""
        ...


class WebhookNotifier:
    configured: bool = True

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self._secrets = _Secrets(url, *_url_secrets(url))
        self._client = WebhookClient(
            url,
            # slack_sdk annotates int, but hands the value to urlopen, which takes a float.
            timeout=timeout,  # type: ignore[arg-type]
            logger=_SDK_LOG,
            retry_handlers=[],
        )

    def send(self, payload: dict[str, Any], thread_ts: str | None = None) -> Delivery:
        """Post to the webhook. Raises TransportError.

        An incoming webhook answers no ts and cannot thread, so `thread_ts`
        is not used and `Delivery.ts` is None.
        """
        try:
            response = self._client.send_dict(dict(payload))
        # Every failure becomes a TransportError with scrubbed text and no
        # chained cause: slack_sdk's messages may carry the webhook URL.
        except Exception as exc:
            raise _wrap(exc, self._secrets) from None
        if response.status_code == 200:
            return Delivery(ts=None)
        error = _line(response.body or "")
        raise _refusal(response.status_code, error, response.headers, self._secrets)

    def describe(self) -> str:
        return "Slack webhook"

    def __repr__(self) -> str:
        return "WebhookNotifier(url=***)"


class TokenNotifier:
    configured: bool = True

    def __init__(self, token: str, channel: str, *, base_url: str = "", timeout: float = 10.0) -> None:
        self.channel = channel
        self._secrets = _Secrets(token, token.strip())
        self._client = WebClient(
            token=token,
            base_url=base_url or WebClient.BASE_URL,
            timeout=timeout,  # type: ignore[arg-type]  # see WebhookNotifier
            logger=_SDK_LOG,
            retry_handlers=[],
        )

    def send(self, payload: dict[str, Any], thread_ts: str | None = None) -> Delivery:
        """chat.postMessage, as a reply in `thread_ts` if given. Raises TransportError."""
        try:
            response = self._client.chat_postMessage(
                channel=self.channel,
                text=payload.get("text"),
                blocks=payload.get("blocks"),
                thread_ts=thread_ts,
            )
        except SlackApiError as exc:
            answer = exc.response
            data = answer.data if isinstance(answer.data, dict) else {}
            error = str(data.get("error") or "")
            raise _refusal(answer.status_code, error, answer.headers, self._secrets) from None
        except Exception as exc:
            raise _wrap(exc, self._secrets) from None
        ts = response.get("ts")
        return Delivery(ts=ts if isinstance(ts, str) else None)

    def describe(self) -> str:
        return f"Slack bot token, channel {self.channel}"

    def __repr__(self) -> str:
        return f"TokenNotifier(token=***, channel={self.channel!r})"


class NullNotifier:
    configured: bool = False

    def send(self, payload: dict[str, Any], thread_ts: str | None = None) -> Delivery:
        raise TransportError("Slack is not configured", permanent=True)

    def describe(self) -> str:
        return "Slack not configured"

    def __repr__(self) -> str:
        return "NullNotifier()"


def make_notifier(webhook_url: str, token: str, channel: str, base_url: str = "") -> Notifier:
    """Webhook if webhook_url, token mode if token, else NullNotifier."""
    if webhook_url:
        return WebhookNotifier(webhook_url)
    if token:
        return TokenNotifier(token, channel, base_url=base_url)
    return NullNotifier()


class _Secrets:
    def __init__(self, *secrets: str) -> None:
        # Longest first, so a URL is hidden whole before its path is.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _url_secrets(url: str) -> list[str]:
    """The parts of a webhook URL that are credentials: its path and last segment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    last = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return [p for p in (path, parts.path, last) if len(p) >= 8]


def _refusal(status: int, error: str, headers: Mapping[str, Any], secrets: _Secrets) -> TransportError:
    """Classify an answer that was not a success."""
    error = _clip(secrets.scrub(error), 200) or "no error code"
    if status == 429 or error in _TRANSIENT_ERRORS or status >= 500:
        return TransportError(
            f"Slack could not take the message now: HTTP {status}, {error}",
            permanent=False,
            retry_after=_retry_after(headers),
        )
    return TransportError(f"Slack refused the message: HTTP {status}, {error}", permanent=True)


def _wrap(exc: Exception, secrets: _Secrets) -> TransportError:
    """Classify an exception raised before Slack answered.

    Connection errors and timeouts (OSError covers URLError and socket
    timeouts; HTTPException covers a dropped connection) are transient.
    Anything else (slack_sdk refusing a URL, a malformed URL) is permanent.
    """
    text = _clip(secrets.scrub(f"{type(exc).__name__}: {exc}"), 300)
    if isinstance(exc, OSError | HTTPException):
        return TransportError(f"Slack unreachable: {text}", permanent=False)
    if isinstance(exc, SlackClientError | ValueError):
        return TransportError(f"Slack request invalid: {text}", permanent=True)
    return TransportError(f"Slack delivery failed: {text}", permanent=True)


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    """Seconds from a Retry-After header (Slack sends whole seconds); None if absent."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return None
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None
