"""Membership, heartbeats, run leases, the leader lease and the leader's chores.

Each cycle (every `heartbeat`) an instance renews its membership row and the
leases of its running runs, then tries to take or keep the leader lease. Only
the leader runs the chores (reaping the work of dead instances, retention,
the watchdog), and only while its lease is provably held: it stops acting as
soon as a renewal fails. After a database outage it waits `settle_time`
before reaping, so peers that were merely cut off too get to renew first.
The leader's writes are fenced by its term: a deposed leader's reap matches
no row. At a graceful stop the instance steps down at once but keeps
renewing the leases of the runs it is still finishing (draining).
Invariant (checked in config): lease_ttl >= 3 x heartbeat. See docs/COORDINATION.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from scheduler import __version__
from scheduler.clock import Clock
from scheduler.cluster.health import Health
from scheduler.config import Settings
from scheduler.daemon.pidfile import process_alive
from scheduler.errors import AlreadyRunningError, SchedulerError
from scheduler.jobs.registry import retries_in, retry_allowed
from scheduler.store import InstanceRow, Owner, Store
from scheduler.store.cluster import LEADER, LeaderFence

log = logging.getLogger(__name__)

LEADING = "leader: leading"  # what a beat returns when the chores are this instance's to do

Chore = Callable[[datetime], None]
RETENTION_EVERY = timedelta(hours=1)
# How often an instance compares the jobs in the database with the jobs it loaded.
UNKNOWN_JOBS_EVERY = timedelta(seconds=30)


def pid_alive(pid: int) -> bool:
    """True if `pid` runs on this host; a killed daemon not yet reaped (a zombie) does not."""
    return process_alive(pid)


class Coordinator:
    """One instance's side of the cluster protocol.

    `active_runs` returns the ids of the runs this process still answers for
    (running, or ended with the outcome not yet written). Only their leases
    are renewed, so a run row this process does not know (a claim whose
    commit was lost with the connection) expires and is reaped. None renews
    every running run of this instance.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Settings,
        owner: Owner,
        health: Health,
        active_runs: Callable[[], Collection[int]] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.owner = owner
        self.health = health
        self.active_runs = active_runs
        self.chores: list[tuple[str, Chore]] = []
        self.is_leader = False
        self.term: int | None = None
        self.draining = False
        self._lock = threading.Lock()  # step() and step_down() never interleave
        self._lease_valid_until = 0.0
        self._settle_until = 0.0
        self._last_retention: datetime | None = None
        self._was_down = False
        self._jobs: set[str] = set()
        self._unknown_checked: datetime | None = None
        self._reported_unknown: set[str] = set()

    # -- start-up -------------------------------------------------------------

    def check_single_node(self, now: datetime) -> None:
        """On SQLite, refuse to start beside another live instance (SQLite is single-node).

        Raises AlreadyRunningError naming the other instance.
        """
        for other in self.store.cluster.alive(now):
            if other.host == self.owner.host and not pid_alive(other.pid):
                self.store.cluster.mark_dead(other.id, now)
                continue
            raise AlreadyRunningError(
                f"SQLite database {self.store.safe_url} is in use by the scheduler on host "
                f"{other.host} (pid {other.pid}); SQLite is single-node, use PostgreSQL for several instances"
            )

    def register(self, jobs: list[str], problems: list[dict[str, str]], now: datetime) -> None:
        self._jobs = set(jobs)
        self._unknown_checked = None
        self.store.cluster.register(
            InstanceRow(
                id=self.owner.instance,
                host=self.owner.host,
                pid=self.owner.pid,
                version=__version__,
                started_at=now,
                heartbeat_at=now,
                expires_at=now + self.settings.lease_ttl,
                stopped_at=None,
                status="alive",
                jobs=jobs,
                problems=problems,
            )
        )

    # -- the cycle ------------------------------------------------------------

    def step(self, now: datetime) -> str:
        """One heartbeat cycle, then the leader's chores; returns a sentence saying what was
        decided and why."""
        with self._lock:
            sentence = self._step(now)
        if sentence != LEADING:
            return sentence
        return "leader: " + self.chores_step(now)

    def beat(self, now: datetime) -> str:
        """Only the heartbeat: membership, run leases, the leader lease (never waits for chores)."""
        with self._lock:
            return self._step(now)

    def chores_step(self, now: datetime) -> str:
        """The leader's chores (reaping, retention, registered chores), if it leads."""
        if not self.holds_lease():
            return "not leading"
        if self.clock.monotonic() < self._settle_until:
            return "settling after a database outage, not reaping yet"
        return self._chores(now)

    def _step(self, now: datetime) -> str:
        mono = self.clock.monotonic()
        expires = now + self.settings.lease_ttl
        try:
            if not self.store.cluster.heartbeat(self.owner.instance, now, expires):
                log.warning("peers declared this instance dead (heartbeat lapsed); rejoining")
                self.store.cluster.revive(self.owner.instance, now, expires)
            self.health.heartbeat_written()
            self._renew(expires)
            term = (
                None
                if self.draining
                else self.store.cluster.acquire(LEADER, self.owner.instance, now, expires)
            )
            check_jobs = not self.draining and (
                self._unknown_checked is None or now - self._unknown_checked >= UNKNOWN_JOBS_EVERY
            )
            if check_jobs:
                self._unknown_checked = now
                self._check_unknown_jobs(now)
        except SchedulerError as exc:
            self._lose_leadership("cannot reach the database")
            self.health.database(False, str(exc))
            self._was_down = True
            return f"database unavailable: {exc}"
        self.health.database(True)
        if self._was_down:
            self._was_down = False
            self._settle_until = mono + self.settings.settle_time.total_seconds()
        if self.draining:
            return "draining: renewing the leases of the runs still finishing"
        if term is None:
            self._lose_leadership("another instance holds the leader lease")
            return "follower: another instance leads"
        if not self.is_leader:
            log.info("became leader (term %d)", term, extra={"action": "leader"})
        self.is_leader, self.term = True, term
        self._lease_valid_until = mono + self.settings.lease_ttl.total_seconds()
        if mono < self._settle_until:
            return "leader: settling after a database outage, not reaping yet"
        return LEADING

    def _renew(self, expires: datetime) -> None:
        ids = None if self.active_runs is None else self.active_runs()
        self.store.runs.renew(self.owner.instance, expires, ids)

    def _lose_leadership(self, why: str) -> None:
        if self.is_leader:
            log.warning("stopped leading: %s", why, extra={"action": "follower"})
        self.is_leader = False

    def holds_lease(self) -> bool:
        return self.is_leader and self.clock.monotonic() < self._lease_valid_until

    def _fence(self) -> LeaderFence:
        assert self.term is not None
        return LeaderFence(LEADER, self.owner.instance, self.term)

    def _chores(self, now: datetime) -> str:
        done = [self._reap(now)]
        if self._last_retention is None or now - self._last_retention >= RETENTION_EVERY:
            self._last_retention = now
            done.append(self._retention(now))
        for name, chore in self.chores:
            if not self.holds_lease():
                return "lease expired during chores; stopped"
            try:
                chore(now)
            except Exception:
                log.exception("leader chore %s failed; carrying on", name)
        return ", ".join(d for d in done if d) or "nothing to do"

    def _reap(self, now: datetime) -> str:
        fence = self._fence()
        dead = self.store.cluster.mark_expired_dead(now, fence)
        for inst in dead:
            log.warning(
                "instance %s (%s pid %d) stopped heartbeating; taking over its work",
                inst.id,
                inst.host,
                inst.pid,
                extra={"action": "reap"},
            )
        reaped = self.store.runs.reap(
            now, reason="owner stopped renewing its lease (instance lost)", fence=fence
        )
        if not reaped:
            return f"{len(dead)} dead instances" if dead else ""
        definitions = {row.name: row.definition for row in self.store.jobs.all()}
        retry = [r.id for r in reaped if retry_allowed(r.attempt, retries_in(definitions.get(r.job, {})))]
        self.store.runs.requeue(retry)
        for run in reaped:
            log.warning(
                "run %s of %s abandoned by %s; %s",
                run.id,
                run.job,
                run.host,
                "queued for retry" if run.id in retry else "marked abandoned",
                extra={"job": run.job, "run_id": run.id, "action": "reap"},
            )
        return f"reaped {len(reaped)} runs ({len(retry)} requeued)"

    # -- jobs this instance does not have ---------------------------------------

    def _check_unknown_jobs(self, now: datetime) -> None:
        """Say once per job when the database has a job whose code is not here.

        Such a job is left to the instances that loaded it: this one never
        claims its slots nor takes its queued runs.
        """
        names = self.store.jobs.names()
        unknown = names - self._jobs - self._reported_unknown
        if not unknown:
            return
        holders = self._holders(now)
        for name in sorted(unknown):
            others = ", ".join(holders.get(name, [])) or "none alive"
            log.warning(
                "job %s is not loaded on this instance (its code is not here); left to: %s",
                name,
                others,
                extra={"job": name, "action": "unknown-job"},
            )
        self._reported_unknown |= unknown

    def _holders(self, now: datetime) -> dict[str, list[str]]:
        holders: dict[str, list[str]] = {}
        for inst in self.store.cluster.alive(now):
            for name in inst.jobs:
                holders.setdefault(name, []).append(inst.host)
        return holders

    def _retention(self, now: datetime) -> str:
        cutoff = now - self.settings.retention
        pruned = self.store.runs.prune(cutoff)
        self.store.cluster.prune(cutoff)
        return f"pruned {pruned} runs" if pruned else ""

    def run(self, stop: threading.Event) -> None:
        """Heartbeats every period, on a thread of their own: chores (`run_chores`) never delay them."""
        self._loop(stop, self.beat, "heartbeat")

    def run_chores(self, stop: threading.Event) -> None:
        """The leader's chores every heartbeat period, on their own thread."""
        self._loop(stop, self.chores_step, "leader chores")

    def _loop(self, stop: threading.Event, cycle: Callable[[datetime], str], what: str) -> None:
        period = self.settings.heartbeat.total_seconds()
        while not stop.is_set():
            started = self.clock.monotonic()
            try:
                sentence = cycle(self.clock.now())
                log.debug("coordination (%s): %s", what, sentence)
            except Exception:
                log.exception("%s cycle failed; carrying on", what)
            elapsed = self.clock.monotonic() - started
            if elapsed > period:
                log.warning("%s cycle took %.1fs, longer than the heartbeat %.1fs", what, elapsed, period)
            self.clock.wait(max(0.0, period - elapsed), stop)

    def step_down(self) -> None:
        """Graceful stop, first step: give up the leader lease at once, keep renewing runs.

        A peer takes the lead at its next cycle instead of after the TTL.
        """
        with self._lock:
            self.draining = True
            was_leader, self.is_leader = self.is_leader, False
            try:
                self.store.cluster.release(LEADER, self.owner.instance)
            except SchedulerError as exc:
                log.warning("could not release the leader lease: %s", exc)
                return
        if was_leader:
            log.info("stepped down as leader (stopping)", extra={"action": "follower"})

    def release(self, now: datetime) -> None:
        """Give up the leader lease and leave the cluster at once (graceful stop)."""
        with self._lock:
            self.draining = True
            try:
                self.store.cluster.release(LEADER, self.owner.instance)
                self.store.cluster.mark_stopped(self.owner.instance, now)
            except SchedulerError as exc:
                log.warning("could not release leases at exit: %s", exc)
            self.is_leader = False
