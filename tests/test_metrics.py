"""Prometheus metrics: parsed with prometheus_client's own parser, never matched as text."""

from __future__ import annotations

import gzip
import logging
import textwrap
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from scheduler import config
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.daemon.service import Service
from scheduler.daemon.wiring import build_service
from scheduler.engine.runner import ActiveRun, JobContext
from scheduler.jobs.effective import schedule_of
from scheduler.jobs.registry import make_spec
from scheduler.operator.jobseries import Families
from scheduler.operator.metrics import DURATION_BUCKETS, BatchHistogram, Metrics
from scheduler.store import Claim, Claimed, InstanceRow, Outcome, Owner, Store

from tests.support.polling import wait_until
from tests.support.ports import free_port

OWNER = Owner("inst-a", "host-a", 4242)


def work() -> None:
    """A job function; never called here."""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, keyed by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def finished_run(
    job: str, status: str, slot_offset: float, took: float, clock: FakeClock, trigger: str
) -> ActiveRun:
    slot = clock.now()
    claimed = Claimed(1, job, slot, "running", 1, trigger)
    spec = make_spec(work, name=job, interval=timedelta(minutes=1))
    ctx = JobContext(job, slot, 1, 1, logging.getLogger("test"))
    run = ActiveRun(claimed, spec, 0.0, ctx, None)
    started = slot + timedelta(seconds=slot_offset)
    run.outcome = Outcome(1, 1, status, finished_at=started + timedelta(seconds=took), started_at=started)
    return run


def test_runs_durations_lateness_and_database_state(store: Store, clock: FakeClock) -> None:
    now = clock.now()
    store.jobs.sync(
        [
            make_spec(work, name="etl.load", interval=timedelta(minutes=10)),
            make_spec(work, name="etl.paused", interval=timedelta(minutes=10)),
            make_spec(work, name="etl.off", interval=timedelta(minutes=10), enabled=False),
        ],
        now,
    )
    store.jobs.set_paused("etl.paused", True, "test", now)
    slots = [now - timedelta(minutes=10 * i) for i in range(3)]
    store.runs.claim([Claim("etl.load", s, status="missed") for s in slots[1:]], OWNER, now, now)
    store.runs.claim([Claim("etl.load", slots[0])], OWNER, now, now + timedelta(minutes=1))
    store.cluster.register(
        InstanceRow(
            "inst-a", "host-a", 1, "1.0.0", now, now, now + timedelta(seconds=10), None, "alive", [], []
        )
    )
    metrics = Metrics(store, Health(clock), clock, "inst-a", is_leader=lambda: True, running=lambda: 1)
    metrics.observe_run(finished_run("etl.load", "succeeded", 0.3, 2.0, clock, "schedule"))
    metrics.observe_run(finished_run("etl.load", "failed", 0.02, 40.0, clock, "schedule"))
    metrics.observe_run(finished_run("etl.load", "succeeded", 5.0, 0.5, clock, "manual"))

    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    got = samples(body.decode())
    assert got[("scheduler_runs_total", (("status", "succeeded"),))] == 2
    assert got[("scheduler_runs_total", (("status", "failed"),))] == 1
    assert got[("scheduler_job_runs_total", (("job", "etl.load"),))] == 3
    assert got[("scheduler_job_failures_total", (("job", "etl.load"),))] == 1
    assert got[("scheduler_run_duration_seconds_count", ())] == 3
    assert got[("scheduler_run_duration_seconds_sum", ())] == pytest.approx(42.5)
    assert got[("scheduler_run_duration_seconds_bucket", (("le", "1.0"),))] == 1
    # a manual run has no slot to be late for
    assert got[("scheduler_run_lateness_seconds_count", ())] == 2
    assert got[("scheduler_run_lateness_seconds_bucket", (("le", "0.05"),))] == 1
    assert got[("scheduler_run_lateness_seconds_sum", ())] == pytest.approx(0.32)
    for state, n in (("active", 1), ("paused", 1), ("disabled", 1)):
        assert got[("scheduler_jobs", (("state", state),))] == n
    assert got[("scheduler_run_records", (("status", "missed"),))] == 2
    assert got[("scheduler_run_records", (("status", "running"),))] == 1
    assert got[("scheduler_leader", ())] == 1 and got[("scheduler_running_runs", ())] == 1
    assert got[("scheduler_database_up", ())] == 1 and got[("scheduler_instances_alive", ())] == 1
    assert got[("scheduler_info", (("instance", "inst-a"), ("version", "1.0.0")))] == 1
    next_at = schedule_of(store.jobs.get("etl.load")).next_after(slots[0])
    assert got[("scheduler_job_next_run_timestamp_seconds", (("job", "etl.load"),))] == next_at.timestamp()
    assert ("scheduler_job_next_run_timestamp_seconds", (("job", "etl.paused"),)) not in got


def per_job_series(text: str) -> dict[str, int]:
    """How many samples carry each job label."""
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "job" in sample.labels:
                counts[sample.labels["job"]] = counts.get(sample.labels["job"], 0) + 1
    return counts


def busy_store(store: Store, clock: FakeClock, jobs: int) -> Metrics:
    """`jobs` jobs, each with a succeeded, a failed, a timed-out and a skipped run finished here."""
    now = clock.now()
    names = [f"etl.job{i}" for i in range(jobs)]
    store.jobs.sync([make_spec(work, name=n, interval=timedelta(minutes=10)) for n in names], now)
    metrics = Metrics(store, Health(clock), clock, "inst-a")
    for i, name in enumerate(names):
        slot = now - timedelta(minutes=10 * (i + 1))
        store.runs.claim([Claim(name, slot, status="missed")], OWNER, now, now)
        for status in ("succeeded", "failed", "timed_out", "skipped"):
            metrics.observe_run(finished_run(name, status, 0.1, 1.0, clock, "schedule"))
    return metrics


def test_default_metrics_have_at_most_five_series_per_job_and_no_created_samples(
    store: Store, clock: FakeClock
) -> None:
    metrics = busy_store(store, clock, 3)
    text = metrics.render()[0].decode()
    counts = per_job_series(text)
    assert sorted(counts) == ["etl.job0", "etl.job1", "etl.job2"]
    assert max(counts.values()) <= 5
    assert "_created" not in text


def test_per_job_histograms_are_opt_in(store: Store, clock: FakeClock) -> None:
    store.jobs.sync([make_spec(work, name="etl.load", interval=timedelta(minutes=10))], clock.now())
    metrics = Metrics(store, Health(clock), clock, "inst-a", per_job_histograms=True)
    metrics.observe_run(finished_run("etl.load", "succeeded", 0.3, 2.0, clock, "schedule"))
    got = samples(metrics.render()[0].decode())
    assert got[("scheduler_run_duration_seconds_count", (("job", "etl.load"),))] == 1
    assert got[("scheduler_run_lateness_seconds_bucket", (("job", "etl.load"), ("le", "0.5")))] == 1
    assert ("scheduler_run_duration_seconds_count", ()) not in got


def test_a_batch_of_ended_runs_counts_as_the_same_runs_one_by_one(sqlite_url: str, clock: FakeClock) -> None:
    store = Store(sqlite_url)
    store.upgrade()
    try:
        ends = [
            ("etl.a", "succeeded"),
            ("etl.b", "failed"),
            ("etl.a", "timed_out"),
            ("etl.a", "succeeded"),
        ] * 50
        batch = [finished_run(job, status, 0.2, 1.5, clock, "schedule") for job, status in ends]
        batched = Metrics(store, Health(clock), clock, "a", ended=lambda: batch)
        one_by_one = Metrics(store, Health(clock), clock, "b")
        for run in batch:
            one_by_one.observe_run(run)
        got, expected = (samples(m.render()[0].decode()) for m in (batched, one_by_one))
        assert got[("scheduler_job_runs_total", (("job", "etl.a"),))] == 150
        assert got[("scheduler_job_failures_total", (("job", "etl.a"),))] == 50
        assert got[("scheduler_runs_total", (("status", "succeeded"),))] == 100
        assert got[("scheduler_run_duration_seconds_count", ())] == 200
        strip = {k: v for k, v in got.items() if k[0] != "scheduler_info"}
        assert strip == {k: v for k, v in expected.items() if k[0] != "scheduler_info"}
    finally:
        store.dispose()


def test_a_jobs_cached_lines_change_when_its_values_change_and_only_then(
    store: Store, clock: FakeClock
) -> None:
    now = clock.now()
    names = ["etl.load", "etl.other"]
    store.jobs.sync([make_spec(work, name=n, interval=timedelta(minutes=10)) for n in names], now)
    metrics = Metrics(store, Health(clock), clock, "inst-a")
    metrics.observe_run(finished_run("etl.load", "succeeded", 0.1, 1.0, clock, "schedule"))
    metrics.render()
    load, other = metrics.jobs.block("etl.load"), metrics.jobs.block("etl.other")
    assert load is not None and other is not None
    metrics.render()
    assert metrics.jobs.block("etl.load") is load and metrics.jobs.block("etl.other") is other

    metrics.observe_run(finished_run("etl.load", "failed", 0.1, 1.0, clock, "schedule"))  # its counters
    got = samples(metrics.render()[0].decode())
    assert got[("scheduler_job_runs_total", (("job", "etl.load"),))] == 2
    assert got[("scheduler_job_failures_total", (("job", "etl.load"),))] == 1
    assert metrics.jobs.block("etl.load") is not load and metrics.jobs.block("etl.other") is other

    anchor = store.jobs.get("etl.other").anchor_at
    key = (("job", "etl.other"),)
    assert got[("scheduler_job_next_run_timestamp_seconds", key)] == anchor.timestamp()
    slot = anchor + timedelta(minutes=10)  # a run recorded by any instance: its latest times
    (claimed,) = store.runs.claim([Claim("etl.other", slot)], OWNER, now, now + timedelta(minutes=1))
    store.runs.finish([Outcome(claimed.run_id, claimed.fence, "succeeded", finished_at=now, started_at=now)])
    got = samples(metrics.render()[0].decode())
    assert got[("scheduler_job_last_success_timestamp_seconds", key)] == now.timestamp()
    assert (
        got[("scheduler_job_next_run_timestamp_seconds", key)] == (slot + timedelta(minutes=10)).timestamp()
    )
    assert metrics.jobs.block("etl.other") is not other

    clock.advance(timedelta(seconds=1))
    store.jobs.set_paused("etl.other", True, "test", clock.now())  # its row: no next run while paused
    got = samples(metrics.render()[0].decode())
    assert ("scheduler_job_next_run_timestamp_seconds", key) not in got
    assert got[("scheduler_job_last_success_timestamp_seconds", key)] == now.timestamp()


def test_the_per_job_families_are_written_as_prometheus_client_writes_them(
    store: Store, clock: FakeClock
) -> None:
    """Parsed, rebuilt with prometheus_client's families and rendered by it, the text comes back
    byte for byte: headers, label escaping, value formatting, which series exist."""
    now = clock.now()
    names = ['a "quoted" job', "ünï.cödé", "etl.load", "etl.off"]
    store.jobs.sync(
        [make_spec(work, name=n, interval=timedelta(minutes=7), enabled=n != "etl.off") for n in names], now
    )
    slot = now - timedelta(minutes=3)
    won = store.runs.claim([Claim(n, slot) for n in names[:3]], OWNER, now, now + timedelta(minutes=1))
    ends = [
        Outcome(c.run_id, c.fence, status, finished_at=now - timedelta(seconds=0.123456), started_at=slot)
        for c, status in zip(won, ("succeeded", "failed", "succeeded"), strict=True)
    ]
    store.runs.finish(ends)
    metrics = Metrics(store, Health(clock), clock, "inst-a")
    for name, status in [
        (names[0], "failed"),
        (names[0], "succeeded"),
        (names[1], "timed_out"),
        (names[2], "succeeded"),
    ]:
        metrics.observe_run(finished_run(name, status, 0.1, 1.0, clock, "schedule"))
    text = metrics.jobs.render(metrics.catalog.rows(), store.runs.latest_times(), now)
    rebuilt = []
    for family in text_string_to_metric_families(text):
        kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
        again = kind(family.name, family.documentation, labels=["job"])
        for sample in family.samples:
            again.add_metric([sample.labels["job"]], sample.value)
        rebuilt.append(again)
    assert len(rebuilt) == 5 and [len(f.samples) for f in rebuilt] == [3, 2, 3, 3, 2]
    assert generate_latest(Families(rebuilt)).decode() == text


def test_the_setting_turns_on_per_job_histograms() -> None:
    assert config.load(env={}).metrics_per_job_histograms is False
    env = {"SCHEDULER_METRICS_PER_JOB_HISTOGRAMS": "true"}
    assert config.load(env=env).metrics_per_job_histograms is True


def test_each_metrics_has_its_own_registry(sqlite_url: str, clock: FakeClock) -> None:
    store = Store(sqlite_url)
    store.upgrade()
    try:
        first, second = (Metrics(store, Health(clock), clock, name) for name in ("a", "b"))
        first.observe_run(finished_run("etl.load", "succeeded", 0.1, 1.0, clock, "schedule"))
        key = ("scheduler_job_runs_total", (("job", "etl.load"),))
        assert samples(first.render()[0].decode())[key] == 1
        assert key not in samples(second.render()[0].decode())
    finally:
        store.dispose()


def test_an_unreachable_database_reports_database_up_0(clock: FakeClock) -> None:
    port = free_port()
    store = Store(f"postgresql://postgres@127.0.0.1:{port}/none")
    try:
        got = samples(Metrics(store, Health(clock), clock, "a").render()[0].decode())
    finally:
        store.dispose()
    assert got[("scheduler_database_up", ())] == 0 and got[("scheduler_leader", ())] == 0
    assert not any(name == "scheduler_jobs" for name, _ in got)


# -- a real service --------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "quick.py").write_text(
        textwrap.dedent(
            """
            from datetime import timedelta
            from scheduler import job

            @job(interval=timedelta(seconds=1))
            def tick():
                pass
            """
        )
    )
    env = {
        "SCHEDULER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "SCHEDULER_JOBS_PATH": str(jobs),
        "SCHEDULER_LOG_DIR": str(tmp_path / "logs"),
        "SCHEDULER_HTTP_ENABLED": "true",
        "SCHEDULER_HTTP_PORT": str(free_port()),
        "SCHEDULER_HEARTBEAT": "0.2s",
        "SCHEDULER_LEASE_TTL": "1s",
        "SCHEDULER_GRACE_PERIOD": "2s",
    }
    svc = build_service(config.load(env=env))
    svc.start()
    try:
        yield svc
    finally:
        svc.shutdown()


def test_a_running_service_serves_metrics_health_and_api(service: Service) -> None:
    assert service.http is not None
    base = service.http.url
    key = ("scheduler_job_runs_total", (("job", "quick.tick"),))
    # the counter is this process's; the last success is read from the run rows, written behind
    written = ("scheduler_job_last_success_timestamp_seconds", (("job", "quick.tick"),))

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            got = samples(response.read().decode())
        return got if got.get(key, 0) >= 1 and written in got else None

    got = wait_until(scraped, timeout=15)
    assert got[("scheduler_run_duration_seconds_count", ())] >= 1
    assert got[("scheduler_job_last_success_timestamp_seconds", (("job", "quick.tick"),))] > 0
    assert got[("scheduler_leader", ())] == 1 and got[("scheduler_database_up", ())] == 1
    plain = urllib.request.urlopen(base + "/metrics", timeout=5)
    zipped = urllib.request.urlopen(
        urllib.request.Request(base + "/metrics", headers={"Accept-Encoding": "gzip"}), timeout=5
    )
    with plain, zipped:
        assert plain.headers.get("Content-Encoding") is None
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert zipped.headers["Vary"] == "Accept-Encoding"
        unzipped = samples(gzip.decompress(zipped.read()).decode())
    assert unzipped[("scheduler_leader", ())] == 1
    with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(base + "/api/jobs", timeout=5) as response:
        assert response.read().count(b'"name": "quick.tick"') == 1


def test_a_batched_histogram_exposes_what_a_prometheus_client_histogram_of_the_same_values_does() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    values = [0.0, 0.01, 0.0100001, 0.05, 0.3, 1, 1.0, 4.99, 5, 59.9, 3600, 4 * 3600, 4 * 3600 + 1, 1e9]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("x_seconds", "X.", DURATION_BUCKETS)
    ours.register(batched)
    reference = Histogram("x_seconds", "X.", buckets=DURATION_BUCKETS, registry=theirs)
    batched.observe_many(values[:5])
    batched.observe_many(values[5:])
    for value in values:
        reference.observe(value)
    assert generate_latest(ours) == generate_latest(theirs)
