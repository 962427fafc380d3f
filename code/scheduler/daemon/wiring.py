"""Composition: builds a Service's parts from the settings and connects their callbacks.

This is the one place that knows which part feeds which: the runner writes ends
through the recorder, the coordinator renews the leases of what the runner and
the recorder still answer for, the watchdog checks jobs while this instance holds
the leader lease (in its own thread). Tests build
a Service here, or pass their own parts to `Service`.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from scheduler.alerting.watchdog import Watchdog
from scheduler.clock import Clock, SystemClock
from scheduler.cluster.coordination import Coordinator
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.daemon.service import Parts, Service
from scheduler.engine.dispatcher import Dispatcher
from scheduler.engine.guard import CrashLoopGuard, pauser
from scheduler.engine.isolation import ProcessIsolation
from scheduler.engine.recorder import Recorder
from scheduler.engine.runner import Runner
from scheduler.errors import SchedulerError
from scheduler.operator.http import Api
from scheduler.operator.metrics import Metrics
from scheduler.operator.server import HttpServer
from scheduler.store import Claimed, Owner, Store

log = logging.getLogger(__name__)


def spool_path(settings: Settings) -> Path:
    """Where this instance keeps the run ends it could not write before exit."""
    return settings.state_dir / f"spool-{settings.instance_name}.jsonl"


def build_service(settings: Settings, clock: Clock | None = None) -> Service:
    """Every part of a daemon from `settings`, not started; `clock` defaults to the system clock."""
    clock = clock or SystemClock()
    stop = threading.Event()
    store = Store(settings.database_url)
    owner = Owner(uuid.uuid4().hex[:12], settings.instance_name, os.getpid())
    health = Health(clock)
    recorder = build_recorder(settings, store, clock, health)
    runner = build_runner(settings, store, clock, recorder, stop)

    def answering_for() -> set[int]:
        """Runs whose leases this process renews: running here, or ended with the outcome unwritten."""
        return {a.claimed.run_id for a in runner.active()} | recorder.pending_runs()

    dispatcher = build_dispatcher(settings, store, clock, runner, owner, health, recorder.pending_runs)
    coordinator = Coordinator(store, clock, settings, owner, health, answering_for)
    # Its own thread on every instance; job checks on the leader only.
    watchdog = Watchdog(
        store,
        clock,
        settings,
        health,
        worker=owner.instance,
        leading=coordinator.holds_lease,
        bursting=runner.backlogged,
    )
    # The metrics read the runs that ended from the runner (runner.drain_ended): nothing calls up.
    metrics = Metrics(
        store,
        health,
        clock,
        owner.instance,
        coordinator.holds_lease,
        lambda: len(runner.active()),
        per_job_histograms=settings.metrics_per_job_histograms,
        ended=runner.drain_ended,
    )

    parts = Parts(
        store=store,
        owner=owner,
        health=health,
        recorder=recorder,
        runner=runner,
        dispatcher=dispatcher,
        coordinator=coordinator,
        watchdog=watchdog,
        metrics=metrics,
        bind_http=http_binder(settings, store, health, clock, metrics, runner.live_log)
        if settings.http_enabled
        else None,
    )
    return Service(settings, clock, parts, stop)


def build_recorder(settings: Settings, store: Store, clock: Clock, health: Health) -> Recorder:
    """The write-behind of run ends, spooling to this instance's file; it flushes again when the
    database is back."""
    recorder = Recorder(
        clock,
        store.runs.finish,
        spool_path(settings),
        health.database,
        mark_started=store.runs.mark_started,
        write_attempt=store.runs.set_attempt,
    )
    health.when_recovered(recorder.nudge)
    return recorder


def build_runner(
    settings: Settings, store: Store, clock: Clock, recorder: Recorder, stop: threading.Event
) -> Runner:
    """The runner: threads or child processes, the crash-loop guard, ends and attempts written
    through the recorder."""

    def set_attempt(claimed: Claimed, attempt: int) -> None:
        recorder.record_attempt(claimed.run_id, claimed.fence, attempt)

    def note_stack(claimed: Claimed, stack: str) -> None:
        try:
            store.runs.note_stack(claimed.run_id, claimed.fence, stack)
        except SchedulerError as exc:
            log.warning("could not note the stack of stuck run %s: %s", claimed.run_id, exc)

    guard = CrashLoopGuard(
        clock,
        settings.crash_loop_after,
        settings.crash_loop_max_backoff,
        settings.crash_loop_pause_after,
        pauser(store, clock),
    )
    return Runner(
        clock,
        settings.pool_size,
        settings.max_log_bytes,
        recorder.record,
        set_attempt,
        stop,
        began=recorder.began,
        isolation=ProcessIsolation(settings.jobs_path, settings.default_isolation),
        guard=guard,
        note_stack=note_stack,
    )


def build_dispatcher(
    settings: Settings,
    store: Store,
    clock: Clock,
    runner: Runner,
    owner: Owner,
    health: Health,
    unwritten: Callable[[], set[int]],
) -> Dispatcher:
    """The dispatcher as the daemon runs it: polling at least once a heartbeat (1 s at most).

    `unwritten` gives the runs that ended here with their outcome not yet written.
    """
    return Dispatcher(
        store,
        clock,
        runner,
        owner,
        settings.lease_ttl,
        settings.catchup_limit,
        min(1.0, settings.heartbeat.total_seconds()),
        health,
        settings.pool_size,
        unwritten=unwritten,
        # A run claimed ahead holds its lease from the claim: it must not run out before the slot.
        claim_ahead=min(settings.claim_ahead, settings.lease_ttl / 2),
    )


def http_binder(
    settings: Settings,
    store: Store,
    health: Health,
    clock: Clock,
    metrics: Metrics,
    live_log: Callable[[int], str | None],
) -> Callable[[], HttpServer]:
    """Binds the API, dashboard and metrics server on the configured address when called."""

    def bind_http() -> HttpServer:
        app = Api(
            store,
            health,
            clock,
            settings.api_token,
            metrics,
            live_log=live_log,
            default_isolation=settings.default_isolation,
        )
        return HttpServer(app, settings.http_host, settings.http_port)

    return bind_http
