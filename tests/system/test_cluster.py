"""Several daemons on one PostgreSQL: exactly once, failover, fencing, outages, leader, live changes.

Each test starts real `control.py run` processes, one per instance name, on a
fresh database, with short timings (heartbeat 0.5 s, lease TTL 2 s). Job
modules written by the test record each run's slot in an `effects` table of
the test's own, without a unique constraint, so a slot run twice shows up.
Effects go straight to PostgreSQL (not through the outage proxy), as a job's
own side effects would. `pytest -s` prints the measured figures.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from scheduler.store import Store

from tests.support import REPO
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.system, pytest.mark.postgres]

HEARTBEAT = 0.5
LEASE_TTL = 2.0
SETTLE = 1.0
# Slots of a job whose run the killed instance left 'running' may be skipped until the
# run is reaped: at most lease_ttl + heartbeat after the kill (docs/COORDINATION.md).
FAILOVER_WINDOW = LEASE_TTL + HEARTBEAT
WINDOW_MARGIN = 1.0  # scheduling and process latency on a loaded CI machine
CHAOS_SECONDS = float(os.environ.get("SCHEDULER_CHAOS_SECONDS", "40"))
OUTAGE_SECONDS = float(os.environ.get("SCHEDULER_OUTAGE_SECONDS", "12"))
CONTROL = REPO / "code" / "scheduler" / "control.py"
FINAL = ("succeeded", "failed", "timed_out", "skipped", "missed", "abandoned")

EFFECTS_TABLE = """
CREATE TABLE effects (
    job text NOT NULL, slot timestamptz NOT NULL, host text NOT NULL, run_id bigint NOT NULL,
    note text NOT NULL DEFAULT '', at timestamptz NOT NULL DEFAULT clock_timestamp()
)"""

JOB_PRELUDE = """
import os
import threading
import urllib.error
import urllib.request
import time
from datetime import timedelta

import psycopg2

from scheduler import job

HOST = os.environ["SCHEDULER_INSTANCE_NAME"]
_local = threading.local()


def effect(ctx, note=""):
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg2.connect(os.environ["EFFECTS_URL"])
        conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO effects (job, slot, host, run_id, note) VALUES (%s, %s, %s, %s, %s)",
            (ctx.job, ctx.scheduled_for, HOST, ctx.run_id, note),
        )
"""


def many_jobs_module(prefix: str, count: int, seconds: float, interval: float = 1.0) -> str:
    """`count` jobs at `interval`, each recording its slot then working `seconds`."""
    return (
        JOB_PRELUDE
        + f'''

def _run(ctx):
    effect(ctx)
    time.sleep({seconds})


for _i in range({count}):
    job(interval=timedelta(seconds={interval}), name="{prefix}.j%02d" % _i)(_run)
'''
    )


def now() -> datetime:
    return datetime.now(UTC)


def pace_until(instant: datetime) -> None:
    """The chaos driver's own pacing (when to kill next), not a wait for the daemons."""
    threading.Event().wait(max(0.0, (instant - now()).total_seconds()))


# -- processes ----------------------------------------------------------------


class Node:
    """One daemon instance: `control.py run` with its own name, pidfile and log folder."""

    def __init__(self, name: str, folder: Path, env: dict[str, str]) -> None:
        self.name, self.folder, self.env = name, folder, env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Node:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(CONTROL), "run"], cwd=REPO, env=self.env, stdout=out, stderr=out
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.alive():
            self.send(signal.SIGCONT)
            self.send(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def log(self) -> str:
        path = self.folder / "logs" / "info.log"
        return path.read_text() if path.exists() else ""

    def output_tail(self) -> str:
        path = self.folder / "stdout.log"
        return path.read_text()[-3000:] if path.exists() else ""


class Cluster:
    def __init__(self, pg_url: str, tmp: Path) -> None:
        self.pg_url, self.tmp = pg_url, tmp
        self.nodes: list[Node] = []
        self.proxy: TcpProxy | None = None
        store = Store(pg_url)
        store.upgrade()  # so the test can query the tables before the first daemon is up
        store.dispose()
        self.conn = psycopg2.connect(pg_url)
        self.conn.autocommit = True
        self.execute(EFFECTS_TABLE)

    def execute(self, sql: str, *args: Any) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def value(self, sql: str, *args: Any) -> Any:
        found = self.rows(sql, *args)
        return found[0][0] if found else None

    def jobs_dir(self, name: str, modules: dict[str, str]) -> Path:
        folder = self.tmp / "jobs" / name
        folder.mkdir(parents=True)
        for file, text in modules.items():
            (folder / file).write_text(text)
        return folder

    def node(self, name: str, jobs: Path, db_url: str | None = None, **extra: str) -> Node:
        folder = self.tmp / name
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        env.update(
            SCHEDULER_DATABASE_URL=db_url or self.pg_url,
            SCHEDULER_JOBS_PATH=str(jobs),
            SCHEDULER_PIDFILE=str(self.tmp / f"{name}.pid"),
            SCHEDULER_LOG_DIR=str(folder / "logs"),
            SCHEDULER_STATE_DIR=str(folder / "var"),
            SCHEDULER_INSTANCE_NAME=name,
            SCHEDULER_HEARTBEAT=f"{HEARTBEAT}s",
            SCHEDULER_LEASE_TTL=f"{LEASE_TTL}s",
            SCHEDULER_SETTLE_TIME=f"{SETTLE}s",
            SCHEDULER_GRACE_PERIOD="5s",
            SCHEDULER_LOG_LEVEL="INFO",
            EFFECTS_URL=self.pg_url,
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        node = Node(name, folder, env)
        self.nodes.append(node)
        return node.start()

    def wait_ready(self, node: Node, timeout: float = 30.0) -> str:
        """Wait until `node`'s current process has registered and heartbeats; returns its instance id."""

        def registered() -> str | None:
            if not node.alive():
                raise AssertionError(f"{node.name} exited during start-up:\n{node.output_tail()}")
            return self.instance_id(node)

        return str(wait_until(registered, timeout))

    def instance_id(self, node: Node) -> str | None:
        return self.value(  # type: ignore[no-any-return]
            "SELECT id FROM instances WHERE host = %s AND pid = %s AND status = 'alive'", node.name, node.pid
        )

    def leader(self) -> str | None:
        """The host holding an unexpired leader lease."""
        return self.value(  # type: ignore[no-any-return]
            "SELECT i.host FROM leases l JOIN instances i ON i.id = l.holder "
            "WHERE l.name = 'leader' AND l.expires_at > now()"
        )

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM every live node and wait; each must exit 0."""
        live = [n for n in self.nodes if n.alive()]
        for node in live:
            node.send(signal.SIGTERM)
        for node in live:
            assert node.wait_exit(timeout) == 0, f"{node.name} did not stop cleanly:\n{node.output_tail()}"

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        if self.proxy is not None:
            self.proxy.close()
        self.conn.close()

    # -- what happened ----------------------------------------------------------

    def duplicates(self) -> list[tuple[Any, ...]]:
        """Slots whose job began more than once ('end' marks are not beginnings)."""
        return self.rows(
            "SELECT job, slot, count(*) FROM effects WHERE note <> 'end' "
            "GROUP BY job, slot HAVING count(*) > 1"
        )

    def effects(self) -> set[tuple[str, datetime]]:
        return {(job, slot) for job, slot in self.rows("SELECT job, slot FROM effects")}

    def unfinished_runs(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT id, job, status, host FROM runs WHERE status IN ('running', 'queued')")

    def effects_without_final_run(self) -> list[tuple[Any, ...]]:
        """Effect rows whose run record is missing, not of that slot, or not ended."""
        return self.rows(
            "SELECT e.job, e.slot, e.run_id, r.status FROM effects e LEFT JOIN runs r ON r.id = e.run_id "
            "WHERE r.id IS NULL OR r.job <> e.job OR r.scheduled_for <> e.slot OR r.status <> ALL(%s)",
            list(FINAL),
        )

    def late_or_lost(self, missed: list[tuple[str, datetime]]) -> tuple[list[Any], list[Any]]:
        """Split slots that did not run: recorded late (missed/skipped), or lost (no run, abandoned)."""
        status = {(j, s): st for j, s, st in self.rows("SELECT job, scheduled_for, status FROM runs")}
        late = [m for m in missed if status.get(m) in ("missed", "skipped")]
        return late, [(m, status.get(m)) for m in missed if m not in late]

    def expected_slots(self, prefix: str, first: datetime, last: datetime) -> set[tuple[str, datetime]]:
        """Every interval slot of the jobs named `prefix.*` in [first, last]."""
        expected = set()
        for name, anchor, definition in self.rows(
            "SELECT name, anchor_at, definition FROM jobs WHERE name LIKE %s", prefix + ".%"
        ):
            step = timedelta(seconds=(definition or {})["interval_seconds"])
            slot = anchor + max(0, -(-(first - anchor) // step)) * step
            while slot <= last:
                expected.add((name, slot))
                slot += step
        return expected


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(pg_url, tmp_path)
    try:
        yield c
    finally:
        c.close()


def log_lines(node: Node, text: str) -> list[str]:
    return [line for line in node.log().splitlines() if text in line]


# -- 1. chaos: SIGKILL and restart while 50 jobs run every second ------------------------------


CHAOS_MODULE = (
    many_jobs_module("chaos", 50, 0.05)
    + """

@job(interval=timedelta(seconds=1), name="chaos.long")
def long(ctx):
    effect(ctx)
    time.sleep(2.5)
"""
)
# Slots missed because the whole cluster ran late (a loaded CI host), not because of a kill:
# recorded as 'missed' (claimed after the next slot was due) or 'skipped' (the job's previous
# run overran). Tolerated up to this share of all slots, and reported; a scheduler that
# ran the cluster late itself (one instance queueing every slot) missed a quarter of them.
LATE_SHARE = 0.05


def test_each_slot_runs_once_while_instances_are_killed_and_restarted(cluster: Cluster) -> None:
    jobs = cluster.jobs_dir("all", {"chaos.py": CHAOS_MODULE})
    nodes = [cluster.node(f"node{i}", jobs) for i in (1, 2, 3)]
    for node in nodes:
        cluster.wait_ready(node)
    warm_up(cluster, nodes)
    begin = now()
    end = begin + timedelta(seconds=CHAOS_SECONDS)
    kills: list[dict[str, Any]] = []
    while begin + timedelta(seconds=5 + 10 * len(kills)) + timedelta(seconds=8) <= end:
        pace_until(begin + timedelta(seconds=5 + 10 * len(kills)))
        kills.append(kill_and_measure_failover(cluster, nodes, len(kills)))
    pace_until(end)
    stopped_at = now()
    cluster.stop_all()

    duplicates = cluster.duplicates()
    expected = cluster.expected_slots(
        "chaos", begin + timedelta(seconds=1), stopped_at - timedelta(seconds=1.5)
    )
    expected = {(job, slot) for job, slot in expected if job != "chaos.long"}  # overlaps itself by design
    missed = sorted(expected - cluster.effects())
    outside = [m for m in missed if not any(excused(m, k) for k in kills)]
    late, lost = cluster.late_or_lost(outside)
    detections = [round(k["detected"], 2) for k in kills]
    failovers = [round(k["failover"], 2) for k in kills]
    print(
        f"\nchaos: {CHAOS_SECONDS:.0f}s, 3 instances, 50 jobs @1s, {len(kills)} SIGKILLs; "
        f"{len(expected)} slots; duplicates={len(duplicates)}; missed={len(missed)}: "
        f"{len(missed) - len(outside)} in a failover window, {len(late)} late under load, {len(lost)} lost; "
        f"SIGKILL to instance dead and its runs reaped, seconds={detections}; "
        f"to its job running on a peer={failovers}; "
        f"runs reaped per kill={[len(k['blocked']) for k in kills]}; "
        f"run statuses={dict(cluster.rows('SELECT status, count(*) FROM runs GROUP BY status'))}"
    )
    if late:
        offsets = sorted(
            {round(min(((m[1] - k["killed_at"]).total_seconds() for k in kills), key=abs), 1) for m in late}
        )
        print(f"  late slots, seconds after the nearest kill: {offsets}")
    assert kills, "the chaos phase was too short to kill anything"
    assert duplicates == []
    assert lost == [], f"slots neither run nor decided, outside the failover window: {lost[:10]}"
    assert len(late) <= LATE_SHARE * len(expected), f"too many slots missed for lateness: {late[:10]}"
    assert max(detections) <= FAILOVER_WINDOW + WINDOW_MARGIN
    assert max(failovers) <= FAILOVER_WINDOW + 1.0 + WINDOW_MARGIN  # + the job's interval: its next slot
    assert cluster.unfinished_runs() == []
    assert cluster.effects_without_final_run() == []


def warm_up(cluster: Cluster, nodes: list[Node]) -> None:
    """Measure from when every instance has run jobs (imports, connections and pools warmed up)."""
    for node in nodes:
        wait_until(
            lambda node=node: (
                cluster.value("SELECT count(*) FROM runs WHERE host = %s AND status = 'succeeded'", node.name)
                >= 10
            ),
            20,
        )


def kill_and_measure_failover(cluster: Cluster, nodes: list[Node], index: int) -> dict[str, Any]:
    """SIGKILL the instance running `chaos.long`; time until a peer runs it; restart the victim."""
    holder = cluster.value("SELECT host FROM runs WHERE job = 'chaos.long' AND status = 'running'")
    victim = next((n for n in nodes if n.name == holder), nodes[index % len(nodes)])
    instance = cluster.instance_id(victim)
    victim.send(signal.SIGKILL)
    killed_at = now()
    victim.wait_exit(10)
    blocked = {
        job
        for (job,) in cluster.rows("SELECT job FROM runs WHERE owner = %s AND status = 'running'", instance)
    }

    def reaped() -> bool:
        dead = cluster.value("SELECT status FROM instances WHERE id = %s", instance) == "dead"
        left = cluster.value("SELECT count(*) FROM runs WHERE owner = %s AND status = 'running'", instance)
        return bool(dead and left == 0)

    def rerun() -> bool:
        return "chaos.long" not in blocked or bool(
            cluster.value(
                "SELECT count(*) FROM runs WHERE job = 'chaos.long' AND host <> %s AND claimed_at > %s "
                "AND status IN ('running', 'succeeded')",
                victim.name,
                killed_at,
            )
        )

    wait_until(reaped, timeout=LEASE_TTL * 4 + 5, interval=0.02)
    detected = (now() - killed_at).total_seconds()
    wait_until(rerun, timeout=10, interval=0.02)
    failover = (now() - killed_at).total_seconds()
    victim.start()
    cluster.wait_ready(victim)
    return {
        "node": victim.name,
        "killed_at": killed_at,
        "detected": detected,
        "failover": failover,
        "blocked": blocked,
    }


def excused(missed: tuple[str, datetime], kill: dict[str, Any]) -> bool:
    """A slot of a job the killed instance was running, due before that run could be reaped."""
    job, slot = missed
    window_start = kill["killed_at"] - timedelta(seconds=1)  # the slot that was running at the kill
    window_end = kill["killed_at"] + timedelta(seconds=FAILOVER_WINDOW + WINDOW_MARGIN)
    return job in kill["blocked"] and window_start <= slot <= window_end


# -- 2. fencing: a paused instance's late result does not overwrite the new owner's ------------

FENCE_MODULE = (
    JOB_PRELUDE
    + """

@job(interval=timedelta(hours=1), retries=1, retry_delay=timedelta(0), name="fence.slow")
def slow(ctx):
    effect(ctx, "begin")
    ctx.log.info("attempt on %s", HOST)
    time.sleep(10 if HOST == "paused" else 1)
    effect(ctx, "end")


@job(interval=timedelta(seconds=1), name="fence.tick")
def tick(ctx):
    effect(ctx)
"""
)


def test_paused_instance_late_result_does_not_overwrite_the_new_owner(cluster: Cluster) -> None:
    jobs = cluster.jobs_dir("fence", {"fence.py": FENCE_MODULE})
    paused = cluster.node("paused", jobs)
    paused_id = cluster.wait_ready(paused)
    run_id = wait_until(
        lambda: cluster.value("SELECT id FROM runs WHERE job = 'fence.slow' AND status = 'running'"), 15
    )
    peer = cluster.node("peer", jobs)
    peer_id = cluster.wait_ready(peer)
    paused.send(signal.SIGSTOP)
    stopped_at = now()
    wait_until(lambda: cluster.value("SELECT owner FROM runs WHERE id = %s", run_id) == peer_id, 15)
    taken_after = (now() - stopped_at).total_seconds()
    paused.send(signal.SIGCONT)
    resumed_at = now()

    lost = f"run {run_id}: result not recorded, another instance owns it now (lease lost)"
    wait_until(lambda: log_lines(paused, lost), 20)
    wait_until(lambda: cluster.value("SELECT status FROM runs WHERE id = %s", run_id) == "succeeded", 15)
    status, owner, host, fence, run_log = cluster.rows(
        "SELECT status, owner, host, fence, log FROM runs WHERE id = %s", run_id
    )[0]
    print(f"\nfencing: paused instance's run taken over {taken_after:.2f}s after SIGSTOP (TTL {LEASE_TTL}s)")
    # fence 3: claimed (1), reaped (2), taken from the queue by the peer (3)
    assert (status, owner, host, fence) == ("succeeded", peer_id, "peer", 3)
    assert "attempt on peer" in run_log and "attempt on paused" not in run_log
    assert log_lines(peer, f"run {run_id} of fence.slow abandoned by paused; queued for retry")
    ends = cluster.rows("SELECT host FROM effects WHERE run_id = %s AND note = 'end' ORDER BY at", run_id)
    assert [h for (h,) in ends] == ["peer", "paused"], "the paused attempt did not finish after SIGCONT"

    # The resumed instance rejoins and keeps working.
    wait_until(lambda: cluster.value("SELECT status FROM instances WHERE id = %s", paused_id) == "alive", 10)
    assert log_lines(paused, "peers declared this instance dead (heartbeat lapsed); rejoining")
    wait_until(
        lambda: cluster.value(
            "SELECT count(*) FROM runs WHERE job = 'fence.tick' AND host = 'paused' "
            "AND status = 'succeeded' AND claimed_at > %s",
            resumed_at,
        ),
        15,
    )
    cluster.stop_all()
    assert cluster.unfinished_runs() == []


# -- 3. database outage through a proxy that is cut and restored -------------------------------

OUTAGE_MODULE = (
    many_jobs_module("outage", 10, 0.1)
    + """

@job(interval=timedelta(seconds=4), name="outage.long")
def long(ctx):
    effect(ctx, "begin")
    time.sleep(3)
    effect(ctx, "end")
"""
)


def test_database_outage_is_survived_without_lost_or_duplicate_runs(cluster: Cluster) -> None:
    cluster.proxy = proxy = TcpProxy()
    jobs = cluster.jobs_dir("outage", {"outage.py": OUTAGE_MODULE})
    port = free_port()
    http = {"SCHEDULER_HTTP_ENABLED": "1", "SCHEDULER_HTTP_PORT": str(port)}
    nodes = [
        cluster.node("node1", jobs, proxy.url_for(cluster.pg_url), **http),
        cluster.node("node2", jobs, proxy.url_for(cluster.pg_url)),
    ]
    for node in nodes:
        cluster.wait_ready(node)
    assert healthz(port) == (200, True)
    wait_until(
        lambda: cluster.value(
            "SELECT id FROM runs WHERE job = 'outage.long' AND status = 'running' "
            "AND started_at < now() - interval '0.5 seconds'"
        ),
        15,
    )
    proxy.cut()
    cut_at, cut_local = now(), datetime.now()
    in_flight = [r for (r,) in cluster.rows("SELECT id FROM runs WHERE status = 'running'")]
    wait_until(lambda: healthz(port) == (503, False), 5)  # reports unhealthy, keeps serving
    pace_until(cut_at + timedelta(seconds=OUTAGE_SECONDS))
    assert all(n.alive() for n in nodes), "a daemon died during the database outage"
    restored_at, restored_local = now(), datetime.now()
    proxy.restore()

    for node in nodes:
        wait_until(
            lambda node=node: cluster.value(
                "SELECT count(*) FROM runs WHERE host = %s AND status = 'succeeded' AND claimed_at > %s",
                node.name,
                restored_at,
            ),
            20,
        )
    wait_until(
        lambda: not cluster.rows("SELECT id FROM runs WHERE id = ANY(%s) AND status = 'running'", in_flight),
        20,
    )
    resumed = cluster.value("SELECT min(claimed_at) FROM runs WHERE claimed_at > %s", restored_at)
    wait_until(lambda: healthz(port) == (200, True), 10)
    cluster.stop_all()

    ran_during = cluster.value(
        "SELECT count(*) FROM effects WHERE at > %s AND at < %s AND note <> 'end'",
        cut_at + timedelta(seconds=1),
        restored_at,
    )
    in_flight_status = dict(
        cluster.rows(
            "SELECT r.id, r.status FROM runs r WHERE r.id = ANY(%s) "
            "AND EXISTS (SELECT 1 FROM effects e WHERE e.run_id = r.id)",
            in_flight,
        )
    )
    print(
        f"\noutage: {OUTAGE_SECONDS:.0f}s; {len(in_flight)} runs in flight at the cut "
        f"ended {in_flight_status}; "
        f"first claim {(resumed - restored_at).total_seconds():.2f}s after restore; "
        f"proxy refused {proxy.refused} connections"
    )
    assert ran_during == 0, "a job started while its claim could not be written"
    caught_up = cluster.value(
        "SELECT count(DISTINCT job) FROM runs WHERE status = 'missed' "
        "AND scheduled_for > %s AND scheduled_for < %s",
        cut_at + timedelta(seconds=1),
        restored_at - timedelta(seconds=1),
    )
    assert caught_up == 11, "catch-up ('latest') did not record the slots that passed during the outage"
    assert cluster.duplicates() == []
    assert cluster.effects_without_final_run() == []
    assert cluster.unfinished_runs() == []
    assert in_flight_status and set(in_flight_status.values()) == {"succeeded"}, in_flight_status
    for node in nodes:
        assert len(log_lines(node, "database unavailable, backing off")) == 1, node.log()[-3000:]
        assert len(log_lines(node, "database is back after")) == 1
        during = [
            line for line in node.log().splitlines() if _logged_between(line, cut_local, restored_local)
        ]
        assert len(during) <= OUTAGE_SECONDS / 2, "the outage is logged line after line:\n" + "\n".join(
            during
        )


def healthz(port: int) -> tuple[int, bool]:
    """(HTTP status, database_up) from the instance's /healthz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, bool(json.load(response)["database_up"])
    except urllib.error.HTTPError as error:
        return error.code, bool(json.load(error)["database_up"])


def _logged_between(line: str, start: datetime, end: datetime) -> bool:
    match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
    if not match:
        return False
    at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return start + timedelta(seconds=1) < at < end


# -- 4. the leader lease -----------------------------------------------------------------------


def test_killed_leader_is_replaced_within_the_lease_ttl(cluster: Cluster) -> None:
    jobs = cluster.jobs_dir("lead", {"lead.py": many_jobs_module("lead", 5, 0.0)})
    nodes = {n.name: n for n in (cluster.node(f"node{i}", jobs) for i in (1, 2, 3))}
    for node in nodes.values():
        cluster.wait_ready(node)
    leader = wait_until(cluster.leader, 10)
    term = cluster.value("SELECT term FROM leases WHERE name = 'leader'")
    nodes[leader].send(signal.SIGKILL)
    killed_at = now()
    successor = wait_until(lambda: (h := cluster.leader()) not in (None, leader) and h, 10, interval=0.02)
    took = (now() - killed_at).total_seconds()
    print(f"\nleader: {leader} SIGKILLed, {successor} leads after {took:.2f}s (TTL {LEASE_TTL}s)")
    assert took <= LEASE_TTL + HEARTBEAT + WINDOW_MARGIN
    assert cluster.value("SELECT term FROM leases WHERE name = 'leader'") == term + 1
    cluster.stop_all()
    assert_one_leader_per_term(list(nodes.values()))


def test_rolling_restart_hands_over_the_lead_at_once_and_loses_no_slot(cluster: Cluster) -> None:
    jobs = cluster.jobs_dir("roll", {"roll.py": many_jobs_module("roll", 10, 0.1)})
    nodes = {n.name: n for n in (cluster.node(f"node{i}", jobs) for i in (1, 2, 3))}
    for node in nodes.values():
        cluster.wait_ready(node)
    leader = wait_until(cluster.leader, 10)
    begin = now()
    order = [leader] + sorted(set(nodes) - {leader})
    handovers = []
    for name in order:
        was_leader = cluster.leader() == name
        nodes[name].send(signal.SIGTERM)
        stopped_at = now()
        if was_leader:
            wait_until(lambda name=name: cluster.leader() not in (None, name), 10, interval=0.02)
            handovers.append((now() - stopped_at).total_seconds())
        assert nodes[name].wait_exit(20) == 0
        nodes[name].start()
        cluster.wait_ready(nodes[name])
    end = now()
    wait_until(lambda: cluster.value("SELECT max(slot) FROM effects") > end + timedelta(seconds=1), 10)
    cluster.stop_all()

    expected = cluster.expected_slots("roll", begin, end)
    late, lost = cluster.late_or_lost(sorted(expected - cluster.effects()))
    print(
        f"\nrolling restart: SIGTERM handover seconds={[round(h, 2) for h in handovers]}; "
        f"{len(expected)} slots, lost={len(lost)}, late under load={len(late)}, "
        f"duplicates={len(cluster.duplicates())}"
    )
    assert handovers, "no instance held the lead when stopped"
    # Faster than any expiry could be (lease renewed at most one heartbeat before the stop).
    assert max(handovers) < LEASE_TTL - HEARTBEAT
    assert lost == []
    assert len(late) <= LATE_SHARE * len(expected), late
    assert cluster.duplicates() == []
    assert cluster.unfinished_runs() == []
    assert_one_leader_per_term(list(nodes.values()))


DRAIN_MODULE = (
    JOB_PRELUDE
    + """

@job(interval=timedelta(hours=1), name="drain.long")
def long(ctx):
    effect(ctx, "begin")
    time.sleep(4)
    effect(ctx, "end")
"""
)


def test_stopping_leader_hands_over_at_once_and_finishes_its_run_past_the_ttl(cluster: Cluster) -> None:
    """SIGTERM: the lead moves at once, while the run still finishing keeps its lease beyond the TTL."""
    jobs = cluster.jobs_dir("drain", {"drain.py": DRAIN_MODULE})
    first = cluster.node("first", jobs)
    cluster.wait_ready(first)
    run_id = wait_until(lambda: cluster.value("SELECT id FROM runs WHERE status = 'running'"), 15)
    second = cluster.node("second", jobs)
    cluster.wait_ready(second)
    assert cluster.leader() == "first"
    first.send(signal.SIGTERM)
    stopped_at = now()
    wait_until(lambda: cluster.leader() == "second", 5, interval=0.02)
    handover = (now() - stopped_at).total_seconds()
    assert first.wait_exit(20) == 0
    finished = cluster.rows("SELECT status, host, finished_at FROM runs WHERE id = %s", run_id)[0]
    print(f"\ndrain: lead handed over {handover:.2f}s after SIGTERM; the running run ended {finished[0]}")
    assert handover < LEASE_TTL - HEARTBEAT
    assert finished[:2] == ("succeeded", "first")
    assert (finished[2] - stopped_at).total_seconds() > LEASE_TTL, "the run ended too early to prove anything"
    assert not log_lines(second, f"run {run_id} of drain.long abandoned")
    assert cluster.value("SELECT status FROM instances WHERE host = 'first'") == "stopped"
    cluster.stop_all()


def assert_one_leader_per_term(nodes: list[Node]) -> None:
    """Every 'became leader (term N)' across all logs names a distinct term."""
    terms = [int(t) for n in nodes for t in re.findall(r"became leader \(term (\d+)\)", n.log())]
    assert terms and len(terms) == len(set(terms)), f"two instances led in one term: {sorted(terms)}"


# -- 5. live changes from the database -----------------------------------------------------------


def test_pause_resume_and_schedule_change_are_applied_by_every_instance(cluster: Cluster) -> None:
    jobs = cluster.jobs_dir("live", {"live.py": many_jobs_module("live", 2, 0.0)})
    nodes = [cluster.node(f"node{i}", jobs) for i in (1, 2)]
    for node in nodes:
        cluster.wait_ready(node)
    store = Store(cluster.pg_url)
    try:
        wait_until(
            lambda: cluster.value("SELECT count(DISTINCT host) FROM runs WHERE job = 'live.j00'") == 2, 15
        )
        paused_at = store.jobs.set_paused("live.j00", True, "test", now()).changed_at
        assert paused_at is not None
        wait_until(
            lambda: (
                cluster.value("SELECT max(slot) FROM effects WHERE job = 'live.j01'")
                > paused_at + timedelta(seconds=3)
            ),
            10,
        )
        last_claim = cluster.value("SELECT max(claimed_at) FROM runs WHERE job = 'live.j00'")
        pause_took = (last_claim - paused_at).total_seconds()
        for node in nodes:
            assert log_lines(node, "job live.j00: paused, schedule every 1s")

        resumed_at = now()
        store.jobs.set_paused("live.j00", False, "test", resumed_at)
        first = wait_until(
            lambda: cluster.value(
                "SELECT min(claimed_at) FROM runs WHERE job = 'live.j00' AND claimed_at > %s", resumed_at
            ),
            10,
        )
        resume_took = (first - resumed_at).total_seconds()

        changed_at = now()
        store.jobs.set_schedule("live.j01", "test", changed_at, interval=timedelta(seconds=3))
        settle = changed_at + timedelta(seconds=HEARTBEAT + 1.0)
        wait_until(
            lambda: (
                cluster.value("SELECT count(*) FROM effects WHERE job = 'live.j01' AND slot > %s", settle)
                >= 3
            ),
            20,
        )
        anchor = cluster.value("SELECT anchor_at FROM jobs WHERE name = 'live.j01'")
        slots = [
            s
            for (s,) in cluster.rows(
                "SELECT slot FROM effects WHERE job = 'live.j01' AND slot > %s ORDER BY slot", settle
            )
        ]
    finally:
        store.dispose()
    cluster.stop_all()
    print(
        f"\nlive changes: last claim {pause_took:.2f}s after pause, "
        f"first claim {resume_took:.2f}s after resume"
    )
    assert pause_took <= HEARTBEAT + WINDOW_MARGIN
    assert resume_took <= HEARTBEAT + 1.0 + WINDOW_MARGIN
    assert all((s - anchor) % timedelta(seconds=3) == timedelta(0) for s in slots), slots
    for node in nodes:
        assert log_lines(node, "job live.j00: active, schedule every 1s")
        assert log_lines(node, "job live.j01: active, schedule every 3s")


# -- 6. a job deployed to one instance only --------------------------------------------------------

EXTRA_MODULE = (
    JOB_PRELUDE
    + """

@job(interval=timedelta(seconds=1), name="extra.only_here")
def only_here(ctx):
    effect(ctx)
"""
)


def test_job_known_to_one_instance_runs_only_there_and_others_keep_working(cluster: Cluster) -> None:
    common = many_jobs_module("common", 3, 0.0)
    first = cluster.jobs_dir("new", {"common.py": common, "extra.py": EXTRA_MODULE})
    second = cluster.jobs_dir("old", {"common.py": common})
    new = cluster.node("new", first)
    cluster.wait_ready(new)
    old = cluster.node("old", second)
    cluster.wait_ready(old)
    joined = now()
    wait_until(
        lambda: cluster.value("SELECT count(*) FROM effects WHERE host = 'old' AND at > %s", joined) >= 5, 15
    )
    wait_until(
        lambda: (
            cluster.value("SELECT count(*) FROM effects WHERE job = 'extra.only_here' AND at > %s", joined)
            >= 3
        ),
        15,
    )
    cluster.stop_all()
    hosts = {h for (h,) in cluster.rows("SELECT DISTINCT host FROM runs WHERE job = 'extra.only_here'")}
    assert hosts == {"new"}
    assert log_lines(
        old, "job extra.only_here is not loaded on this instance (its code is not here); left to: new"
    )
    assert not log_lines(old, "Traceback") and not log_lines(old, " ERROR ")
    assert cluster.duplicates() == []
