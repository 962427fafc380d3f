"""The recorder: batched writes, outages of a real database, spooling at exit, replay."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from scheduler.clock import FakeClock, SystemClock
from scheduler.engine.recorder import BATCH, Recorder
from scheduler.store import Claim, Outcome, Owner, Store

from tests.support.polling import wait_until
from tests.support.tcpproxy import TcpProxy

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OWNER = Owner("recorder-test", "test-host", 555)


def claim_runs(store: Store, count: int, job: str = "rec.job") -> list[tuple[int, int]]:
    claims = [Claim(f"{job}{i}", NOW + timedelta(seconds=i)) for i in range(count)]
    won = store.runs.claim(claims, OWNER, NOW, NOW + timedelta(hours=1))
    return [(c.run_id, c.fence) for c in won]


def outcome(run_id: int, fence: int, i: int = 0) -> Outcome:
    return Outcome(
        run_id=run_id,
        fence=fence,
        status="failed" if i % 2 else "succeeded",
        finished_at=NOW + timedelta(seconds=30, microseconds=i),
        started_at=NOW + timedelta(seconds=1),
        attempt=1 + i % 3,
        error_type="ValueError" if i % 2 else None,
        error_message=f"bad value {i}" if i % 2 else None,
        log=f"log of run {run_id}\n",
        log_truncated=bool(i % 5 == 0),
    )


def assert_written(store: Store, outcomes: Sequence[Outcome]) -> None:
    for o in outcomes:
        row = store.runs.get(o.run_id)
        assert (row.status, row.attempt, row.error_message, row.log) == (
            o.status,
            o.attempt,
            o.error_message,
            o.log,
        )
        assert (row.finished_at, row.started_at, row.log_truncated) == (
            o.finished_at,
            o.started_at,
            o.log_truncated,
        )


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'rec.db'}")
    store.upgrade()
    yield store
    store.dispose()


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    store = Store(pg_url)
    store.upgrade()
    yield store
    store.dispose()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy()
    yield p
    p.close()


class HealthLog:
    def __init__(self) -> None:
        self.events: list[bool] = []

    def __call__(self, ok: bool, why: str) -> None:
        if not self.events or self.events[-1] != ok:
            self.events.append(ok)


# -- batches -------------------------------------------------------------------------------


def test_outcomes_are_written_in_batches(sqlite_store: Store, tmp_path: Path) -> None:
    runs = claim_runs(sqlite_store, BATCH * 2 + 200)
    batches: list[int] = []

    def write(batch: Sequence[Outcome]) -> list[int]:
        batches.append(len(batch))
        return sqlite_store.runs.finish(batch)

    recorder = Recorder(SystemClock(), write, tmp_path / "spool.jsonl")
    outcomes = [outcome(r, f, i) for i, (r, f) in enumerate(runs)]
    for o in outcomes:
        recorder.record(o)
    assert recorder.pending == len(outcomes)

    while recorder.pending:
        assert recorder.flush_once()
    assert batches == [BATCH, BATCH, 200]
    assert recorder.written == len(outcomes)
    assert_written(sqlite_store, outcomes)


def test_the_recorder_thread_writes_what_jobs_report(sqlite_store: Store, tmp_path: Path) -> None:
    runs = claim_runs(sqlite_store, 20)
    recorder = Recorder(SystemClock(), sqlite_store.runs.finish, tmp_path / "spool.jsonl")
    recorder.start()
    outcomes = [outcome(r, f, i) for i, (r, f) in enumerate(runs)]
    for o in outcomes:
        recorder.record(o)
    wait_until(lambda: recorder.written == 20)
    recorder.close(SystemClock().monotonic() + 5)
    assert_written(sqlite_store, outcomes)
    assert not (tmp_path / "spool.jsonl").exists()


def test_a_result_whose_lease_was_lost_is_counted_and_not_written(
    sqlite_store: Store, tmp_path: Path
) -> None:
    ((run_id, fence),) = claim_runs(sqlite_store, 1)
    sqlite_store.runs.reap(NOW + timedelta(hours=2), reason="lease expired")
    recorder = Recorder(SystemClock(), sqlite_store.runs.finish, tmp_path / "spool.jsonl")
    recorder.record(outcome(run_id, fence))
    assert recorder.flush_once()
    assert (recorder.written, recorder.lost_leases) == (0, 1)
    assert sqlite_store.runs.get(run_id).status == "abandoned"


# -- a real outage ----------------------------------------------------------------------------


def test_outcomes_are_kept_while_the_database_is_away_and_written_when_it_answers(
    pg_url: str, pg_store: Store, proxy: TcpProxy, tmp_path: Path
) -> None:
    runs = claim_runs(pg_store, 30)
    via_proxy = Store(proxy.url_for(pg_url))
    health = HealthLog()
    recorder = Recorder(SystemClock(), via_proxy.runs.finish, tmp_path / "spool.jsonl", health)
    try:
        recorder.start()
        outcomes = [outcome(r, f, i) for i, (r, f) in enumerate(runs)]
        recorder.record(outcomes[0])
        wait_until(lambda: recorder.written == 1)

        proxy.cut()
        for o in outcomes[1:]:
            recorder.record(o)
        wait_until(lambda: health.events[-1] is False)
        assert recorder.pending == 29
        assert {pg_store.runs.get(o.run_id).status for o in outcomes[1:]} == {"running"}

        proxy.restore()
        wait_until(lambda: recorder.written == 30, timeout=20)
        assert recorder.pending == 0
        assert health.events == [True, False, True]
        assert_written(pg_store, outcomes)
    finally:
        recorder.close(SystemClock().monotonic() + 1)
        via_proxy.dispose()


def test_a_nudge_ends_the_backoff_when_the_database_is_seen_again(
    pg_url: str, pg_store: Store, proxy: TcpProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scheduler.engine.recorder.MIN_BACKOFF", 60.0)  # a retry would come only in a minute
    runs = claim_runs(pg_store, 3)
    via_proxy = Store(proxy.url_for(pg_url))
    health = HealthLog()
    recorder = Recorder(SystemClock(), via_proxy.runs.finish, tmp_path / "spool.jsonl", health)
    try:
        recorder.start()
        proxy.cut()
        outcomes = [outcome(r, f, i) for i, (r, f) in enumerate(runs)]
        for o in outcomes:
            recorder.record(o)
        wait_until(lambda: health.events and health.events[-1] is False)

        proxy.restore()
        recorder.nudge()  # what the service does when a heartbeat gets through
        wait_until(lambda: recorder.written == 3, timeout=10)
        assert_written(pg_store, outcomes)
    finally:
        recorder.close(SystemClock().monotonic() + 1)
        via_proxy.dispose()


def test_close_spools_what_cannot_be_written_and_replay_writes_it_back(
    pg_url: str, pg_store: Store, proxy: TcpProxy, tmp_path: Path
) -> None:
    runs = claim_runs(pg_store, 12)
    outcomes = [outcome(r, f, i) for i, (r, f) in enumerate(runs)]
    spool = tmp_path / "var" / "spool.jsonl"
    via_proxy = Store(proxy.url_for(pg_url))
    first = Recorder(SystemClock(), via_proxy.runs.finish, spool)
    try:
        first.start()
        proxy.cut()
        for o in outcomes:
            first.record(o)
        first.close(SystemClock().monotonic() + 0.5)  # the database does not come back in time
    finally:
        via_proxy.dispose()

    assert first.pending == 0
    lines = spool.read_text().splitlines()
    assert len(lines) == 12
    assert json.loads(lines[0])["run_id"] == outcomes[0].run_id
    assert {pg_store.runs.get(o.run_id).status for o in outcomes} == {"running"}

    # The next start replays the spool once the database answers.
    proxy.restore()
    second = Recorder(SystemClock(), pg_store.runs.finish, spool)
    assert second.replay_spool() == 12
    assert not spool.exists()
    assert second.flush_once()
    assert second.written == 12
    assert_written(pg_store, outcomes)
    assert second.replay_spool() == 0


def test_spooled_records_from_several_exits_all_replay(sqlite_store: Store, tmp_path: Path) -> None:
    runs = claim_runs(sqlite_store, 4)
    outcomes = [outcome(r, f, i) for i, (r, f) in enumerate(runs)]
    spool = tmp_path / "spool.jsonl"
    down = Store("postgresql://postgres:never-shown@127.0.0.1:1/none")
    try:
        for pair in (outcomes[:2], outcomes[2:]):
            recorder = Recorder(SystemClock(), down.runs.finish, spool)
            for o in pair:
                recorder.record(o)
            assert not recorder.flush_once()
            recorder.close(SystemClock().monotonic())
    finally:
        down.dispose()
    assert "never-shown" not in spool.read_text()
    replay = Recorder(SystemClock(), sqlite_store.runs.finish, spool)
    assert replay.replay_spool() == 4
    assert replay.flush_once()
    assert_written(sqlite_store, outcomes)


def test_close_gives_up_at_its_deadline_on_the_injected_clock(sqlite_store: Store, tmp_path: Path) -> None:
    ((run_id, fence),) = claim_runs(sqlite_store, 1)
    clock = FakeClock(NOW)
    down = Store("postgresql://postgres@127.0.0.1:1/none")
    recorder = Recorder(clock, down.runs.finish, tmp_path / "spool.jsonl")
    recorder.record(outcome(run_id, fence))
    closer = threading.Thread(target=recorder.close, args=(clock.monotonic() + 5,), daemon=True)
    try:
        closer.start()
        closer.join(timeout=20)
        assert not closer.is_alive(), "close() kept retrying past its deadline"
    finally:
        down.dispose()
    assert len((tmp_path / "spool.jsonl").read_text().splitlines()) == 1


def test_a_write_hanging_past_the_deadline_is_spooled_not_lost(tmp_path: Path) -> None:
    """A network black hole: the database host accepts TCP but never answers."""
    black_hole = socket.create_server(("127.0.0.1", 0))  # listens, never accepts or replies
    port = black_hole.getsockname()[1]
    silent = Store(f"postgresql://postgres@127.0.0.1:{port}/jobs")
    spool = tmp_path / "spool.jsonl"
    recorder = Recorder(SystemClock(), silent.runs.finish, spool)
    try:
        recorder.start()
        recorder.record(outcome(1, 1))
        wait_until(lambda: recorder.pending == 0)  # the thread holds it, waiting on the database
        recorder.close(SystemClock().monotonic() + 0.2)
    finally:
        silent.dispose()
        black_hole.close()
    lines = spool.read_text().splitlines() if spool.exists() else []
    assert [json.loads(line)["run_id"] for line in lines] == [1]
