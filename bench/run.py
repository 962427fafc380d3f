"""Run the benchmarks, print a table, and write docs/BENCHMARKS.md.

    .venv/bin/python -m bench.run --all            # the recorded run (about 30 minutes)
    .venv/bin/python -m bench.run --headline       # only the headline cases (about 10 minutes)
    .venv/bin/python -m bench.run --quick --output /tmp/b.md   # a smoke run (about a minute)
    .venv/bin/python -m bench.run --only lateness,drift --lateness-duration 30

Each measurement runs in its own child process (see bench/common.py). A
benchmark that fails is reported as failed in the table; the others still run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import render
from bench.common import REPO, machine, pg_problem, run_child, versions

DEFAULT_OUTPUT = REPO / "docs" / "BENCHMARKS.md"
SECTIONS = ("headline", "lateness", "drift", "idle", "throughput", "once", "failover", "startup", "isolation")

# The headline cases (bench/burst.py): jobs due together, lateness from inside the job body.
HEADLINE_FULL: dict[str, Any] = {
    "burst": {"jobs": 10_000, "interval": 30.0, "slots": 2},
    "second": {"jobs": 1000, "interval": 1.0, "slots": 60},
    "cluster": {"db": "postgresql", "instances": 3, "jobs": 10_000, "interval": 30.0, "slots": 2},
    "minute": {"jobs": 10_000, "interval": 60.0, "slots": 1},
}
HEADLINE_QUICK: dict[str, Any] = {
    "burst": {"jobs": 200, "interval": 4.0, "slots": 1, "lead": 1.0, "drain_wait": 5.0},
    "second": {"jobs": 20, "interval": 1.0, "slots": 2, "lead": 1.0, "drain_wait": 5.0},
    "cluster": {"db": "postgresql", "instances": 3, "jobs": 200, "interval": 4.0, "slots": 1, "lead": 1.0},
    "minute": {"jobs": 200, "interval": 4.0, "slots": 1, "lead": 1.0, "drain_wait": 5.0},
}

FULL: dict[str, Any] = {
    "headline": HEADLINE_FULL,
    "lateness": {
        "sizes": [[100, 10.0], [1000, 10.0], [10000, 60.0]],
        "duration": 60.0,
        "warmup": 3.0,
        # Ours again with the watchdog's job check held off, to show what it costs the tail.
        "diagnostic": {"jobs": 1000, "interval": 10.0, "duration": 30.0, "watchdog_interval": "1h"},
    },
    "drift": {"duration": 120.0},
    "idle": {"jobs": 10_000, "interval": 60.0, "quiet": 30.0},
    "throughput": {
        # (database, instances, jobs): demand = jobs / interval runs per second
        "cases": [
            ["sqlite", 1, 5000],
            ["postgresql", 1, 5000],
            ["postgresql", 3, 5000],
            ["postgresql", 3, 8000],
        ],
        "interval": 2.0,
        "warmup": 8.0,
        "duration": 20.0,
        "floor_s": 3.0,
    },
    "once": {"jobs": 1000, "interval": 1.0, "warmup": 5.0, "duration": 120.0, "peer_duration": 60.0},
    "failover": {"trials": 3, "interval": 0.25, "heartbeat": 2.0, "lease_ttl": 10.0},
    "startup": {"jobs": 1000, "cron_seconds": 1.0},
    "isolation": {"runs": 300, "warmup": 10},
}

QUICK: dict[str, Any] = {
    "headline": HEADLINE_QUICK,
    "lateness": {
        "sizes": [[20, 1.0]],
        "duration": 1.5,
        "warmup": 0.5,
        "diagnostic": {"jobs": 20, "interval": 1.0, "duration": 1.5, "watchdog_interval": "1h"},
    },
    "drift": {"duration": 4.5},
    "idle": {"jobs": 200, "interval": 8.0, "quiet": 1.0},
    "throughput": {
        "cases": [["sqlite", 1, 200], ["postgresql", 1, 200], ["postgresql", 3, 200]],
        "interval": 1.0,
        "warmup": 0.5,
        "duration": 1.0,
        "floor_s": 0.2,
    },
    "once": {"jobs": 50, "interval": 1.0, "warmup": 0.5, "duration": 2.0, "peer_duration": 2.0},
    "failover": {"trials": 1, "interval": 0.25, "heartbeat": 0.5, "lease_ttl": 1.5},
    "startup": {"jobs": 100, "cron_seconds": 0.05},
    "isolation": {"runs": 10, "warmup": 2},
}


# (command-line option, plan section, plan key)
OVERRIDES = (
    ("lateness_duration", "lateness", "duration"),
    ("drift_duration", "drift", "duration"),
    ("idle_quiet", "idle", "quiet"),
    ("throughput_duration", "throughput", "duration"),
    ("once_duration", "once", "duration"),
    ("once_peer_duration", "once", "peer_duration"),
    ("failover_trials", "failover", "trials"),
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render_from:
        saved = json.loads(Path(args.render_from).read_text())
        _report(saved["results"], saved["meta"], args.output)
        return 0
    plan = _plan(args)
    sections = SECTIONS if args.all or not args.only else tuple(s.strip() for s in args.only.split(","))
    if args.headline:
        sections = ("headline",)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(
            f"bench: --only: unknown section {unknown[0]!r} (choose from {', '.join(SECTIONS)})",
            file=sys.stderr,
        )
        return 2
    problem = pg_problem()
    if problem is not None:
        print(f"bench: PostgreSQL on 127.0.0.1:5432 unreachable: {problem}", file=sys.stderr)
        return 1
    meta = {
        "command": " ".join([".venv/bin/python -m bench.run", *map(shlex.quote, argv or sys.argv[1:])]),
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "profile": ("quick" if args.quick else "full")
        + (" durations, some overridden" if _overridden(args) else " durations"),
        "plan": plan,
    }
    began = time.monotonic()
    results: dict[str, Any] = {}
    saved = _results_path(args)
    for section in sections:
        print(f"== {section}", flush=True)
        results[section] = RUNNERS[section](plan[section])
        meta["finished_load"] = machine()["load"]
        meta["elapsed_s"] = time.monotonic() - began
        meta["missing"] = [s for s in sections if s not in results]
        if saved is not None:
            # Saved after every section: a run cut short still leaves its figures (and --render-from).
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
            if meta["missing"]:
                _write(results, meta, args.output)
    _report(results, meta, args.output)
    return 0


def _results_path(args: argparse.Namespace) -> Path | None:
    if args.results:
        return Path(args.results)
    if args.output == "-":
        return None
    if Path(args.output).resolve() == DEFAULT_OUTPUT:
        return REPO / "bench" / "results.json"
    return Path(args.output).with_suffix(".json")


def _report(results: dict[str, Any], meta: dict[str, Any], output: str) -> None:
    print(render.table_text(results, meta["plan"]))
    _write(results, meta, output)
    if output != "-":
        print(f"wrote {output}")


def _write(results: dict[str, Any], meta: dict[str, Any], output: str) -> None:
    if output == "-":
        return
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render.markdown(results, meta))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.run", description="Benchmarks vs APScheduler and timeloop.")
    parser.add_argument("--all", action="store_true", help="run every section (the default without --only)")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="tiny durations: checks that everything runs")
    parser.add_argument("--headline", action="store_true", help="only the headline cases (jobs due together)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Markdown report path ('-': none)")
    parser.add_argument(
        "--results", help="JSON file of the raw results (default: bench/results.json for the recorded run)"
    )
    parser.add_argument("--render-from", metavar="JSON", help="only rewrite the report from saved results")
    parser.add_argument("--lateness-duration", type=float, help="seconds measured per lateness case")
    parser.add_argument("--drift-duration", type=float, help="seconds the drift case runs")
    parser.add_argument("--idle-quiet", type=float, help="seconds of the idle window")
    parser.add_argument("--throughput-duration", type=float, help="seconds measured per throughput case")
    parser.add_argument("--once-duration", type=float, help="seconds of the exactly-once window (ours)")
    parser.add_argument("--once-peer-duration", type=float, help="seconds of the window (APScheduler)")
    parser.add_argument("--failover-trials", type=int, help="SIGKILL and SIGTERM trials each")
    return parser


def _overridden(args: argparse.Namespace) -> bool:
    return any(getattr(args, option) is not None for option, _, _ in OVERRIDES)


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else FULL
    plan = {k: dict(v) for k, v in base.items()}
    for option, section, key in OVERRIDES:
        value = getattr(args, option)
        if value is not None:
            plan[section][key] = value
    return plan


# -- sections -----------------------------------------------------------------------


def _child(module: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    label = " ".join(f"{k}={v}" for k, v in params.items())
    print(f"   {module} {label}", flush=True)
    try:
        return run_child(module, params, timeout)
    except RuntimeError as exc:
        print(f"   FAILED: {exc}", flush=True)
        return {"error": str(exc)}


def run_headline(plan: dict[str, Any]) -> dict[str, Any]:
    """Each case for ours, then (on one instance) for APScheduler, one after the other."""
    results: dict[str, Any] = {}
    for case, params in plan.items():
        timeout = params.get("interval", 30.0) * (params.get("slots", 1) + 2) + 300
        row = {"ours": _child("burst", {"impl": "ours", **params}, timeout)}
        if params.get("instances", 1) == 1:
            row["apscheduler"] = _child("burst", {"impl": "apscheduler", **params}, timeout)
        results[case] = row
    return results


def run_lateness(plan: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for jobs, interval in plan["sizes"]:
        row: dict[str, Any] = {"jobs": jobs, "interval": interval}
        for impl in ("ours", "apscheduler"):
            params = {"impl": impl, "jobs": jobs, "interval": interval}
            params |= {"duration": plan["duration"], "warmup": plan["warmup"]}
            row[impl] = _child("lateness", params, plan["duration"] + 240)
        rows.append(row)
    diagnostic = plan.get("diagnostic")
    if diagnostic:
        params = {"impl": "ours", "warmup": plan["warmup"], **diagnostic}
        row = {"jobs": diagnostic["jobs"], "interval": diagnostic["interval"], "diagnostic": True}
        row["ours"] = _child("lateness", params, diagnostic["duration"] + 240)
        rows.append(row)
    return rows


def run_drift(plan: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}

    def one(impl: str) -> None:
        results[impl] = _child("drift", {"impl": impl, "duration": plan["duration"]}, plan["duration"] + 120)

    # The three run side by side: their bodies mostly sleep, so they hardly compete for CPU.
    threads = [threading.Thread(target=one, args=(impl,)) for impl in ("ours", "apscheduler", "timeloop")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def run_idle(plan: dict[str, Any]) -> dict[str, Any]:
    timeout = plan["interval"] * 2 + plan["quiet"] + 180
    return {impl: _child("idle", {"impl": impl, **plan}, timeout) for impl in ("ours", "apscheduler")}


def run_throughput(plan: dict[str, Any]) -> list[dict[str, Any]]:
    timeout = plan["warmup"] + plan["duration"] + plan["floor_s"] + 240
    common = {k: v for k, v in plan.items() if k != "cases"}
    return [
        _child("throughput", {"db": db, "instances": n, "jobs": jobs, **common}, timeout)
        for db, n, jobs in plan["cases"]
    ]


def run_once(plan: dict[str, Any]) -> dict[str, Any]:
    common = {k: plan[k] for k in ("jobs", "interval", "warmup")}
    ours = _child(
        "exactly_once", {"impl": "ours", **common, "duration": plan["duration"]}, plan["duration"] + 240
    )
    peer_params = {"impl": "apscheduler", **common, "duration": plan["peer_duration"]}
    peer = _child("exactly_once", peer_params, plan["peer_duration"] + 240)
    return {"ours": ours, "apscheduler": peer}


def run_failover(plan: dict[str, Any]) -> dict[str, Any]:
    timeout = plan["trials"] * 2 * (plan["lease_ttl"] + 60) + 60
    return _child("failover", plan, timeout)


def run_startup(plan: dict[str, Any]) -> dict[str, Any]:
    jobs = plan["jobs"]
    return {
        "sqlite": _child("startup", {"jobs": jobs, "db": "sqlite"}, 240),
        "postgresql": _child("startup", {"jobs": jobs, "db": "postgresql"}, 240),
        "apscheduler": _child("startup", {"jobs": jobs, "impl": "apscheduler"}, 120),
        "cron": _child("startup", {"what": "cron", "seconds": plan["cron_seconds"]}, 120),
    }


def run_isolation(plan: dict[str, Any]) -> dict[str, Any]:
    return _child("isolation", plan, plan["runs"] * 3 + 120)


RUNNERS = {
    "headline": run_headline,
    "lateness": run_lateness,
    "drift": run_drift,
    "idle": run_idle,
    "throughput": run_throughput,
    "once": run_once,
    "failover": run_failover,
    "startup": run_startup,
    "isolation": run_isolation,
}


if __name__ == "__main__":
    sys.exit(main())
