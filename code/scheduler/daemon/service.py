"""The daemon's lifecycle: starts the parts' threads, and stops them in order.

The parts are built and connected outside (`scheduler.daemon.wiring.build_service`).

Shutdown order: stop claiming; ask running jobs to wrap up and wait up to the
grace period; write their records; mark what still runs `abandoned`; release
the leader lease and leave the cluster; dispose of the engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from scheduler import config as config_module
from scheduler.alerting.watchdog import Watchdog
from scheduler.clock import Clock
from scheduler.cluster.coordination import Coordinator, pid_alive
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.daemon import children
from scheduler.engine import proctitle
from scheduler.engine.dispatcher import Dispatcher
from scheduler.engine.isolation import KILL_GRACE
from scheduler.engine.recorder import Recorder
from scheduler.engine.runner import Runner
from scheduler.errors import SchedulerError
from scheduler.jobs.discovery import LoadProblem, load_jobs
from scheduler.jobs.registry import JobSpec
from scheduler.operator.metrics import Metrics
from scheduler.operator.server import HttpServer
from scheduler.store import Owner, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parts:
    """What a Service runs, built and connected by `scheduler.daemon.wiring` (or by a test)."""

    store: Store
    owner: Owner
    health: Health
    recorder: Recorder
    runner: Runner
    dispatcher: Dispatcher
    coordinator: Coordinator
    watchdog: Watchdog
    metrics: Metrics
    # Binds the HTTP server; called first thing in `start`, so a taken port fails the start.
    bind_http: Callable[[], HttpServer] | None = None


class Service:
    """Starts the parts' loops, reloads jobs on SIGHUP, and stops the parts in order.

    `stop_event` is the event the runner was given: setting it asks running jobs to wrap up.
    """

    def __init__(self, settings: Settings, clock: Clock, parts: Parts, stop_event: threading.Event) -> None:
        self.settings = settings
        self.clock = clock
        self.stop_event = stop_event
        self.reload_event = threading.Event()
        self.store = parts.store
        self.owner = parts.owner
        self.health = parts.health
        self.recorder = parts.recorder
        self.runner = parts.runner
        self.dispatcher = parts.dispatcher
        self.coordinator = parts.coordinator
        self.watchdog = parts.watchdog
        self.metrics = parts.metrics
        self._bind_http = parts.bind_http
        self.specs: dict[str, JobSpec] = {}
        self.problems: list[LoadProblem] = []
        self._threads: list[threading.Thread] = []
        # The coordinator outlives the other loops at shutdown: it renews the leases of runs still finishing.
        self._drained = threading.Event()
        self._coordinator_thread: threading.Thread | None = None
        self.on_stop: list[Callable[[], None]] = []
        self.http: HttpServer | None = None

    # -- start ------------------------------------------------------------

    def start(self) -> None:
        """Migrate, load jobs, recover from a previous crash, start the loops.

        Raises SchedulerError (StoreError, AlreadyRunningError, ...) if it cannot start.
        """
        if self._bind_http is not None:  # bind first: a taken port fails the start before anything runs
            self.http = self._bind_http()
        self.store.upgrade()
        now = self.clock.now()
        if self.store.is_sqlite:
            self.coordinator.check_single_node(now)
        self.recorder.replay_spool()
        self.recorder.flush_once()
        for run in self.store.runs.reap_local(self.owner.host, pid_alive, now):
            # A thread run that calls os._exit or crashes in C code takes the daemon with it: say which
            # run was in flight, the likely culprit (isolation="process" contains it).
            log.warning(
                "the previous daemon (pid %s) died while run %s of %s (slot %s) was in flight: "
                "marked abandoned",
                run.pid,
                run.id,
                run.job,
                run.scheduled_for.isoformat(),
                extra={"job": run.job, "run_id": run.id, "action": "abandoned"},
            )
        self._load_jobs(now)
        # Loading 10,000 jobs takes seconds: the instance row's heartbeat and expiry are from now,
        # not from before the load (it would join the cluster already expired).
        now = self.clock.now()
        self.coordinator.register(sorted(self.specs), self._problem_dicts(), now)
        self.coordinator.beat(now)  # membership and leases now; the chores run on their own thread
        log.info(
            "started instance %s (pid %d) with %d jobs on %s",
            self.owner.instance,
            self.owner.pid,
            len(self.specs),
            self.store.safe_url,
        )
        self.recorder.start()
        self._coordinator_thread = self._spawn("coordinator", self.coordinator.run, self._drained)
        self._spawn("chores", self.coordinator.run_chores)
        self._spawn("dispatcher", self.dispatcher.run)
        self.watchdog.announce()
        self._spawn("watchdog", self.watchdog.run)
        if self.http is not None:
            self.http.start()
            self.on_stop.append(self.http.stop)

    def _spawn(
        self, name: str, target: Callable[[threading.Event], None], stop: threading.Event | None = None
    ) -> threading.Thread:
        thread = threading.Thread(target=target, args=(stop or self.stop_event,), name=name, daemon=True)
        thread.start()
        if stop is None:
            self._threads.append(thread)
        return thread

    def _load_jobs(self, now: datetime) -> None:
        # On a reload, a module that loaded before and fails now keeps its previous jobs.
        result = load_jobs(self.settings.jobs_path, previous=self.specs)
        self.specs, self.problems = result.specs, result.problems
        if any(self.runner.isolation.applies(spec) for spec in self.specs.values()):
            self.runner.isolation.prewarm()  # the forkserver imports the job modules once, now
        for problem in self.problems:
            log.error("job load failed: %s", problem, extra={"action": "load-error"})
        for warning in result.warnings:
            log.warning("job load: %s", warning, extra={"action": "load-warning"})
        rows = self.store.jobs.sync(self.specs.values(), now)
        self.dispatcher.load(self.specs, rows, self.store.runs.last_slots())
        for spec in self.specs.values():
            state = self.dispatcher.states.get(spec.name)
            next_at = state.next_at.isoformat() if state else "never (disabled)"
            log.info("job %s: %s, next run %s", spec.name, rows[spec.name].schedule_text, next_at)

    def _problem_dicts(self) -> list[dict[str, str]]:
        return [{"where": p.where, "message": p.message} for p in self.problems]

    # -- while running ----------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-import job modules and re-read the log level."""
        try:
            fresh = config_module.load()
            from scheduler.daemon.logsetup import set_level

            set_level(fresh.log_level)
            self._load_jobs(self.clock.now())
            self.store.cluster.update_loaded(self.owner.instance, sorted(self.specs), self._problem_dicts())
            log.info("reloaded: %d jobs, %d problems", len(self.specs), len(self.problems))
        except SchedulerError as exc:
            log.error("reload failed, keeping the previous jobs: %s", exc)

    def title_state(self) -> str:
        """What `ps` shows after the command line, e.g. `scheduler leader, 3/8 busy`."""
        role = "leader" if self.coordinator.is_leader else "follower"
        if self.stop_event.is_set():
            role = "stopping"
        return f"scheduler {role}, {len(self.runner.active())}/{self.settings.pool_size} busy"

    def serve_forever(self) -> None:
        """Block until stopped (signal handlers set the events), then shut down."""
        while not self.stop_event.is_set():
            self.metrics.observe_ended()  # read from the runner: nothing calls up into this layer
            proctitle.set_state(self.title_state())
            if self.reload_event.wait(0.5):
                self.reload_event.clear()
                if not self.stop_event.is_set():
                    self.reload()
        self.shutdown()

    # -- stop -------------------------------------------------------------

    def request_stop(self) -> None:
        self.stop_event.set()
        self.dispatcher.wake.set()

    def shutdown(self) -> None:
        self.request_stop()
        proctitle.set_state(self.title_state())
        # Hand the leader lease over now, not after the grace period; runs keep their leases.
        self.coordinator.step_down()
        for thread in self._threads:
            thread.join(timeout=5)
        grace = self.settings.grace_period.total_seconds()
        running = self.runner.active()
        if running:
            log.info("waiting up to %.0fs for %d running jobs", grace, len(running))
            self.runner.cancel_all()
            self.runner.wait_idle(grace)
        if self.runner.isolation.kill_all():  # process runs past the grace: their threads record them
            self.runner.wait_idle(KILL_GRACE)
        unfinished = [a.claimed.run_id for a in self.runner.active()]
        deadline = self.clock.monotonic() + 5.0
        self.recorder.close(deadline)
        now = self.clock.now()
        try:
            # Only runs still going here: a finished run whose record was spooled keeps its
            # lease row as it is, so the replay at the next start can write its real outcome.
            for run in self.store.runs.reap(
                now,
                owner=self.owner.instance,
                ids=unfinished,
                reason="the daemon stopped before the run finished",
            ):
                log.warning("run %s of %s abandoned at shutdown", run.id, run.job, extra={"run_id": run.id})
        except SchedulerError as exc:
            log.error("could not mark unfinished runs abandoned: %s", exc)
        self._drained.set()
        if self._coordinator_thread is not None:
            self._coordinator_thread.join(timeout=5)
        for hook in self.on_stop:
            hook()
        self.coordinator.release(now)
        self.runner.shutdown()
        children.terminate_descendants()
        self.store.dispose()
        log.info("stopped instance %s", self.owner.instance)
