"""Prometheus metrics: run observations made in this process, and database facts read at scrape time.

Each `Metrics` has its own `CollectorRegistry` (not the global one), so
several services can live in one process, as they do in tests. Counters and
histograms count the runs this instance finished; the gauges read the
database, so they describe the whole cluster whichever instance is scraped.

Series per job stay few, so a scrape at 10,000 jobs stays small: two
counters (runs, failures) and three gauges (next run, last end, last
success). The duration and lateness histograms have no job label unless
`metrics_per_job_histograms` is set (13-14 series per job each). `_created`
samples are not exposed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler import __version__
from scheduler.clock import Clock
from scheduler.cluster.health import Health
from scheduler.engine.runner import ActiveRun
from scheduler.errors import SchedulerError
from scheduler.jobs import effective
from scheduler.operator.catalog import JobCatalog
from scheduler.store import Store

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)
FAILED = frozenset({"failed", "timed_out", "abandoned"})

# A `_created` sample per counter and histogram child doubles the series for no use here.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(
        self,
        store: Store,
        health: Health,
        clock: Clock,
        instance: str,
        is_leader: Callable[[], bool] = lambda: False,
        running: Callable[[], int] = lambda: 0,
        per_job_histograms: bool = False,
        ended: Callable[[], list[ActiveRun]] = list,
    ) -> None:
        self.ended = ended  # the runs that ended since the last call (the runner keeps them)
        self.registry = CollectorRegistry()
        self.per_job_histograms = per_job_histograms
        by_job = ["job"] if per_job_histograms else []
        self.runs = Counter(
            "scheduler_runs",
            "Runs finished by this instance, by final status.",
            ["status"],
            registry=self.registry,
        )
        self.job_runs = Counter(
            "scheduler_job_runs",
            "Runs finished by this instance, by job.",
            ["job"],
            registry=self.registry,
        )
        self.job_failures = Counter(
            "scheduler_job_failures",
            "Runs finished by this instance as failed, timed_out or abandoned, by job.",
            ["job"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "scheduler_run_duration_seconds",
            "Run duration (job function start to end, retries included)"
            + (", by job." if per_job_histograms else "."),
            by_job,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.lateness = Histogram(
            "scheduler_run_lateness_seconds",
            "How long after its slot a scheduled run started (jitter included)"
            + (", by job." if per_job_histograms else "."),
            by_job,
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StateCollector(store, health, clock, instance, is_leader, running))

    def observe_ended(self) -> None:
        """Count the runs that ended since the last call (off the pool threads)."""
        for run in self.ended():
            self.observe_run(run)

    def observe_run(self, run: ActiveRun) -> None:
        """Count a finished run."""
        outcome = run.outcome
        if outcome is None:
            return
        job = run.spec.name
        self.runs.labels(outcome.status).inc()
        self.job_runs.labels(job).inc()
        if outcome.status in FAILED:
            self.job_failures.labels(job).inc()
        duration, lateness = self.duration, self.lateness
        if self.per_job_histograms:
            duration, lateness = duration.labels(job), lateness.labels(job)
        if outcome.started_at is not None:
            duration.observe((outcome.finished_at - outcome.started_at).total_seconds())
            if run.claimed.trigger != "manual":
                late = (outcome.started_at - run.claimed.scheduled_for).total_seconds()
                lateness.observe(max(0.0, late))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        self.observe_ended()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StateCollector(Collector):
    """Gauges read at each scrape: this process's state, then the database's."""

    def __init__(
        self,
        store: Store,
        health: Health,
        clock: Clock,
        instance: str,
        is_leader: Callable[[], bool],
        running: Callable[[], int],
    ) -> None:
        self.store = store
        self.health = health
        self.clock = clock
        self.instance = instance
        self.is_leader = is_leader
        self.running = running
        self.catalog = JobCatalog(store, clock)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families vary with the database; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("scheduler_info", "This instance.", labels=["instance", "version"])
        info.add_metric([self.instance, __version__], 1)
        yield info
        yield _gauge(
            "scheduler_leader", "1 while this instance holds the leader lease.", int(self.is_leader())
        )
        yield _gauge("scheduler_running_runs", "Runs executing in this instance now.", self.running())
        report = self.health.report()
        yield _gauge(
            "scheduler_dispatcher_loop_age_seconds",
            "Time since the timing loop last cycled.",
            report.loop_age,
        )
        try:
            families = list(self._from_database(self.clock.now()))
        except SchedulerError as exc:
            log.debug("metrics: database unreadable: %s", exc)
            families, up = [], 0
        else:
            up = int(report.database_up)
        yield _gauge("scheduler_database_up", "1 when the database answers (loops and this scrape).", up)
        yield from families

    def _from_database(self, now: datetime) -> Iterator[Metric]:
        # Straight from the rows, not through the read model's job views: at 10,000 jobs the
        # views' zone conversions and latest-run rows cost more than the whole scrape may.
        rows = self.catalog.rows()
        slots = self.store.runs.last_slots()
        counts = {"active": 0, "paused": 0, "disabled": 0}
        upcoming = GaugeMetricFamily(
            "scheduler_job_next_run_timestamp_seconds",
            "When each active job runs next (Unix time).",
            labels=["job"],
        )
        for row in rows:
            enabled = bool(row.definition.get("enabled", True))
            counts["disabled" if not enabled else "paused" if row.paused else "active"] += 1
            next_at = effective.next_run_at(row, slots.get(row.name), now)
            if next_at is not None:
                upcoming.add_metric([row.name], next_at.timestamp())
        states = GaugeMetricFamily("scheduler_jobs", "Known jobs, by state.", labels=["state"])
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        yield upcoming
        yield from self._last_runs()
        records = GaugeMetricFamily(
            "scheduler_run_records",
            "Run rows kept in the database (all instances, within retention), by status; "
            "status skipped and missed count slots not run.",
            labels=["status"],
        )
        by_status: dict[str, int] = {}
        for (_job, status), n in self.store.runs.count_by_status().items():
            by_status[status] = by_status.get(status, 0) + n
        for status, n in sorted(by_status.items()):
            records.add_metric([status], n)
        yield records
        alive = self.store.cluster.alive(now)
        yield _gauge("scheduler_instances_alive", "Instances with a current heartbeat.", len(alive))
        yield from self._alerts()

    def _last_runs(self) -> Iterator[Metric]:
        ended = GaugeMetricFamily(
            "scheduler_job_last_run_timestamp_seconds",
            "When each job's latest run ended, on any instance (Unix time).",
            labels=["job"],
        )
        succeeded = GaugeMetricFamily(
            "scheduler_job_last_success_timestamp_seconds",
            "When each job's latest successful run ended, on any instance (Unix time).",
            labels=["job"],
        )
        for job, (last, ok) in sorted(self.store.runs.finish_times().items()):
            if last is not None:
                ended.add_metric([job], last.timestamp())
            if ok is not None:
                succeeded.add_metric([job], ok.timestamp())
        yield ended
        yield succeeded

    def _alerts(self) -> Iterator[Metric]:
        incidents = GaugeMetricFamily("scheduler_incidents_open", "Open incidents, by kind.", labels=["kind"])
        kinds: dict[str, int] = {}
        for incident in self.store.incidents.open_incidents():
            kinds[incident.kind] = kinds.get(incident.kind, 0) + 1
        for kind, n in sorted(kinds.items()):
            incidents.add_metric([kind], n)
        yield incidents


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)
