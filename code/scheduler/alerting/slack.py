"""Slack: alert payloads (pure) and their delivery.

`build_payload` turns a `Finding` and an event into a Block Kit message and
does no I/O.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.client import HTTPException
from typing import Any, Protocol
from urllib.parse import urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse
from slack_sdk.webhook import WebhookClient

from scheduler.alerting.record import SCHEDULER_WIDE, Finding, format_utc
from scheduler.errors import SchedulerError
from scheduler.humanize import span

_TITLES = {
    "delayed": "Delayed job",
    "inactive": "Inactive job",
    "late": "Jobs late",
    "failing": "Failing job",
    "skipping": "Job skipping its slots",
    "overrunning": "Overrunning job",
    "broken": "Broken job",
    "paused": "Job paused by the crash-loop guard",
    "instance": "Scheduler instance",
    "overloaded": "Instance overloaded",
    "crashed": "Daemon crashed",
    "database": "Database problem",
    "test": "Test notification",
}
_EMOJI = {
    "open": ":red_circle:",
    "update": ":red_circle:",
    "realert": ":red_circle:",
    "recover": ":large_green_circle:",
    "test": ":large_blue_circle:",
}
_PREFIX = {"open": "", "update": "", "realert": "Still open: ", "recover": "Recovered: ", "test": ""}
EVENTS = tuple(_PREFIX)

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

# What slack_sdk puts in `error` when the answer was not JSON (a proxy's or load balancer's page).
_NOT_JSON = "Received a response in a non-JSON format"

# slack_sdk logs request URLs at DEBUG and failures with their text at ERROR;
# for a webhook that text is the secret. This logger is outside the logging
# tree, so no configuration can turn it on; send() reports failures itself.
_SDK_LOG = logging.Logger("scheduler.alerting.slack.slack_sdk", level=logging.CRITICAL + 1)


def build_payload(alert: Finding, event: str, at: datetime | None = None) -> dict[str, Any]:
    """Slack message about `alert` for `event`: {"text": fallback, "blocks": [...Block Kit...]}. Pure.

    `at` is when it recovered (shown for "recover"). Raises ValueError for an
    unknown event or a naive `at`.
    """
    if event not in EVENTS:
        raise ValueError(f"build_payload: unknown event {event!r}")
    if at is not None and at.tzinfo is None:
        raise ValueError("build_payload: `at` must be tz-aware")
    title = _TITLES[alert.kind]
    scoped = alert.kind not in SCHEDULER_WIDE
    headline = f"{_PREFIX[event]}{title}"
    header = f"{_EMOJI[event]} {headline}" + (f": {alert.subject}" if scoped else "")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip(_line(header), HEADER_LIMIT), "emoji": True},
        },
        {"type": "section", "fields": [_field(k, v) for k, v in _facts(alert, event, at, scoped)]},
    ]
    if alert.last_error and event != "recover":
        error = _clip(_line(alert.last_error), ERROR_LIMIT).replace("`", "'")
        blocks.append(_section(f"*Last error*\n`{_escape(error)}`"))
    if alert.action and event != "recover":
        action = _escape(_line(alert.action).replace("`", "'"))
        text = _clip(f"How to act: `{action}`", TEXT_LIMIT)
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
    fallback = f"[scheduler] {headline}" + (f" {alert.subject}" if scoped else "")
    fallback = _clip(_escape(_line(f"{fallback}: {alert.summary}")), TEXT_LIMIT)
    return {"text": fallback, "blocks": blocks}


def _facts(alert: Finding, event: str, at: datetime | None, scoped: bool) -> list[tuple[str, str]]:
    facts = [
        ("Job" if scoped else "Scope", alert.subject),
        ("Problem", alert.summary),
        ("Since", format_utc(alert.since)),
    ]
    if event == "recover" and at is not None:
        lasted = span(max(0.0, (at - alert.since).total_seconds()))
        facts.append(("Recovered", f"{format_utc(at)} (after {lasted})"))
    if alert.host:
        facts.append(("Host", alert.host))
    return facts


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
    can_edit: bool  # True if `update` can edit a message sent before (token mode)

    def send(self, payload: dict[str, Any], thread_ts: str | None = None) -> Delivery:
        """Deliver one payload once. Raises TransportError."""
        ...

    def update(self, payload: dict[str, Any], ts: str) -> Delivery:
        """Replace the message `ts` with `payload`. Raises TransportError."""
        ...

    def describe(self) -> str:
        """Where messages go, without the secret."""
        ...


class WebhookNotifier:
    configured: bool = True
    can_edit: bool = False

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

    def update(self, payload: dict[str, Any], ts: str) -> Delivery:
        """An incoming webhook cannot edit a message: refused for good."""
        raise TransportError("a Slack webhook cannot edit a message", permanent=True)

    def describe(self) -> str:
        return "Slack webhook"

    def __repr__(self) -> str:
        return "WebhookNotifier(url=***)"


class TokenNotifier:
    configured: bool = True
    can_edit: bool = True

    def __init__(self, token: str, channel: str, *, base_url: str = "", timeout: float = 10.0) -> None:
        self.channel = channel
        self._channel_id: dict[str, str] = {}
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
        return self._call(
            lambda: self._client.chat_postMessage(
                channel=self.channel,
                text=payload.get("text"),
                blocks=payload.get("blocks"),
                thread_ts=thread_ts,
            )
        )

    def update(self, payload: dict[str, Any], ts: str) -> Delivery:
        """chat.update of the message `ts` in the channel. Raises TransportError."""
        return self._call(
            lambda: self._client.chat_update(
                channel=self._channel_id.get(ts, self.channel),
                ts=ts,
                text=payload.get("text"),
                blocks=payload.get("blocks"),
            )
        )

    def _call(self, request: Callable[[], SlackResponse]) -> Delivery:
        try:
            response = request()
        except SlackApiError as exc:
            answer = exc.response
            data = answer.data if isinstance(answer.data, dict) else {}
            error = str(data.get("error") or "")
            if error.startswith(_NOT_JSON):
                # A proxy or an outage page answering for Slack: nothing was posted, try again later.
                raise TransportError(
                    f"Slack could not take the message now: HTTP {answer.status_code}, "
                    "the answer was not JSON",
                    permanent=False,
                    retry_after=_retry_after(answer.headers),
                ) from None
            raise _refusal(answer.status_code, error, answer.headers, self._secrets) from None
        except Exception as exc:
            raise _wrap(exc, self._secrets) from None
        ts, channel = response.get("ts"), response.get("channel")
        if isinstance(ts, str) and isinstance(channel, str):
            self._channel_id[ts] = channel  # chat.update wants the channel id, not its name
        return Delivery(ts=ts if isinstance(ts, str) else None)

    def describe(self) -> str:
        return f"Slack bot token, channel {self.channel}"

    def __repr__(self) -> str:
        return f"TokenNotifier(token=***, channel={self.channel!r})"


class NullNotifier:
    configured: bool = False
    can_edit: bool = False

    def send(self, payload: dict[str, Any], thread_ts: str | None = None) -> Delivery:
        raise TransportError("Slack is not configured", permanent=True)

    def update(self, payload: dict[str, Any], ts: str) -> Delivery:
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
