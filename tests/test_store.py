"""The store contract, run on SQLite and on PostgreSQL (the parametrised `store` fixture)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from scheduler.errors import JobDefinitionError, NotFoundError, StoreError, StoreUnavailable
from scheduler.jobs.effective import schedule_of
from scheduler.jobs.registry import JobSpec, make_spec
from scheduler.jobs.schedules import CronSchedule, IntervalSchedule
from scheduler.operator import actions
from scheduler.store import Claim, Outcome, Owner, RunRow, Store
from scheduler.store.schema import metadata

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
A = Owner("instance-a", "host-a", 101)
B = Owner("instance-b", "host-b", 202)
LEASE = timedelta(seconds=10)


def _noop() -> None: ...


def spec(name: str, seconds: float = 60, **options: object) -> JobSpec:
    return make_spec(_noop, name=name, interval=timedelta(seconds=seconds), **options)


def slot(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


def claim_one(
    store: Store, job: str, at: datetime, owner: Owner = A, begin: bool = True, **kw: str
) -> list[int]:
    """Claim one slot; a run won is also begun (its start written), as the pool would."""
    won = store.runs.claim([Claim(job, at, **kw)], owner, NOW, NOW + LEASE)
    if begin:
        store.runs.mark_started([(c.run_id, c.fence, NOW) for c in won if c.status == "running"])
    return [c.run_id for c in won]


def rows(store: Store, job: str) -> list[RunRow]:
    return sorted(store.runs.history(job=job, limit=1000), key=lambda r: r.id)


def finish(store: Store, run_id: int, fence: int, status: str = "succeeded", **kw: object) -> list[int]:
    outcome = Outcome(run_id=run_id, fence=fence, status=status, finished_at=NOW + timedelta(seconds=5), **kw)  # type: ignore[arg-type]
    return store.runs.finish([outcome])


# -- schema and migrations ------------------------------------------------------------


def test_upgrade_creates_every_table_at_the_head_revision(store: Store) -> None:
    assert store.db.current_revision() == store.db.head_revision()
    tables = set(sa.inspect(store.db.engine).get_table_names())
    assert {"jobs", "runs", "instances", "leases", "incidents", "outbox", "audit"} <= tables


def test_migrations_produce_exactly_the_declared_tables(store: Store) -> None:
    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []


def test_upgrade_is_idempotent_and_keeps_data(store: Store) -> None:
    store.jobs.sync([spec("keep.me")], NOW)
    claim_one(store, "keep.me", slot(1))
    store.upgrade()
    store.upgrade()
    assert store.db.current_revision() == store.db.head_revision()
    assert [j.name for j in store.jobs.all()] == ["keep.me"]
    assert len(rows(store, "keep.me")) == 1


def test_a_database_from_newer_code_is_refused_naming_its_revision(store: Store) -> None:
    with store.db.write() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(StoreError, match="newer than this code") as info:
        store.upgrade()
    assert "'9999_from_the_future'" in str(info.value)
    # Nothing was touched: the foreign revision is still there.
    assert store.db.current_revision() == "9999_from_the_future"


def test_concurrent_upgrades_of_an_empty_database_both_succeed(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(3)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def upgrade(s: Store) -> None:
        barrier.wait(timeout=10)
        try:
            s.upgrade()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        assert stores[0].db.current_revision() == stores[0].db.head_revision()
    finally:
        for s in stores:
            s.dispose()


def test_instants_come_back_tz_aware_utc(store: Store) -> None:
    (run_id,) = claim_one(store, "tz.job", datetime(2026, 3, 1, 13, 0, tzinfo=UTC))
    row = store.runs.get(run_id)
    assert row.scheduled_for == datetime(2026, 3, 1, 13, 0, tzinfo=UTC)
    assert row.scheduled_for.utcoffset() == timedelta(0)
    assert row.started_at == NOW and row.lease_expires_at == NOW + LEASE


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(Exception, match="naive datetime given to the store"):
        store.runs.claim([Claim("naive.job", datetime(2026, 3, 1, 12))], A, NOW, NOW + LEASE)


def test_unreachable_postgres_is_transient_and_hides_the_password() -> None:
    store = Store("postgresql://sched:hunter2-pw@127.0.0.1:1/jobs")
    try:
        assert "hunter2-pw" not in store.safe_url
        with pytest.raises(StoreUnavailable) as info:
            store.jobs.all()
        assert "hunter2-pw" not in str(info.value)
    finally:
        store.dispose()


def test_unsupported_database_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="database URL"):
        Store("nosuchdialect://u:hunter2-pw@h/db")


# -- jobs ---------------------------------------------------------------------------


def test_sync_anchors_new_jobs_at_the_next_whole_second(store: Store) -> None:
    now = NOW + timedelta(milliseconds=300)
    synced = store.jobs.sync([spec("a.job"), spec("b.job", cron=None)], now)
    assert synced["a.job"].anchor_at == NOW + timedelta(seconds=1)
    assert synced["a.job"].defined_at == now
    assert schedule_of(synced["a.job"]) == IntervalSchedule(timedelta(seconds=60), NOW + timedelta(seconds=1))
    assert synced["a.job"].schedule_text == "every 1m"


def test_resync_keeps_anchor_pause_and_overrides_but_takes_the_new_definition(store: Store) -> None:
    store.jobs.sync([spec("sync.job", 60)], NOW)
    store.jobs.set_paused("sync.job", True, "alice", NOW + timedelta(minutes=1))
    store.jobs.set_schedule("sync.job", "alice", NOW + timedelta(minutes=2), interval=timedelta(seconds=30))

    later = NOW + timedelta(hours=1)
    row = store.jobs.sync([spec("sync.job", 120, retries=3)], later)["sync.job"]

    assert row.anchor_at == NOW + timedelta(seconds=1)
    assert row.defined_at == NOW
    assert row.paused is True
    assert row.override_interval_seconds == 30
    assert row.definition["interval_seconds"] == 120 and row.definition["retries"] == 3
    assert row.schedule_text == "every 2m"
    assert row.updated_at == later and row.loaded_at == later
    assert schedule_of(row) == IntervalSchedule(timedelta(seconds=30), row.anchor_at)


def test_resync_of_an_unchanged_definition_does_not_mark_it_changed(store: Store) -> None:
    store.jobs.sync([spec("same.job")], NOW)
    row = store.jobs.sync([spec("same.job")], NOW + timedelta(hours=1))["same.job"]
    assert row.updated_at == NOW
    assert row.loaded_at == NOW + timedelta(hours=1)
    assert store.jobs.changed_since(NOW + timedelta(hours=1)) == []


def test_sync_returns_jobs_not_loaded_any_more_too(store: Store) -> None:
    store.jobs.sync([spec("old.job"), spec("kept.job")], NOW)
    synced = store.jobs.sync([spec("kept.job")], NOW + timedelta(hours=1))
    assert synced["old.job"].loaded_at == NOW
    assert synced["kept.job"].loaded_at == NOW + timedelta(hours=1)


def test_pause_and_resume_write_audit_rows(store: Store) -> None:
    store.jobs.sync([spec("audited.job")], NOW)
    paused = store.jobs.set_paused("audited.job", True, "alice", NOW + timedelta(minutes=1))
    assert paused.paused and paused.changed_by == "alice"
    store.jobs.set_paused("audited.job", False, "bob", NOW + timedelta(minutes=2))
    entries = store.jobs.audit_log(job="audited.job")
    assert [(e.actor, e.action) for e in entries] == [("bob", "resume"), ("alice", "pause")]
    assert entries[1].at == NOW + timedelta(minutes=1)
    assert entries[1].details == {"paused": True}


def test_changed_since_leaves_out_the_rows_the_caller_knows_with_the_same_stamp(store: Store) -> None:
    store.jobs.sync([spec("known.same"), spec("known.changed"), spec("unknown.job")], NOW)
    known = {r.name: r for r in store.jobs.all() if r.name.startswith("known.")}
    store.jobs.set_paused("known.changed", True, "ops", NOW + timedelta(seconds=1))
    changed = store.jobs.changed_since(NOW, known)
    assert sorted(r.name for r in changed) == ["known.changed", "unknown.job"]
    assert next(r for r in changed if r.name == "known.changed").paused
    assert sorted(r.name for r in store.jobs.changed_since(NOW)) == [
        "known.changed",
        "known.same",
        "unknown.job",
    ]


def test_schedule_override_is_audited_visible_to_pollers_and_can_be_unset(store: Store) -> None:
    store.jobs.sync([spec("over.job")], NOW)
    at = NOW + timedelta(minutes=10)
    row = store.jobs.set_schedule("over.job", "ops", at, cron="0 6 * * *", timezone="Europe/Paris")
    assert row.overridden and schedule_of(row) == CronSchedule("0 6 * * *", "Europe/Paris")
    assert [r.name for r in store.jobs.changed_since(at)] == ["over.job"]

    row = store.jobs.set_schedule("over.job", "ops", at + timedelta(minutes=1))
    assert not row.overridden
    assert schedule_of(row) == IntervalSchedule(timedelta(seconds=60), row.anchor_at)
    entries = store.jobs.audit_log(job="over.job")
    assert [e.action for e in entries] == ["unset", "set"]
    assert entries[1].details == {"override_cron": "0 6 * * *", "override_timezone": "Europe/Paris"}


def test_invalid_override_is_rejected_and_not_written(store: Store) -> None:
    store.jobs.sync([spec("strict.job")], NOW)
    with pytest.raises(JobDefinitionError, match="bad cron"):
        actions.set_schedule(store, "strict.job", "ops", NOW, cron="not cron")
    with pytest.raises(JobDefinitionError, match="at least"):
        actions.set_schedule(store, "strict.job", "ops", NOW, interval=-1)
    assert not store.jobs.get("strict.job").overridden
    assert store.jobs.audit_log(job="strict.job") == []


def test_unknown_job_raises_not_found_naming_it(store: Store) -> None:
    with pytest.raises(NotFoundError, match="'ghost.job'"):
        store.jobs.get("ghost.job")
    with pytest.raises(NotFoundError, match="'ghost.job'"):
        store.jobs.set_paused("ghost.job", True, "ops", NOW)
    assert store.jobs.audit_log() == []


# -- claiming -----------------------------------------------------------------------


def test_a_slot_claimed_twice_has_one_row_and_the_second_claim_wins_nothing(store: Store) -> None:
    first = claim_one(store, "slot.job", slot(1), owner=A)
    second = claim_one(store, "slot.job", slot(1), owner=B)
    assert len(first) == 1 and second == []
    (row,) = rows(store, "slot.job")
    assert row.owner == A.instance and row.host == "host-a" and row.pid == 101
    assert row.status == "running" and row.attempt == 1 and row.fence == 1


def test_concurrent_claims_of_the_same_slots_win_each_slot_exactly_once(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(4)]
    stores[0].upgrade()
    slots = [Claim("race.job", slot(m), status="missed") for m in range(50)]
    wins: list[list[datetime]] = [[] for _ in stores]
    barrier = threading.Barrier(len(stores))

    def racer(i: int) -> None:
        owner = Owner(f"racer-{i}", "host", i)
        barrier.wait(timeout=10)
        won = stores[i].runs.claim(slots, owner, NOW, NOW + LEASE)
        wins[i] = [c.scheduled_for for c in won]

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        all_wins = [s for w in wins for s in w]
        assert sorted(all_wins) == [c.scheduled_for for c in slots]  # each slot won once, none lost
        assert len(rows(stores[0], "race.job")) == 50
    finally:
        for s in stores:
            s.dispose()


def test_a_running_claim_for_a_busy_job_becomes_skipped(store: Store) -> None:
    claim_one(store, "busy.job", slot(1))
    (run_id,) = claim_one(store, "busy.job", slot(2), owner=B)
    row = store.runs.get(run_id)
    assert row.status == "skipped"
    assert row.finished_at == NOW and row.started_at is None and row.lease_expires_at is None


def test_two_running_claims_of_one_job_in_one_batch_run_only_the_first(store: Store) -> None:
    won = store.runs.claim([Claim("batch.job", slot(1)), Claim("batch.job", slot(2))], A, NOW, NOW + LEASE)
    assert [c.status for c in won] == ["running", "skipped"]


def test_overlap_queue_keeps_at_most_one_queued_run(store: Store) -> None:
    claim_one(store, "q.job", slot(1))
    claim_one(store, "q.job", slot(2), overlap="queue")
    claim_one(store, "q.job", slot(3), overlap="queue")
    statuses = [(r.scheduled_for, r.status) for r in rows(store, "q.job")]
    assert statuses == [(slot(1), "running"), (slot(2), "queued"), (slot(3), "skipped")]


def test_missed_and_queued_claims_are_recorded_as_such(store: Store) -> None:
    won = store.runs.claim(
        [Claim("c.job", slot(1), "catchup", "missed"), Claim("c.job", slot(2), "catchup", "queued")],
        A,
        NOW,
        NOW + LEASE,
    )
    assert [c.status for c in won] == ["missed", "queued"]
    first, second = rows(store, "c.job")
    assert (first.status, first.trigger, first.attempt, first.finished_at) == ("missed", "catchup", 0, NOW)
    assert (second.status, second.finished_at, second.started_at) == ("queued", None, None)


def test_claiming_nothing_touches_nothing(store: Store) -> None:
    assert store.runs.claim([], A, NOW, NOW + LEASE) == []


# -- finishing and leases --------------------------------------------------------------


def test_finish_records_the_outcome(store: Store) -> None:
    (run_id,) = claim_one(store, "fin.job", slot(1))
    lost = finish(
        store,
        run_id,
        1,
        "failed",
        attempt=2,
        error_type="ValueError",
        error_message="bad input",
        error_traceback="Traceback ...",
        log="line one\n",
        log_truncated=True,
        started_at=NOW + timedelta(seconds=1),
    )
    assert lost == []
    row = store.runs.get(run_id)
    assert (row.status, row.attempt, row.error_type, row.error_message) == (
        "failed",
        2,
        "ValueError",
        "bad input",
    )
    assert row.log == "line one\n" and row.log_truncated is True
    assert row.started_at == NOW + timedelta(seconds=1)
    assert row.duration_seconds == 4.0
    assert row.lease_expires_at is None


def test_finish_stores_output_with_nul_characters_escaped(store: Store) -> None:
    (run_id,) = claim_one(store, "binary.job", slot(1))
    lost = finish(store, run_id, 1, "failed", error_message="bad\x00byte", log="raw \x00\x00 output\n")
    assert lost == []
    row = store.runs.get(run_id)
    assert (row.status, row.error_message, row.log) == ("failed", "bad\\x00byte", "raw \\x00\\x00 output\n")


def test_finish_with_a_stale_fence_is_rejected_and_overwrites_nothing(store: Store) -> None:
    (run_id,) = claim_one(store, "fence.job", slot(1))
    assert finish(store, run_id, fence=0, status="failed", error_message="stale writer") == [run_id]
    row = store.runs.get(run_id)
    assert row.status == "running" and row.error_message is None
    assert finish(store, run_id, fence=1) == []
    assert finish(store, run_id, fence=1, status="failed") == [run_id]  # already final
    assert store.runs.get(run_id).status == "succeeded"


def test_finish_batch_reports_only_the_lost_runs(store: Store) -> None:
    (good,) = claim_one(store, "b1.job", slot(1))
    (stale,) = claim_one(store, "b2.job", slot(1))
    store.runs.reap(NOW + timedelta(minutes=5), reason="expired")
    (fresh,) = claim_one(store, "b3.job", slot(1))
    outcomes = [Outcome(i, 1, "succeeded", NOW + timedelta(seconds=5)) for i in (fresh, stale)]
    assert store.runs.finish(outcomes) == [stale]
    assert store.runs.get(fresh).status == "succeeded"
    assert store.runs.get(good).status == "abandoned"


def test_reap_abandons_runs_whose_lease_expired_and_bumps_the_fence(store: Store) -> None:
    (expired,) = claim_one(store, "reap.job", slot(1))
    later = NOW + LEASE + timedelta(seconds=1)
    store.runs.claim([Claim("live.job", slot(1))], B, NOW, later + LEASE)

    reaped = store.runs.reap(later, reason="lease expired")

    assert [r.id for r in reaped] == [expired]
    row = store.runs.get(expired)
    assert (row.status, row.fence, row.error_type, row.error_message) == (
        "abandoned",
        2,
        "Abandoned",
        "lease expired",
    )
    assert row.finished_at == later and row.lease_expires_at is None
    assert rows(store, "live.job")[0].status == "running"
    # The old owner's late result cannot land any more.
    assert finish(store, expired, fence=1) == [expired]
    assert store.runs.get(expired).status == "abandoned"


def test_reap_by_owner_abandons_all_its_running_runs(store: Store) -> None:
    claim_one(store, "own1.job", slot(1), owner=A)
    claim_one(store, "own2.job", slot(1), owner=A)
    claim_one(store, "other.job", slot(1), owner=B)
    reaped = store.runs.reap(NOW, owner=A.instance, reason="stopped")
    assert sorted(r.job for r in reaped) == ["own1.job", "own2.job"]
    assert rows(store, "other.job")[0].status == "running"


def test_renew_extends_only_this_owners_leases(store: Store) -> None:
    (mine,) = claim_one(store, "renew.job", slot(1), owner=A)
    (theirs,) = claim_one(store, "renew2.job", slot(1), owner=B)
    assert store.runs.renew(A.instance, NOW + timedelta(minutes=5)) == 1
    assert store.runs.get(mine).lease_expires_at == NOW + timedelta(minutes=5)
    assert store.runs.get(theirs).lease_expires_at == NOW + LEASE
    assert store.runs.reap(NOW + timedelta(minutes=1), reason="expired")[0].id == theirs


def test_set_attempt_needs_the_current_fence(store: Store) -> None:
    (run_id,) = claim_one(store, "att.job", slot(1))
    assert store.runs.set_attempt(run_id, 1, 2) is True
    assert store.runs.set_attempt(run_id, 0, 3) is False
    assert store.runs.get(run_id).attempt == 2


def test_reap_local_abandons_runs_of_dead_processes_on_this_host(store: Store) -> None:
    dead = Owner("dead-instance", "this-host", 4242)
    alive = Owner("alive-instance", "this-host", 4343)
    elsewhere = Owner("remote-instance", "other-host", 4242)
    claim_one(store, "dead.job", slot(1), owner=dead)
    claim_one(store, "alive.job", slot(1), owner=alive)
    claim_one(store, "remote.job", slot(1), owner=elsewhere)
    reaped = store.runs.reap_local("this-host", lambda pid: pid != 4242, NOW)
    assert [r.job for r in reaped] == ["dead.job"]
    assert "4242" in (reaped[0].error_message or "")


# -- queue: manual runs, queued overlaps, requeue ---------------------------------------


def test_a_manual_trigger_runs_once(store: Store) -> None:
    run_id = store.runs.enqueue("manual.job", NOW)
    taken = store.runs.take_queued(["manual.job"], A, NOW, NOW + LEASE)
    assert [(c.run_id, c.status, c.trigger, c.fence, c.attempt) for c in taken] == [
        (run_id, "running", "manual", 1, 1)
    ]
    assert store.runs.take_queued(["manual.job"], B, NOW, NOW + LEASE) == []
    row = store.runs.get(run_id)
    # started_at is written when the function begins (or with the end), not when taken
    assert (row.status, row.owner, row.attempt, row.started_at) == ("running", A.instance, 1, None)
    assert row.lateness_seconds is None  # manual runs are never "late"


def test_two_manual_requests_at_the_same_instant_are_both_kept(store: Store) -> None:
    first = store.runs.enqueue("twice.job", NOW)
    second = store.runs.enqueue("twice.job", NOW)
    assert first != second
    assert store.runs.get(second).scheduled_for == NOW + timedelta(microseconds=1)


def test_queued_runs_of_unknown_jobs_are_left_for_an_instance_that_knows_them(store: Store) -> None:
    run_id = store.runs.enqueue("elsewhere.job", NOW)
    assert store.runs.take_queued(["other.job"], A, NOW, NOW + LEASE) == []
    assert store.runs.get(run_id).status == "queued"


def test_a_long_queue_of_unknown_jobs_does_not_starve_the_known_ones(store: Store) -> None:
    claims = [Claim("removed.job", slot(m), "catchup", "queued") for m in range(150)]
    store.runs.claim(claims, B, NOW, NOW + LEASE)
    run_id = store.runs.enqueue("known.job", NOW)
    taken = store.runs.take_queued(["known.job"], A, NOW, NOW + LEASE)
    assert [c.run_id for c in taken] == [run_id]


def test_two_instances_taking_the_same_queue_never_both_get_a_run(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(2)]
    stores[0].upgrade()
    names = [f"m{i}.job" for i in range(20)]
    for name in names:
        stores[0].runs.enqueue(name, NOW)
    owners = [A, B]
    taken: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def taker(i: int) -> None:
        barrier.wait(timeout=10)
        for _ in range(5):
            taken[i] += [c.run_id for c in stores[i].runs.take_queued(names, owners[i], NOW, NOW + LEASE)]

    threads = [threading.Thread(target=taker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert not set(taken[0]) & set(taken[1])
        assert len(taken[0]) + len(taken[1]) == 20
        for run in stores[0].runs.history(limit=100):
            assert run.status == "running" and run.fence == 1
            assert run.owner == (A.instance if run.id in taken[0] else B.instance)
    finally:
        for s in stores:
            s.dispose()


def test_a_manual_trigger_for_a_busy_job_is_recorded_skipped(store: Store) -> None:
    claim_one(store, "mbusy.job", slot(1))
    run_id = store.runs.enqueue("mbusy.job", NOW)
    (taken,) = store.runs.take_queued(["mbusy.job"], A, NOW, NOW + LEASE)
    assert (taken.run_id, taken.status) == (run_id, "skipped")
    assert store.runs.get(run_id).finished_at == NOW


def test_a_queued_overlap_waits_until_the_job_is_free(store: Store) -> None:
    (first,) = claim_one(store, "wait.job", slot(1))
    (queued,) = claim_one(store, "wait.job", slot(2), overlap="queue")
    assert store.runs.take_queued(["wait.job"], A, NOW, NOW + LEASE) == []
    assert store.runs.get(queued).status == "queued"
    finish(store, first, 1)
    (taken,) = store.runs.take_queued(["wait.job"], A, NOW, NOW + LEASE)
    assert (taken.run_id, taken.status, taken.scheduled_for) == (queued, "running", slot(2))


def test_queued_catchup_slots_are_taken_one_at_a_time_in_order(store: Store) -> None:
    claims = [Claim("all.job", slot(m), "catchup", "queued") for m in (1, 2, 3)]
    store.runs.claim(claims, A, NOW, NOW + LEASE)
    order = []
    for _ in range(3):
        (taken,) = store.runs.take_queued(["all.job"], A, NOW, NOW + LEASE)
        assert store.runs.take_queued(["all.job"], A, NOW, NOW + LEASE) == []  # one at a time
        order.append(taken.scheduled_for)
        finish(store, taken.run_id, taken.fence)
    assert order == [slot(1), slot(2), slot(3)]


def test_requeue_puts_an_abandoned_run_back_and_it_runs_as_the_next_attempt(store: Store) -> None:
    (run_id,) = claim_one(store, "retry.job", slot(1), owner=A)
    store.runs.reap(NOW + timedelta(minutes=1), reason="owner died")
    assert store.runs.requeue([run_id]) == 1
    assert store.runs.requeue([run_id]) == 0  # only abandoned runs go back
    assert store.runs.requeue([]) == 0
    row = store.runs.get(run_id)
    assert (row.status, row.owner, row.finished_at) == ("queued", None, None)
    (taken,) = store.runs.take_queued(["retry.job"], B, NOW, NOW + LEASE)
    assert (taken.run_id, taken.fence, taken.attempt) == (run_id, 3, 2)
    row = store.runs.get(run_id)
    assert (row.status, row.owner, row.attempt) == ("running", B.instance, 2)


# -- reading and pruning -----------------------------------------------------------------


def test_last_slots_ignores_manual_runs(store: Store) -> None:
    claim_one(store, "last.job", slot(1), status="missed")
    claim_one(store, "last.job", slot(3), status="missed")
    store.runs.enqueue("last.job", slot(60))
    store.runs.enqueue("manual.only", slot(60))
    assert store.runs.last_slots() == {"last.job": slot(3)}


def test_prune_deletes_only_old_finished_runs(store: Store) -> None:
    (old_done,) = claim_one(store, "p.job", slot(-120))
    finish(store, old_done, 1)
    claim_one(store, "p.job", slot(-119), status="missed")
    (old_running,) = claim_one(store, "p2.job", slot(-120))
    old_queued = store.runs.enqueue("p3.job", slot(-120))
    claim_one(store, "p.job", slot(-1), status="missed")

    assert store.runs.prune(NOW - timedelta(minutes=60)) == 2

    remaining = {r.id for r in store.runs.history(limit=100)}
    assert old_done not in remaining
    assert {old_running, old_queued} <= remaining
    assert len(remaining) == 3


def test_history_latest_and_counts(store: Store) -> None:
    claim_one(store, "h.job", slot(1), status="missed")
    (second,) = claim_one(store, "h.job", slot(2))
    finish(store, second, 1, "failed")
    claim_one(store, "h2.job", slot(1), status="missed")
    assert [r.scheduled_for for r in store.runs.history(job="h.job")] == [slot(2), slot(1)]
    assert [r.id for r in store.runs.history(status="failed")] == [second]
    assert store.runs.latest_per_job()["h.job"].id == second
    (third,) = claim_one(store, "h2.job", slot(3))
    finish(store, third, 1, "succeeded")
    store.runs.enqueue("h2.job", slot(9))  # a manual run's slot is not the job's latest slot
    assert store.runs.status_counts() == {"missed": 2, "failed": 1, "succeeded": 1, "queued": 1}
    times = {job: (t.slot_at, t.ended_at, t.succeeded_at) for job, t in store.runs.latest_times().items()}
    assert times["h.job"] == (slot(2), NOW + timedelta(seconds=5), None)  # a missed slot ends at NOW
    assert times["h2.job"] == (slot(3), NOW + timedelta(seconds=5), NOW + timedelta(seconds=5))
    with pytest.raises(NotFoundError, match="999999"):
        store.runs.get(999999)


# -- the leader lease -------------------------------------------------------------------


def test_leader_lease_has_one_holder_and_a_term_that_grows_on_change(store: Store) -> None:
    cluster = store.cluster
    assert cluster.acquire("leader", "a", NOW, NOW + LEASE) == 1
    assert cluster.acquire("leader", "b", NOW + timedelta(seconds=1), NOW + timedelta(seconds=11)) is None
    # Renewing keeps the term and the acquisition time.
    assert cluster.acquire("leader", "a", NOW + timedelta(seconds=5), NOW + timedelta(seconds=15)) == 1
    lease = cluster.lease("leader")
    assert lease is not None
    assert (lease.holder, lease.term, lease.acquired_at, lease.expires_at) == (
        "a",
        1,
        NOW,
        NOW + timedelta(seconds=15),
    )

    # Once it expires, another takes it with a new term.
    expired = NOW + timedelta(seconds=16)
    assert cluster.acquire("leader", "b", expired, expired + LEASE) == 2
    assert cluster.acquire("leader", "a", expired, expired + LEASE) is None

    # Released, it can be taken at once.
    cluster.release("leader", "b")
    released = cluster.lease("leader")
    assert released is not None and released.holder is None
    assert cluster.acquire("leader", "a", expired, expired + LEASE) == 3


def test_release_by_a_non_holder_does_nothing(store: Store) -> None:
    store.cluster.acquire("leader", "a", NOW, NOW + LEASE)
    store.cluster.release("leader", "b")
    lease = store.cluster.lease("leader")
    assert lease is not None and lease.holder == "a"
    assert store.cluster.lease("no-such-lease") is None


def test_concurrent_acquire_gives_the_lease_to_exactly_one(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(4)]
    stores[0].upgrade()
    terms: list[int | None] = [None] * 4
    barrier = threading.Barrier(4)

    def contender(i: int) -> None:
        barrier.wait(timeout=10)
        terms[i] = stores[i].cluster.acquire("leader", f"node-{i}", NOW, NOW + LEASE)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert [t for t in terms if t is not None] == [1]
    finally:
        for s in stores:
            s.dispose()
