"""One owner of "when does this job run next": the dispatcher and every surface agree.

`next` and `jobs` (scheduler.operator.queries) and the dispatcher both take the
effective schedule and the cursor from scheduler.jobs.effective. These tests
drive a real dispatcher on a FakeClock and a real SQLite store, and compare.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

from scheduler.clock import FakeClock
from scheduler.operator import queries

from tests.test_dispatcher import START, Harness, interval_job

NAME = "prop.job"


def _noop() -> None: ...


def shown_next(harness: Harness) -> datetime | None:
    """What `jobs` (and the API, dashboard, metrics) shows as the next run."""
    view = queries.show_job(harness.store, NAME, harness.clock.now())
    return datetime.fromisoformat(view["next_run"]["at"]) if view["next_run"] else None


def test_resume_while_no_daemon_runs_records_no_missed_rows_and_next_matches_the_claim(
    tmp_path: Path,
) -> None:
    clock = FakeClock(START)
    first = Harness(tmp_path, clock)
    first.load(interval_job(NAME, 10, _noop))
    first.advance_and_tick(timedelta(seconds=1))
    first.store.jobs.set_paused(NAME, True, "ops", clock.now())
    first.close()  # the daemon stops while the job is paused

    clock.advance(timedelta(minutes=10))
    resumed_at = clock.now()
    Harness(tmp_path, clock).store.jobs.set_paused(NAME, False, "ops", resumed_at)
    clock.advance(timedelta(seconds=25))  # resumed 25 s before the daemon starts again

    second = Harness(tmp_path, clock)
    try:
        second.load(interval_job(NAME, 10, _noop))
        expected = shown_next(second)
        assert expected is not None and second.dispatcher.next_due() == expected
        won = second.tick()
        assert won[0].scheduled_for == expected
        rows = second.runs(NAME)
        assert not [r for r in rows if r.status == "missed" and r.scheduled_for <= resumed_at]
        # Only the slots since the resume (12:10:10 missed, 12:10:20 run) are caught up.
        assert [r.status for r in rows] == ["succeeded", "missed", "succeeded"]
    finally:
        second.close()


def _step(harness: Harness, rng: random.Random) -> str:
    """One random operator action or passage of time; returns what it did."""
    now = harness.clock.now()
    action = rng.choice(["pause", "resume", "set", "cron", "clear", "wait", "wait", "run"])
    if action == "pause":
        harness.store.jobs.set_paused(NAME, True, "ops", now)
    elif action == "resume":
        harness.store.jobs.set_paused(NAME, False, "ops", now)
    elif action == "set":
        seconds = rng.choice([7, 15, 60, 90])
        harness.store.jobs.set_schedule(NAME, "ops", now, interval=timedelta(seconds=seconds))
    elif action == "cron":
        harness.store.jobs.set_schedule(NAME, "ops", now, cron=rng.choice(["* * * * *", "*/2 * * * *"]))
    elif action == "clear":
        harness.store.jobs.set_schedule(NAME, "ops", now)
    elif action == "wait":
        harness.clock.advance(timedelta(seconds=rng.uniform(0.1, 200)))
    return action


def _check_agreement(harness: Harness, history: list[str]) -> None:
    """The next slot shown is the one the dispatcher claims next, and no pause made `missed` rows."""
    harness.dispatcher.poll(harness.clock.now())
    harness.tick()  # the daemon decides what is due now; the rest is the future
    shown = shown_next(harness)
    state = harness.dispatcher.states[NAME]
    if shown is None:
        assert state.row.paused, history
        return
    assert state.next_at == shown, history
    listed = queries.next_slots(harness.store, NAME, harness.clock.now(), 1)["slots"][0]["at"]
    assert datetime.fromisoformat(listed) == shown, history
    harness.clock.set(shown)
    won = harness.tick()
    assert [c.scheduled_for for c in won] == [shown], history


def test_random_pause_resume_set_clear_restart_sequences_agree_on_the_next_slot(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    for case in range(12):
        clock = FakeClock(START)
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        harness = Harness(folder, clock)
        spec = interval_job(NAME, rng.choice([10, 30, 60]), _noop, catchup="latest")
        harness.load(spec)
        history: list[str] = []
        paused_since: datetime | None = None
        pauses: list[tuple[datetime, datetime]] = []
        try:
            for _ in range(25):
                action = _step(harness, rng)
                history.append(action)
                row = harness.store.jobs.get(NAME)
                if row.paused and paused_since is None:
                    paused_since = clock.now()
                elif not row.paused and paused_since is not None:
                    pauses.append((paused_since, clock.now()))
                    paused_since = None
                if action == "run" or rng.random() < 0.3:
                    _check_agreement(harness, history)
                if rng.random() < 0.15:  # a restart: a new dispatcher on the same database
                    history.append("restart")
                    harness.close()
                    harness = Harness(folder, clock)
                    harness.load(spec)
            _check_agreement(harness, history)
            missed = [r.scheduled_for for r in harness.runs(NAME) if r.status == "missed"]
            for begin, end in pauses:
                assert not [m for m in missed if begin < m <= end], history
        finally:
            harness.close()
