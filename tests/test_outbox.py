"""The notice outbox: claims, retries with backoff, permanent failures, concurrent senders.

Real slack_sdk clients send to a fake Slack; the store is SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from scheduler.alerting.outbox import BASE_BACKOFF, CLAIM_HOLD, GIVE_UP_AFTER, OutboxSender, backoff
from scheduler.alerting.record import Finding
from scheduler.alerting.slack import build_payload, make_notifier
from scheduler.clock import FakeClock
from scheduler.store import Store
from scheduler.store.incidents import IncidentRow

from tests.support.fakeslack import FakeSlack
from tests.support.outbox import notices
from tests.support.polling import wait_until

TOKEN = "xoxb-111111111-outboxTokenSecret"


def token_sender(store: Store, fake: FakeSlack, clock: FakeClock, worker: str = "w1") -> OutboxSender:
    return OutboxSender(store, make_notifier("", TOKEN, "#dev-notify", fake.api_url), clock, worker)


def queue_open(store: Store, clock: FakeClock, subject: str = "reports.daily") -> IncidentRow:
    alert = Finding(subject, "failing", "the last run failed", clock.now(), host="node-a")
    incident = store.incidents.open_incident(
        subject, "failing", "the last run failed", {}, clock.now(), build_payload(alert, "open")
    )
    assert incident is not None
    return incident


def queue_recover(store: Store, clock: FakeClock, incident: IncidentRow) -> None:
    payload = build_payload(Finding.from_incident(incident), "recover", clock.now())
    assert store.incidents.close_incident(incident.id, clock.now(), payload) is not None


def test_backoff_is_exponential_and_capped_and_obeys_retry_after() -> None:
    assert [backoff(n, None) for n in (1, 2, 3)] == [BASE_BACKOFF, 2 * BASE_BACKOFF, 4 * BASE_BACKOFF]
    assert backoff(50, None) == timedelta(minutes=10)
    assert backoff(3, 42.0) == timedelta(seconds=42)


def test_notice_is_sent_once_and_marked_sent_with_its_ts(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    incident = queue_open(store, clock)
    sender = token_sender(store, fake_slack, clock)
    assert sender.drain() == "1 sent"
    assert sender.drain() == "no notices due"
    assert len(fake_slack.messages) == 1
    [row] = notices(store)
    assert (row.status, row.attempts, row.sent_at) == ("sent", 1, clock.now())
    assert row.slack_ts is not None
    assert store.incidents.incidents()[0].slack_ts == row.slack_ts
    assert incident.last_notified_at == clock.now()


def test_429_waits_for_retry_after_through_next_attempt_at(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    queue_open(store, clock)
    sender = token_sender(store, fake_slack, clock)
    fake_slack.fail_next(1, status=429, retry_after=30)
    assert sender.drain() == "1 retry"
    [row] = notices(store)
    assert row.status == "pending"
    assert row.next_attempt_at == clock.now() + timedelta(seconds=30)
    assert "429" in (row.last_error or "")
    clock.advance(29)
    assert sender.drain() == "no notices due"
    assert len(fake_slack.requests) == 1
    clock.advance(1)
    assert sender.drain() == "1 sent"
    assert [r.status for r in notices(store)] == ["sent"]
    assert len(fake_slack.messages) == 1


def test_500_retries_with_exponential_backoff(store: Store, fake_slack: FakeSlack, clock: FakeClock) -> None:
    queue_open(store, clock)
    sender = token_sender(store, fake_slack, clock)
    fake_slack.fail_next(3, status=500)
    waits = []
    for _ in range(3):
        assert sender.drain() == "1 retry"
        [row] = notices(store)
        waits.append(row.next_attempt_at - clock.now())
        clock.set(row.next_attempt_at)
    assert waits == [BASE_BACKOFF, 2 * BASE_BACKOFF, 4 * BASE_BACKOFF]
    assert sender.drain() == "1 sent"
    assert notices(store)[0].attempts == 4
    assert len(fake_slack.messages) == 1


def test_network_error_is_retried(store: Store, fake_slack: FakeSlack, clock: FakeClock) -> None:
    queue_open(store, clock)
    sender = token_sender(store, fake_slack, clock)
    fake_slack.drop_next(1)
    assert sender.drain() == "1 retry"
    clock.advance(BASE_BACKOFF)
    assert sender.drain() == "1 sent"


def test_permanent_error_marks_failed_and_is_not_retried(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    queue_open(store, clock)
    sender = token_sender(store, fake_slack, clock)
    fake_slack.fail_next(1, slack_error="channel_not_found")
    assert sender.drain() == "1 failed"
    [row] = notices(store)
    assert row.status == "failed"
    assert "channel_not_found" in (row.last_error or "")
    assert TOKEN not in (row.last_error or "")
    clock.advance(timedelta(hours=1))
    assert sender.drain() == "no notices due"
    assert len(fake_slack.requests) == 1


def test_rate_limit_holds_back_the_rest_of_the_batch(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    for n in range(3):
        queue_open(store, clock, f"job{n}")
    sender = token_sender(store, fake_slack, clock)
    fake_slack.fail_next(1, status=429, retry_after=20)
    assert sender.drain() == "1 retry"
    assert len(fake_slack.requests) == 1  # the other two were not tried into the rate limit
    rows = notices(store)
    assert {r.next_attempt_at for r in rows} == {clock.now() + timedelta(seconds=20)}
    assert [r.attempts for r in rows] == [1, 0, 0]
    clock.advance(20)
    assert sender.drain() == "3 sent"


def test_recovery_waits_for_its_opening_message_then_threads_under_it(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    incident = queue_open(store, clock)
    sender = token_sender(store, fake_slack, clock)
    fake_slack.fail_next(1, status=500)
    assert sender.drain() == "1 retry"
    queue_recover(store, clock, incident)
    clock.advance(BASE_BACKOFF / 2)
    assert sender.drain() == "no notices due"  # the recovery does not overtake the opening
    clock.advance(BASE_BACKOFF)
    assert sender.drain() == "2 sent"
    opening, recovery = fake_slack.messages
    assert "thread_ts" not in opening["body"]
    assert recovery["body"]["thread_ts"] == store.incidents.incidents()[0].slack_ts
    assert "Recovered" in recovery["body"]["text"]


def test_lapsed_claim_is_taken_over_by_another_sender(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    queue_open(store, clock)
    # A sender that claimed and died before sending:
    assert len(store.outbox.claim_due("dead", clock.now(), CLAIM_HOLD)) == 1
    sender = token_sender(store, fake_slack, clock, "w2")
    assert sender.drain() == "no notices due"
    clock.advance(CLAIM_HOLD + timedelta(seconds=1))
    assert sender.drain() == "1 sent"
    assert store.outbox.mark_sent(1, "dead", clock.now(), "1.2") is False  # the dead one cannot mark it
    assert len(fake_slack.messages) == 1


def test_unconfigured_sender_leaves_notices_pending(store: Store, clock: FakeClock) -> None:
    queue_open(store, clock)
    sender = OutboxSender(store, make_notifier("", "", "#dev-notify"), clock, "w1")
    assert sender.drain() == "Slack not configured"
    assert [r.status for r in notices(store)] == ["pending"]


def test_webhook_mode_sends_through_the_webhook(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    queue_open(store, clock)
    sender = OutboxSender(store, make_notifier(fake_slack.webhook_url, "", "#dev-notify"), clock, "w1")
    assert sender.drain() == "1 sent"
    assert fake_slack.messages[0]["path"].startswith("/webhook/")
    assert notices(store)[0].slack_ts is None


@pytest.mark.postgres
def test_two_concurrent_senders_on_postgresql_send_each_notice_once(
    pg_url: str, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    stores = [Store(pg_url), Store(pg_url)]
    stores[0].upgrade()
    try:
        for n in range(40):
            queue_open(stores[0], clock, f"job{n:02d}")
        senders = [token_sender(s, fake_slack, clock, f"w{i}") for i, s in enumerate(stores)]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def drain_all(sender: OutboxSender) -> None:
            try:
                barrier.wait(timeout=10)
                for _ in range(20):
                    if sender.drain() == "no notices due":
                        return
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=drain_all, args=(s,)) for s in senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert not errors
        wait_until(lambda: len(fake_slack.messages) >= 40, timeout=5)
        texts = [m["body"]["text"] for m in fake_slack.messages]
        assert len(texts) == 40 == len(set(texts))
        rows = notices(stores[0])
        assert {r.status for r in rows} == {"sent"}
    finally:
        for s in stores:
            s.dispose()


def test_notice_undelivered_for_a_day_is_given_up(
    store: Store, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    queue_open(store, clock)
    sender = token_sender(store, fake_slack, clock)
    fake_slack.fail_next(1, status=500)
    assert sender.drain() == "1 retry"
    clock.advance(GIVE_UP_AFTER)
    fake_slack.fail_next(1, status=502)
    assert sender.drain() == "1 failed"
    [row] = notices(store)
    assert row.status == "failed"
    assert (row.last_error or "").startswith("gave up after 2 attempts: ")
    assert sender.drain() == "no notices due"
