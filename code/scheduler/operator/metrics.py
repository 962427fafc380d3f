"""Prometheus metrics: run observations made in this process, and database facts read at scrape time.

Each `Metrics` has its own `CollectorRegistry` (not the global one), so
several services can live in one process, as they do in tests. Counters and
histograms count the runs this instance finished; the gauges read the
database, so they describe the whole cluster whichever instance is scraped.

Series per job stay few, so a scrape at 10,000 jobs stays small: two
counters (runs, failures) and three gauges (next run, last end, last
success), rendered by `jobseries` from lines cached per job. The duration and
lateness histograms have no job label unless `metrics_per_job_histograms` is
set (13-14 series per job each). `_created` samples are not exposed.

Ended runs are counted per batch (`observe_runs`): a burst of 10,000 ends
costs one counter update per status and per job, not one per run.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from scheduler import __version__
from scheduler.clock import Clock
from scheduler.cluster.health import Health, HealthReport
from scheduler.engine.context import ActiveRun
from scheduler.errors import SchedulerError
from scheduler.operator.catalog import JobCatalog
from scheduler.operator.jobseries import Families, JobSeries
from scheduler.store import JobRow, Store
from scheduler.store.history import LatestTimes

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)
HISTOGRAMS = (  # name, help (", by job." or "." follows), buckets
    (
        "scheduler_run_duration_seconds",
        "Run duration (job function start to end, retries included)",
        DURATION_BUCKETS,
    ),
    (
        "scheduler_run_lateness_seconds",
        "How long after its slot a scheduled run started (jitter included)",
        LATENESS_BUCKETS,
    ),
)

# A `_created` sample per counter and histogram child doubles the series for no use here.
disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class DatabaseFacts:
    """What one scrape reads from the database."""

    rows: list[JobRow]
    times: dict[str, LatestTimes]
    statuses: dict[str, int]
    alive: int
    incidents: dict[str, int]  # open ones, by kind


class BatchHistogram(Collector):
    """A histogram without labels whose observations are added a batch at a time."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = [float(b) for b in buckets] + [math.inf]
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Sequence[float]) -> None:
        if not values:
            return
        bounds = self.bounds
        with self._lock:
            counts, total = self.counts, self.total
            for value in values:
                counts[bisect.bisect_left(bounds, value)] += 1  # the first bucket with le >= value
                total += value
            self.total = total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self.counts), self.total
        cumulative = list(itertools.accumulate(counts))
        buckets = [
            (floatToGoString(b), float(n))  # type: ignore[no-untyped-call]
            for b, n in zip(self.bounds, cumulative, strict=True)
        ]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


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
        self.store = store
        self.health = health
        self.clock = clock
        self.instance = instance
        self.is_leader = is_leader
        self.running = running
        self.ended = ended  # the runs that ended since the last call (the runner keeps them)
        self.catalog = JobCatalog(store, clock)
        self.jobs = JobSeries()
        self._render_lock = threading.Lock()  # scrapes may overlap; the job blocks are rebuilt in turn
        self.registry = CollectorRegistry()
        self.per_job_histograms = per_job_histograms
        by_job = ["job"] if per_job_histograms else []
        self.runs = Counter(
            "scheduler_runs",
            "Runs finished by this instance, by final status.",
            ["status"],
            registry=self.registry,
        )
        if per_job_histograms:
            self.by_job = tuple(
                Histogram(name, text + ", by job.", by_job, buckets=buckets, registry=self.registry)
                for name, text, buckets in HISTOGRAMS
            )
        else:  # observed a batch at a time: a prometheus_client observe per run cost ~4 us each
            self.batched = tuple(
                BatchHistogram(name, text + ".", buckets) for name, text, buckets in HISTOGRAMS
            )
            for histogram in self.batched:
                self.registry.register(histogram)

    def observe_ended(self) -> None:
        """Count the runs that ended since the last call (off the pool threads)."""
        self.observe_runs(self.ended())

    def observe_run(self, run: ActiveRun) -> None:
        """Count a finished run."""
        self.observe_runs([run])

    def observe_runs(self, runs: Iterable[ActiveRun]) -> None:
        """Count finished runs: the counters once per (job, status) of the batch."""
        ended: dict[tuple[str, str], int] = {}
        durations: list[float] = []
        latenesses: list[float] = []
        for run in runs:
            outcome = run.outcome
            if outcome is None:
                continue
            key = (run.spec.name, outcome.status)
            ended[key] = ended.get(key, 0) + 1
            if outcome.started_at is None:
                continue
            duration = (outcome.finished_at - outcome.started_at).total_seconds()
            late = None
            if run.claimed.trigger != "manual":
                late = max(0.0, (outcome.started_at - run.claimed.scheduled_for).total_seconds())
            if self.per_job_histograms:
                self.by_job[0].labels(run.spec.name).observe(duration)
                if late is not None:
                    self.by_job[1].labels(run.spec.name).observe(late)
                continue
            durations.append(duration)
            if late is not None:
                latenesses.append(late)
        if not self.per_job_histograms:
            self.batched[0].observe_many(durations)
            self.batched[1].observe_many(latenesses)
        by_status: dict[str, int] = {}
        for (_job, status), n in ended.items():
            by_status[status] = by_status.get(status, 0) + n
        for status, n in by_status.items():
            self.runs.labels(status).inc(n)
        self.jobs.count(ended)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        self.observe_ended()
        with self._render_lock:
            now = self.clock.now()
            report = self.health.report()
            try:
                facts: DatabaseFacts | None = self._read(now)
            except SchedulerError as exc:
                log.debug("metrics: database unreadable: %s", exc)
                facts = None
            families = Families([*self.registry.collect(), *self._state(report, facts)])
            per_job = self.jobs.render(facts.rows if facts else None, facts.times if facts else {}, now)
        return generate_latest(families) + per_job.encode(), CONTENT_TYPE_LATEST

    def _read(self, now: datetime) -> DatabaseFacts:
        """Raises StoreUnavailable or StoreError."""
        kinds: dict[str, int] = {}
        for incident in self.store.incidents.open_incidents():
            kinds[incident.kind] = kinds.get(incident.kind, 0) + 1
        return DatabaseFacts(
            rows=self.catalog.rows(),
            times=self.store.runs.latest_times(),
            statuses=self.store.runs.status_counts(),
            alive=len(self.store.cluster.alive(now)),
            incidents=kinds,
        )

    def _state(self, report: HealthReport, facts: DatabaseFacts | None) -> Iterator[Metric]:
        """This process's gauges, then the database's (but the per-job ones)."""
        info = GaugeMetricFamily("scheduler_info", "This instance.", labels=["instance", "version"])
        info.add_metric([self.instance, __version__], 1)
        yield info
        yield _gauge(
            "scheduler_leader", "1 while this instance holds the leader lease.", int(self.is_leader())
        )
        yield _gauge("scheduler_running_runs", "Runs executing in this instance now.", self.running())
        yield _gauge(
            "scheduler_dispatcher_loop_age_seconds",
            "Time since the timing loop last cycled.",
            report.loop_age,
        )
        up = int(report.database_up) if facts is not None else 0
        yield _gauge("scheduler_database_up", "1 when the database answers (loops and this scrape).", up)
        if facts is None:
            return
        counts = {"active": 0, "paused": 0, "disabled": 0}
        for row in facts.rows:
            enabled = bool(row.definition.get("enabled", True))
            counts["disabled" if not enabled else "paused" if row.paused else "active"] += 1
        yield _labelled("scheduler_jobs", "Known jobs, by state.", "state", counts)
        yield _labelled(
            "scheduler_run_records",
            "Run rows kept in the database (all instances, within retention), by status; "
            "status skipped and missed count slots not run.",
            "status",
            dict(sorted(facts.statuses.items())),
        )
        yield _gauge("scheduler_instances_alive", "Instances with a current heartbeat.", facts.alive)
        yield _labelled(
            "scheduler_incidents_open",
            "Open incidents, by kind.",
            "kind",
            dict(sorted(facts.incidents.items())),
        )


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _labelled(name: str, text: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=[label])
    for key, n in values.items():
        family.add_metric([key], n)
    return family
