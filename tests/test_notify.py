"""Slack payloads, and delivery by the real slack_sdk clients to a fake Slack."""

from __future__ import annotations

import json
import logging
import socket
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from scheduler.alerting.record import KINDS, Finding
from scheduler.alerting.slack import (
    Delivery,
    NullNotifier,
    TokenNotifier,
    TransportError,
    WebhookNotifier,
    build_payload,
    make_notifier,
)

from tests.support.fakeslack import WEBHOOK_PATH, FakeSlack

TOKEN = "xoxb-000000000-fakeTokenSecret"
SINCE = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
ACTION = "python code/scheduler/control.py history reports.nightly --status failed"


def alert(**changes: Any) -> Finding:
    values: dict[str, Any] = {
        "kind": "delayed",
        "subject": "reports.nightly",
        "summary": "no successful start since 08:00 UTC (expected every 5m)",
        "since": SINCE,
        "host": "worker-1",
        "last_error": "ValueError: report template missing",
        "action": ACTION,
    }
    values.update(changes)
    return Finding(**values)


def message(event: str = "open", at: datetime | None = None, **changes: Any) -> dict[str, Any]:
    return build_payload(alert(**changes), event, at)


def header(payload: dict[str, Any]) -> str:
    block = payload["blocks"][0]
    assert block["type"] == "header"
    text: str = block["text"]["text"]
    return text


def fields(payload: dict[str, Any]) -> dict[str, str]:
    """Section fields by label: {"Job": "reports.nightly", ...}."""
    out = {}
    for block in payload["blocks"]:
        for field in block.get("fields", []):
            label, _, value = field["text"].partition("\n")
            out[label.strip("*")] = value
    return out


def section_texts(payload: dict[str, Any]) -> list[str]:
    return [b["text"]["text"] for b in payload["blocks"] if b["type"] == "section" and "text" in b]


def context_texts(payload: dict[str, Any]) -> list[str]:
    return [e["text"] for b in payload["blocks"] if b["type"] == "context" for e in b["elements"]]


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL on a port that is bound but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


# --- payloads -----------------------------------------------------------------


def test_open_payload_shows_kind_job_problem_since_host_error_and_action() -> None:
    payload = message()

    assert header(payload) == ":red_circle: Delayed job: reports.nightly"
    assert fields(payload) == {
        "Job": "reports.nightly",
        "Problem": "no successful start since 08:00 UTC (expected every 5m)",
        "Since": "2026-11-25 08:00 UTC",
        "Host": "worker-1",
    }
    assert section_texts(payload) == ["*Last error*\n`ValueError: report template missing`"]
    assert context_texts(payload) == [f"How to act: `{ACTION}`"]
    assert payload["text"] == (
        "[scheduler] Delayed job reports.nightly: no successful start since 08:00 UTC (expected every 5m)"
    )
    json.dumps(payload)  # what the clients will send


@pytest.mark.parametrize(
    ("kind", "title", "label"),
    [
        ("delayed", "Delayed job", "Job"),
        ("inactive", "Inactive job", "Job"),
        ("failing", "Failing job", "Job"),
        ("overrunning", "Overrunning job", "Job"),
        ("broken", "Broken job", "Job"),
        ("skipping", "Job skipping its slots", "Job"),
        ("late", "Jobs late", "Scope"),
        ("overloaded", "Instance overloaded", "Scope"),
        ("crashed", "Daemon crashed", "Scope"),
        ("instance", "Scheduler instance", "Scope"),
        ("database", "Database problem", "Scope"),
        ("test", "Test notification", "Scope"),
    ],
)
def test_each_kind_has_its_own_title(kind: str, title: str, label: str) -> None:
    subject = "scheduler" if label == "Scope" else "reports.nightly"
    event = "test" if kind == "test" else "open"
    payload = message(event, kind=kind, subject=subject)

    assert title in header(payload)
    assert payload["text"].startswith(f"[scheduler] {title}")
    assert fields(payload)[label] == subject
    if label == "Scope":  # "Database problem scheduler: ..." would read oddly
        assert payload["text"].startswith(f"[scheduler] {title}: ")


def test_every_kind_is_covered_by_the_title_table() -> None:
    assert len({header(message(kind=k)) for k in KINDS}) == len(KINDS)


def test_recovery_is_green_and_says_when_and_after_how_long() -> None:
    at = SINCE + timedelta(hours=1, minutes=10)
    payload = message("recover", at, last_error=None, action=None)

    assert header(payload) == ":large_green_circle: Recovered: Delayed job: reports.nightly"
    assert fields(payload)["Recovered"] == "2026-11-25 09:10 UTC (after 1h 10m)"
    assert payload["text"].startswith("[scheduler] Recovered: Delayed job reports.nightly: ")
    assert section_texts(payload) == []
    assert context_texts(payload) == []


def test_realert_says_the_incident_is_still_open() -> None:
    payload = message("realert")

    assert header(payload) == ":red_circle: Still open: Delayed job: reports.nightly"
    assert payload["text"].startswith("[scheduler] Still open: Delayed job reports.nightly: ")


def test_since_is_shown_in_utc_whatever_the_offset() -> None:
    paris = datetime(2026, 11, 25, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))

    assert fields(message(since=paris))["Since"] == "2026-11-25 08:00 UTC"


def test_long_last_error_is_cut_to_one_line_in_a_code_span() -> None:
    error = "Traceback (most recent call last):\n" + "x" * 5000

    (text,) = section_texts(message(last_error=error))

    label, _, value = text.partition("\n")
    assert label == "*Last error*"
    assert value.startswith("`Traceback (most recent call last): xxx")
    assert value.endswith("…`")
    assert len(value) <= 300 + 2


def test_huge_values_stay_under_slack_limits() -> None:
    huge = "word " * 5000
    payload = message(subject=huge, summary=huge, host=huge, last_error=huge, action=huge)

    assert len(header(payload)) <= 150
    for value in fields(payload).values():
        assert len(value) < 2000
    for text in section_texts(payload) + context_texts(payload):
        assert len(text) <= 3000
    assert len(payload["text"]) <= 3000
    assert "\n" not in payload["text"]


def test_mrkdwn_control_characters_are_escaped() -> None:
    payload = message(summary="<!channel> a & b", last_error="x > y")

    assert fields(payload)["Problem"] == "&lt;!channel&gt; a &amp; b"
    assert section_texts(payload) == ["*Last error*\n`x &gt; y`"]
    assert "<!channel>" not in payload["text"]


def test_fallback_text_is_one_line() -> None:
    payload = message(summary="first line\nsecond line")

    assert payload["text"].endswith(": first line second line")


@pytest.mark.parametrize(
    "changes",
    [
        {"kind": "slow"},
        {"event": "close"},
        {"since": datetime(2026, 11, 25, 8, 0)},
        {"at": datetime(2026, 11, 25, 9, 0)},
    ],
    ids=["kind", "event", "naive-since", "naive-at"],
)
def test_finding_and_payload_reject_unknown_values_and_naive_times(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"Finding\.|build_payload"):
        message(**changes)


# --- delivery -----------------------------------------------------------------


def token_notifier(server: FakeSlack, **kw: Any) -> TokenNotifier:
    return TokenNotifier(TOKEN, "#dev-notify", base_url=server.api_url, **kw)


def notifier_for(mode: str, server: FakeSlack) -> TokenNotifier | WebhookNotifier:
    return token_notifier(server) if mode == "token" else WebhookNotifier(server.webhook_url)


def test_token_mode_posts_to_chat_postmessage_with_bearer_token(fake_slack: FakeSlack) -> None:
    payload = message()

    delivery = token_notifier(fake_slack).send(payload)

    (request,) = fake_slack.messages
    assert request["path"] == "/api/chat.postMessage"
    assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert request["body"]["channel"] == "#dev-notify"
    assert request["body"]["text"] == payload["text"]
    assert request["body"]["blocks"] == payload["blocks"]
    assert "thread_ts" not in request["body"]
    assert delivery == Delivery(ts="1700000000.000100")


def test_recovery_is_posted_in_the_thread_of_the_open_message(fake_slack: FakeSlack) -> None:
    notifier = token_notifier(fake_slack)

    opened = notifier.send(message())
    recovered = notifier.send(message("recover", SINCE), opened.ts)

    assert fake_slack.messages[1]["body"]["thread_ts"] == opened.ts
    assert recovered.ts is not None and opened.ts is not None
    assert float(recovered.ts) > float(opened.ts)


def test_webhook_mode_posts_the_payload_to_the_webhook_url(fake_slack: FakeSlack) -> None:
    payload = message()

    delivery = WebhookNotifier(fake_slack.webhook_url).send(payload)

    (request,) = fake_slack.messages
    assert request["path"] == WEBHOOK_PATH
    assert request["body"] == payload
    assert delivery == Delivery(ts=None)


@pytest.mark.parametrize("mode", ["token", "webhook"])
def test_rate_limit_is_transient_with_retry_after(fake_slack: FakeSlack, mode: str) -> None:
    notifier = notifier_for(mode, fake_slack)
    fake_slack.fail_next(1, status=429, retry_after=7)

    with pytest.raises(TransportError) as caught:
        notifier.send(message())

    assert caught.value.permanent is False
    assert caught.value.retry_after == 7.0
    assert len(fake_slack.requests) == 1  # slack_sdk did not retry by itself


@pytest.mark.parametrize("mode", ["token", "webhook"])
def test_rate_limit_without_retry_after_leaves_it_to_the_caller(fake_slack: FakeSlack, mode: str) -> None:
    notifier = notifier_for(mode, fake_slack)
    fake_slack.fail_next(1, status=429)

    with pytest.raises(TransportError) as caught:
        notifier.send(message())

    assert (caught.value.permanent, caught.value.retry_after) == (False, None)


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("mode", ["token", "webhook"])
def test_server_error_is_transient(fake_slack: FakeSlack, mode: str, status: int) -> None:
    notifier = notifier_for(mode, fake_slack)
    fake_slack.fail_next(1, status=status)

    with pytest.raises(TransportError) as caught:
        notifier.send(message())

    assert caught.value.permanent is False
    assert f"HTTP {status}" in str(caught.value)
    assert len(fake_slack.requests) == 1


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        ("channel_not_found", True),
        ("invalid_auth", True),
        ("not_in_channel", True),
        ("ratelimited", False),
        ("internal_error", False),
    ],
)
def test_token_mode_slack_error_codes(fake_slack: FakeSlack, error: str, permanent: bool) -> None:
    fake_slack.fail_next(1, slack_error=error)

    with pytest.raises(TransportError) as caught:
        token_notifier(fake_slack).send(message())

    assert caught.value.permanent is permanent
    assert error in str(caught.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, "no_service"), (404, "channel_not_found"), (403, "invalid_token"), (400, "bad")],
)
def test_webhook_client_errors_are_permanent(fake_slack: FakeSlack, status: int, error: str) -> None:
    fake_slack.fail_next(1, status=status, slack_error=error)

    with pytest.raises(TransportError) as caught:
        WebhookNotifier(fake_slack.webhook_url).send(message())

    assert caught.value.permanent is True
    assert f"HTTP {status}, {error}" in str(caught.value)


def test_failure_is_followed_by_success_on_the_next_send(fake_slack: FakeSlack) -> None:
    notifier = token_notifier(fake_slack)
    fake_slack.fail_next(1, status=500)

    with pytest.raises(TransportError):
        notifier.send(message())
    delivery = notifier.send(message())

    assert len(fake_slack.requests) == 2
    assert len(fake_slack.messages) == 1
    assert delivery.ts == "1700000000.000100"


def test_token_mode_200_with_a_body_that_is_not_json_is_transient(fake_slack: FakeSlack) -> None:
    notifier = token_notifier(fake_slack)
    fake_slack.garble_next(1)

    with pytest.raises(TransportError) as caught:
        notifier.send(message())

    assert caught.value.permanent is False
    assert str(caught.value) == "Slack could not take the message now: HTTP 200, the answer was not JSON"
    assert notifier.send(message()).ts is not None  # the next attempt gets through
    assert len(fake_slack.messages) == 1


def test_token_mode_edits_a_message_it_sent_with_chat_update(fake_slack: FakeSlack) -> None:
    notifier = token_notifier(fake_slack)
    opened = notifier.send(message())
    assert opened.ts is not None

    notifier.update(message("update", summary="the last 12 runs failed"), opened.ts)

    [edit] = fake_slack.edits
    assert edit["path"] == "/api/chat.update"
    assert (edit["body"]["ts"], edit["body"]["channel"]) == (opened.ts, "C123")
    assert "the last 12 runs failed" in edit["body"]["text"]
    with pytest.raises(TransportError) as caught:
        notifier.update(message("update"), "1.000")  # a message Slack does not have
    assert caught.value.permanent is True and "message_not_found" in str(caught.value)


def test_webhook_mode_cannot_edit_a_message(fake_slack: FakeSlack) -> None:
    notifier = WebhookNotifier(fake_slack.webhook_url)

    with pytest.raises(TransportError) as caught:
        notifier.update(message("update"), "1700000000.000100")

    assert notifier.can_edit is False and caught.value.permanent is True
    assert fake_slack.requests == []


def test_connection_refused_is_transient(refused_url: str) -> None:
    notifiers: list[TokenNotifier | WebhookNotifier] = [
        TokenNotifier(TOKEN, "#dev-notify", base_url=refused_url + "api/"),
        WebhookNotifier(refused_url + "webhook/secret-path-123"),
    ]
    for notifier in notifiers:
        with pytest.raises(TransportError) as caught:
            notifier.send(message())
        assert caught.value.permanent is False, notifier


@pytest.mark.parametrize("mode", ["token", "webhook"])
def test_dropped_connection_is_transient_and_not_retried(fake_slack: FakeSlack, mode: str) -> None:
    notifier = notifier_for(mode, fake_slack)
    fake_slack.drop_next(2)

    with pytest.raises(TransportError) as caught:
        notifier.send(message())

    assert caught.value.permanent is False
    # slack_sdk's default handlers would have retried a dropped connection once.
    assert len(fake_slack.requests) == 1


def test_timeout_is_transient(fake_slack: FakeSlack) -> None:
    notifiers: list[TokenNotifier | WebhookNotifier] = [
        token_notifier(fake_slack, timeout=0.2),
        WebhookNotifier(fake_slack.webhook_url, timeout=0.2),
    ]
    fake_slack.hang_next(2)
    for notifier in notifiers:
        with pytest.raises(TransportError) as caught:
            notifier.send(message())
        assert caught.value.permanent is False, notifier


def assert_secret_hidden(secret: str, error: TransportError, text: str) -> None:
    assert secret not in str(error)
    assert secret not in "".join(traceback.format_exception(error))
    assert secret not in text


def test_token_never_appears_in_errors_logs_describe_or_repr(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = token_notifier(fake_slack)
    fake_slack.fail_next(1, slack_error=f"invalid_auth for {TOKEN}")

    with pytest.raises(TransportError) as caught:
        notifier.send(message())

    assert fake_slack.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "invalid_auth for ***" in str(caught.value)
    assert_secret_hidden(TOKEN, caught.value, caplog.text)
    assert notifier.describe() == "Slack bot token, channel #dev-notify"
    assert TOKEN not in repr(notifier)


def test_webhook_url_never_appears_in_errors_logs_describe_or_repr(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = WebhookNotifier(fake_slack.webhook_url)
    notifier.send(message())  # slack_sdk logs the URL of each request at DEBUG
    fake_slack.fail_next(1, status=400, slack_error=f"invalid_payload at {WEBHOOK_PATH}")

    with pytest.raises(TransportError) as caught:
        notifier.send(message())

    assert "invalid_payload at ***" in str(caught.value)
    assert_secret_hidden(WEBHOOK_PATH, caught.value, caplog.text)
    assert notifier.describe() == "Slack webhook"
    assert "fakeWebhookSecret" not in repr(notifier)


def test_webhook_url_is_scrubbed_from_wrapped_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = "ftp://hooks.example.com/services/T000/B000/anotherSecret42"
    # slack_sdk raises SlackRequestError("Invalid URL detected: <url>") and logs it.
    with pytest.raises(TransportError) as caught:
        WebhookNotifier(url).send(message())

    assert caught.value.permanent is True
    assert "***" in str(caught.value)
    assert_secret_hidden("anotherSecret42", caught.value, caplog.text)


def test_null_notifier_is_unconfigured_and_refuses_permanently() -> None:
    notifier = NullNotifier()

    with pytest.raises(TransportError, match="Slack is not configured") as caught:
        notifier.send(message())

    assert notifier.configured is False
    assert caught.value.permanent is True
    assert notifier.describe() == "Slack not configured"


def test_make_notifier_picks_webhook_then_token_then_nothing(fake_slack: FakeSlack) -> None:
    webhook = make_notifier(fake_slack.webhook_url, TOKEN, "#ops")
    token = make_notifier("", TOKEN, "#ops", base_url=fake_slack.api_url)
    nothing = make_notifier("", "", "#ops")

    assert isinstance(webhook, WebhookNotifier) and webhook.configured
    assert isinstance(token, TokenNotifier) and token.configured
    assert isinstance(nothing, NullNotifier) and not nothing.configured
    token.send(message())
    assert fake_slack.messages[0]["path"] == "/api/chat.postMessage"
    assert fake_slack.messages[0]["body"]["channel"] == "#ops"
