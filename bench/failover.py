"""Failover and graceful handover between real daemons on PostgreSQL.

One job (every `interval`, overlap skip) whose body holds for 3 s or until the
run is cancelled, so the two instances take turns running it. The one running
the job is sent SIGKILL (crash) or SIGTERM (graceful stop), in turns, and in
turns while it holds the leader lease and while it does not. The figure is the
time from the signal to the start of the job's next run on the other instance
(its run row's started_at). After each trial a fresh instance joins, so two
are running again.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import main_with, pg_database, spawn_instance, stop_process, wait_for, write_jobs

DEFAULTS: dict[str, Any] = {"trials": 3, "interval": 0.25, "heartbeat": 2.0, "lease_ttl": 10.0}


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp, pg_database() as url:
        kills, terms = _trials(p, Path(tmp), url)
    return {
        **p,
        "sigkill_s": kills,
        "sigterm_s": terms,
        "sigkill_max_s": max(t["seconds"] for t in kills),
        "sigterm_max_s": max(t["seconds"] for t in terms),
    }


def _trials(p: dict[str, Any], base: Path, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import sqlalchemy as sa
    from scheduler.store import Store
    from scheduler.store.cluster import LEADER
    from scheduler.store.schema import runs

    write_jobs(base / "jobs", 1, p["interval"], body="hold3")
    store = Store(url)
    store.upgrade()
    procs: dict[int, subprocess.Popen[bytes]] = {}
    names = iter(range(1000))
    extra = {"heartbeat": f"{p['heartbeat']}s", "lease_ttl": f"{p['lease_ttl']}s", "grace_period": "10s"}

    def join() -> None:
        proc = spawn_instance(base, url, f"i{next(names)}", base / "jobs", **extra)
        procs[proc.pid] = proc
        wait_for(lambda: proc.pid in {i.pid for i in store.cluster.alive(datetime.now(UTC))}, 60, 0.02)

    def running_after(at: float, victim: str) -> Any:
        with store.db.read() as conn:
            query = sa.select(runs.c.pid, runs.c.owner, runs.c.started_at).where(
                runs.c.status.in_(("running", "succeeded")),
                runs.c.started_at >= datetime.fromtimestamp(at, UTC),
                runs.c.owner != victim,
            )
            return conn.execute(query.order_by(runs.c.started_at).limit(1)).first()

    def holding(want_leader: bool) -> Any:
        """The run going on now if its owner is (or is not) the leader and it has >= 1 s to go."""
        with store.db.read() as conn:
            query = sa.select(runs.c.pid, runs.c.owner, runs.c.started_at).where(runs.c.status == "running")
            current = conn.execute(query.order_by(runs.c.started_at.desc()).limit(1)).first()
        # a run's start is written once it has been executing for a moment
        if (
            current is None
            or current.started_at is None
            or time.time() - current.started_at.timestamp() > 2.0
        ):
            return None
        lease = store.cluster.lease(LEADER)
        return current if (lease is not None and lease.holder == current.owner) == want_leader else None

    kills: list[dict[str, Any]] = []
    terms: list[dict[str, Any]] = []
    try:
        join()
        join()
        for trial in range(2 * p["trials"]):
            sig = signal.SIGKILL if trial % 2 == 0 else signal.SIGTERM
            leader = (trial // 2) % 2 == 0
            try:
                current = wait_for(lambda want=leader: holding(want), 30, 0.02)
            except TimeoutError:  # the turns did not give that case: take the run as it comes
                leader = not leader
                current = wait_for(lambda want=leader: holding(want), 30, 0.02)
            sent = time.time()
            procs[current.pid].send_signal(sig)
            nxt = wait_for(lambda s=sent, v=current.owner: running_after(s, v), p["lease_ttl"] + 30, 0.02)
            figure = {"seconds": nxt.started_at.timestamp() - sent, "victim_was_leader": leader}
            (kills if sig == signal.SIGKILL else terms).append(figure)
            procs.pop(current.pid).wait(30)
            join()
    finally:
        for proc in procs.values():
            stop_process(proc)
        store.dispose()
    return kills, terms


if __name__ == "__main__":
    main_with(run)
