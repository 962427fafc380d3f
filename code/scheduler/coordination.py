"""Membership, heartbeats, run leases, the leader lease and the leader's chores.

Each cycle (every `heartbeat`) an instance renews its membership row and the
leases of its running runs, then tries to take or keep the leader lease. Only
the leader runs the chores (reaping the work of dead instances, retention,
the watchdog), and only while its lease is provably held: it stops acting as
soon as a renewal fails. After a database outage it waits `settle_time`
before reaping, so peers that were merely cut off too get to renew first.
Invariant (checked in config): lease_ttl >= 3 x heartbeat.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from scheduler import __version__
from scheduler.clock import Clock
from scheduler.config import Settings
from scheduler.errors import AlreadyRunningError, SchedulerError
from scheduler.health import Health
from scheduler.store import InstanceRow, Owner, Store
from scheduler.store.cluster import LEADER

log = logging.getLogger(__name__)

Chore = Callable[[datetime], None]
RETENTION_EVERY = timedelta(hours=1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Coordinator:
    def __init__(self, store: Store, clock: Clock, settings: Settings, owner: Owner, health: Health) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.owner = owner
        self.health = health
        self.chores: list[tuple[str, Chore]] = []
        self.is_leader = False
        self.term: int | None = None
        self._lease_valid_until = 0.0
        self._settle_until = 0.0
        self._last_retention: datetime | None = None
        self._was_down = False

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
        """One heartbeat cycle; returns a sentence saying what was decided and why."""
        mono = self.clock.monotonic()
        expires = now + self.settings.lease_ttl
        try:
            if not self.store.cluster.heartbeat(self.owner.instance, now, expires):
                log.warning("peers declared this instance dead (heartbeat lapsed); rejoining")
                self.store.cluster.revive(self.owner.instance, now, expires)
            self.store.runs.renew(self.owner.instance, expires)
            term = self.store.cluster.acquire(LEADER, self.owner.instance, now, expires)
        except SchedulerError as exc:
            self._lose_leadership("cannot reach the database")
            self.health.database(False, str(exc))
            self._was_down = True
            return f"database unavailable: {exc}"
        self.health.database(True)
        if self._was_down:
            self._was_down = False
            self._settle_until = mono + self.settings.settle_time.total_seconds()
        if term is None:
            self._lose_leadership("another instance holds the leader lease")
            return "follower: another instance leads"
        if not self.is_leader:
            log.info("became leader (term %d)", term, extra={"action": "leader"})
        self.is_leader, self.term = True, term
        self._lease_valid_until = mono + self.settings.lease_ttl.total_seconds()
        if mono < self._settle_until:
            return "leader: settling after a database outage, not reaping yet"
        return "leader: " + self._chores(now)

    def _lose_leadership(self, why: str) -> None:
        if self.is_leader:
            log.warning("stopped leading: %s", why, extra={"action": "follower"})
        self.is_leader = False

    def holds_lease(self) -> bool:
        return self.is_leader and self.clock.monotonic() < self._lease_valid_until

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
        dead = self.store.cluster.mark_expired_dead(now)
        for inst in dead:
            log.warning(
                "instance %s (%s pid %d) stopped heartbeating; taking over its work",
                inst.id,
                inst.host,
                inst.pid,
                extra={"action": "reap"},
            )
        reaped = self.store.runs.reap(now, reason="owner stopped renewing its lease (instance lost)")
        if not reaped:
            return f"{len(dead)} dead instances" if dead else ""
        definitions = {row.name: row.definition for row in self.store.jobs.all()}
        retry = [r.id for r in reaped if r.attempt <= int(definitions.get(r.job, {}).get("retries", 0))]
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

    def _retention(self, now: datetime) -> str:
        cutoff = now - self.settings.retention
        pruned = self.store.runs.prune(cutoff)
        self.store.cluster.prune(cutoff)
        return f"pruned {pruned} runs" if pruned else ""

    def run(self, stop: threading.Event) -> None:
        period = self.settings.heartbeat.total_seconds()
        while not stop.is_set():
            started = self.clock.monotonic()
            try:
                sentence = self.step(self.clock.now())
                log.debug("coordination: %s", sentence)
            except Exception:
                log.exception("coordination cycle failed; carrying on")
            elapsed = self.clock.monotonic() - started
            if elapsed > period:
                log.warning(
                    "coordination cycle took %.1fs, longer than the heartbeat %.1fs",
                    elapsed,
                    period,
                )
            self.clock.wait(max(0.0, period - elapsed), stop)

    def release(self, now: datetime) -> None:
        """Give up the leader lease and leave the cluster at once (graceful stop)."""
        try:
            self.store.cluster.release(LEADER, self.owner.instance)
            self.store.cluster.mark_stopped(self.owner.instance, now)
        except SchedulerError as exc:
            log.warning("could not release leases at exit: %s", exc)
        self.is_leader = False
