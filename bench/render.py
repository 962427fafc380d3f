"""Turning benchmark results into the console table and docs/BENCHMARKS.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import render_headline

FINDINGS = Path(__file__).with_name("FINDINGS.md")
POOL_SIZE = 8


def _get(data: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _num(value: Any, fmt: str = ".1f") -> str:
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, fmt)


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def _failed(result: Any) -> str | None:
    if isinstance(result, dict) and "error" in result:
        return "failed: " + str(result["error"])[:200].replace("|", "/")
    return None


def _lat(result: Any) -> str:
    failed = _failed(result)
    if failed:
        return failed
    late = _get(result, "lateness") or {}
    p50, p99, top = late.get("p50_ms"), late.get("p99_ms"), late.get("max_ms")
    return f"{_num(p50, '.2f')} / {_num(p99, '.2f')} / {_num(top, '.1f')}"


# -- the tables ---------------------------------------------------------------------


def tables(results: dict[str, Any], plan: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every section that ran."""
    out: list[tuple[str, list[str], list[list[str]]]] = list(render_headline.tables(results))
    if "lateness" in results:
        rows = []
        for row in results["lateness"]:
            ours, aps = row["ours"], row.get("apscheduler")
            label = f"{row['jobs']:,}"
            if row.get("diagnostic"):
                held_off = _get(ours, "watchdog_interval")
                label += f" (ours only, watchdog interval {held_off}, {_num(_get(ours, 'duration'), 'g')} s)"
            if aps is None:
                peer = ["-", "-"]
                pairs = [f"{_get(ours, 'lateness', 'count')}", f"{_get(ours, 'not_run')}"]
                pairs.append(_num(_get(ours, "cpu_percent")))
            else:
                peer = [_lat(aps), _ratio(_get(ours, "lateness", "p99_ms"), _get(aps, "lateness", "p99_ms"))]
                pairs = [
                    f"{_get(ours, 'lateness', 'count')} / {_get(aps, 'lateness', 'count')}",
                    f"{_get(ours, 'not_run')} / {_get(aps, 'not_run')}",
                    f"{_num(_get(ours, 'cpu_percent'))} / {_num(_get(aps, 'cpu_percent'))}",
                ]
            rate = _num(row["jobs"] / row["interval"], ".0f")
            rows.append([label, f"{row['interval']:g} s", rate, _lat(ours), *peer, *pairs])
        header = [
            "Jobs",
            "Interval",
            "Runs/s",
            "Ours p50 / p99 / max (ms)",
            "APScheduler p50 / p99 / max (ms)",
            "p99 ours ÷ APScheduler",
            "Runs measured (ours / APS)",
            "Slots not run (ours / APS)",
            "CPU % of a core (ours / APS)",
        ]
        out.append(("1. Dispatch lateness", header, rows))
    if "drift" in results:
        rows = []
        for impl in ("ours", "apscheduler", "timeloop"):
            r = results["drift"].get(impl)
            failed = _failed(r)
            if failed:
                rows.append([impl, failed, "", "", ""])
                continue
            rows.append(
                [
                    impl,
                    f"{_get(r, 'runs')} of {_get(r, 'expected_runs')}",
                    _num(_get(r, "drift_s"), "+.3f"),
                    _num(_get(r, "mean_period_s"), ".4f"),
                    _num(_get(r, "max_period_s"), ".4f"),
                ]
            )
        header = ["Scheduler", "Runs", "Drift (s)", "Mean start-to-start (s)", "Max start-to-start (s)"]
        out.append((f"1b. Drift: 1 s job, 200 ms body, {plan['drift']['duration']:g} s", header, rows))
    if "idle" in results:
        rows = []
        for impl in ("ours", "apscheduler"):
            r = results["idle"].get(impl)
            failed = _failed(r)
            if failed:
                rows.append([impl, failed, "", "", "", "", ""])
                continue
            rows.append(
                [
                    impl,
                    _num(_get(r, "cpu_percent"), ".2f"),
                    _num(_get(r, "rss_mb"), ".0f"),
                    _num(_get(r, "peak_rss_mb"), ".0f"),
                    _num(_get(r, "threads"), ".0f"),
                    _num(_get(r, "burst_s"), ".1f"),
                    _num(_get(r, "window_s"), ".0f"),
                ]
            )
        header = [
            "Scheduler",
            "CPU % of a core",
            "RSS (MB)",
            "Peak RSS (MB)",
            "Threads",
            "First burst (s)",
            "Window (s)",
        ]
        out.append(
            (
                f"2. Idle footprint: {plan['idle']['jobs']:,} jobs every {plan['idle']['interval']:g} s",
                header,
                rows,
            )
        )
    if "throughput" in results:
        rows = []
        for r in results["throughput"]:
            failed = _failed(r)
            if failed:
                rows.append([failed, "", "", "", "", "", "", ""])
                continue
            statuses = ", ".join(f"{k} {v}" for k, v in sorted((_get(r, "statuses") or {}).items()))
            rows.append(
                [
                    str(r["db"]),
                    str(r["instances"]),
                    _num(_get(r, "demand_per_s"), ".0f"),
                    _num(_get(r, "runs_per_s"), ".0f"),
                    _num(_get(r, "floor_commits_per_s"), ".0f"),
                    _num(_get(r, "ratio_to_floor"), ".2f"),
                    _num(_get(r, "lateness", "p50_ms"), ".0f")
                    + " / "
                    + _num(_get(r, "lateness", "p99_ms"), ".0f"),
                    statuses,
                ]
            )
        header = [
            "Database",
            "Instances",
            "Demand (runs/s)",
            "Recorded runs/s",
            "Single-commit floor (commits/s)",
            "Runs per commit",
            "Lateness p50 / p99 (ms)",
            "Rows in window by status",
        ]
        out.append(("3. Recorded-run throughput", header, rows))
    if "once" in results:
        rows = []
        for impl in ("ours", "apscheduler"):
            r = results["once"].get(impl)
            failed = _failed(r)
            if failed:
                rows.append([impl, failed, "", "", "", "", ""])
                continue
            rows.append(
                [
                    impl if impl == "ours" else "APScheduler (shared SQLAlchemyJobStore)",
                    _num(_get(r, "window_s"), ".0f"),
                    f"{_get(r, 'expected_slots'):,}",
                    f"{_get(r, 'executions'):,}",
                    f"{_get(r, 'duplicates'):,}",
                    f"{_get(r, 'missed'):,}",
                    " / ".join(f"{n:,}" for n in _get(r, "executions_per_process") or []),
                ]
            )
        header = [
            "Scheduler",
            "Window (s)",
            "Slots",
            "Executions",
            "Duplicates",
            "Missed",
            "Executions per process",
        ]
        once = plan["once"]
        out.append(
            (
                f"4. Exactly-once: 3 processes, {once['jobs']:,} jobs every {once['interval']:g} s, "
                "PostgreSQL",
                header,
                rows,
            )
        )
    if "failover" in results:
        r = results["failover"]
        failed = _failed(r)
        if failed:
            rows = [[failed, "", "", ""]]
        else:
            rows = [
                [
                    "SIGKILL (crash)",
                    _trials(r["sigkill_s"]),
                    _num(r["sigkill_max_s"], ".2f"),
                    f"≤ {r['lease_ttl'] + 1:g} s",
                ],
                ["SIGTERM (graceful)", _trials(r["sigterm_s"]), _num(r["sigterm_max_s"], ".2f"), "< 1 s"],
            ]
        title = (
            f"5. Failover: heartbeat {plan['failover']['heartbeat']:g} s, "
            f"lease TTL {plan['failover']['lease_ttl']:g} s, job every {plan['failover']['interval']:g} s"
        )
        out.append(
            (title, ["Signal to the instance running the job", "Trials (s)", "Max (s)", "Target"], rows)
        )
    if "startup" in results:
        s = results["startup"]
        rows = []
        for db in ("sqlite", "postgresql"):
            r = s.get(db)
            failed = _failed(r)
            rows.append(
                [
                    f"ours, {db}",
                    failed or _num(_get(r, "process_cold_s"), ".2f"),
                    _num(_get(r, "process_warm_s"), ".2f"),
                    _num(_get(r, "service_start_s"), ".3f"),
                ]
            )
        rows.append(
            [
                "APScheduler, memory store",
                "n/a",
                "n/a",
                _num(_get(s, "apscheduler", "service_start_s"), ".3f"),
            ]
        )
        out.append(
            (
                f"6. Start-up with {plan['startup']['jobs']:,} jobs",
                [
                    "",
                    "Process, fresh database (s)",
                    "Process, existing database (s)",
                    "In process: start() (s)",
                ],
                rows,
            )
        )
        cron = _get(s, "cron", "rates") or {}
        rows = [
            [
                expr,
                _num(v.get("ours"), ",.0f"),
                _num(v.get("apscheduler"), ",.0f"),
                _ratio(v.get("ours"), v.get("apscheduler")),
            ]
            for expr, v in cron.items()
        ]
        out.append(
            (
                "6b. Cron next-slot computations per second",
                ["Expression (zone)", "Ours CronSchedule", "APScheduler CronTrigger", "Ours ÷ APScheduler"],
                rows,
            )
        )
    if "isolation" in results:
        out.append(_isolation_table(results["isolation"], plan))
    return out


def _isolation_table(r: dict[str, Any], plan: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    failed = _failed(r)
    rows = []
    for key, label in (
        ("thread", "ours, thread run"),
        ("process", "ours, process run (forkserver child, own process group)"),
        ("apscheduler", "APScheduler, ProcessPoolExecutor (reused workers)"),
    ):
        s = _get(r, key) or {}
        rows.append([label, failed or _num(s.get("p50_ms"), ".2f"), _num(s.get("p99_ms"), ".2f")])
    title = f"7. Per-run overhead of process isolation ({plan['isolation']['runs']} no-op runs in a row)"
    return (title, ["Executor", "p50 (ms)", "p99 (ms)"], rows)


def _trials(trials: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{t['seconds']:.2f}" + (" (leader)" if t.get("victim_was_leader") else "") for t in trials
    )


# -- targets -------------------------------------------------------------------------


def targets(results: dict[str, Any], plan: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured figure, 'met' / 'NOT met' / 'not measured'); the headline targets first."""
    out: list[tuple[str, str, str]] = list(render_headline.targets(results))
    if "lateness" not in results:  # a --headline run: only its own targets
        return out

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**NOT met**")

    row = next(
        (r for r in results.get("lateness", []) if r["jobs"] == 1000 and not r.get("diagnostic")), None
    )
    ours_p99 = _get(row, "ours", "lateness", "p99_ms")
    aps_p99 = _get(row, "apscheduler", "lateness", "p99_ms")
    have = isinstance(ours_p99, float) and not math.isnan(ours_p99)
    out.append(
        (
            "p99 lateness ≤ 5 ms at 1,000 jobs",
            f"{_num(ours_p99, '.2f')} ms",
            verdict(ours_p99 <= 5 if have else None),
        )
    )
    both = have and isinstance(aps_p99, float) and not math.isnan(aps_p99)
    out.append(
        (
            "p99 lateness ≤ 1/5 of APScheduler's (1,000 jobs)",
            f"{_num(ours_p99, '.2f')} ms vs {_num(aps_p99, '.2f')} ms ({_ratio(ours_p99, aps_p99)})",
            verdict(ours_p99 <= aps_p99 / 5 if both else None),
        )
    )
    drift = _get(results, "drift", "ours", "drift_s")
    out.append(
        (
            "zero drift (drift within ±10 ms)",
            f"{_num(drift, '+.4f')} s",
            verdict(abs(drift) <= 0.01 if isinstance(drift, float) else None),
        )
    )
    idle = _get(results, "idle", "ours") or {}
    cpu, rss, threads = idle.get("cpu_percent"), idle.get("rss_mb"), idle.get("threads")
    out.append(
        (
            "idle 10,000 jobs: < 1 % CPU",
            f"{_num(cpu, '.2f')} %",
            verdict(cpu < 1 if isinstance(cpu, float) else None),
        )
    )
    out.append(
        (
            "idle 10,000 jobs: < 120 MB RSS",
            f"{_num(rss, '.0f')} MB",
            verdict(rss < 120 if isinstance(rss, float) else None),
        )
    )
    out.append(
        (
            f"idle 10,000 jobs: threads ≤ pool size + 8 = {POOL_SIZE + 8}",
            _num(threads, ".0f"),
            verdict(threads <= POOL_SIZE + 8 if isinstance(threads, int | float) else None),
        )
    )
    pg3 = [
        r
        for r in results.get("throughput", [])
        if r.get("db") == "postgresql" and r.get("instances") == 3 and "runs_per_s" in r
    ]
    best = max(pg3, key=lambda r: r["runs_per_s"], default=None)
    rate = _get(best, "runs_per_s")
    out.append(
        (
            "≥ 2,000 recorded runs/s, PostgreSQL, 3 instances (best demand level)",
            f"{_num(rate, '.0f')} runs/s at a demand of {_num(_get(best, 'demand_per_s'), '.0f')}/s",
            verdict(rate >= 2000 if isinstance(rate, float) else None),
        )
    )
    once = _get(results, "once", "ours") or {}
    dup, missed = once.get("duplicates"), once.get("missed")
    ok = None if dup is None or missed is None else dup == 0 and missed == 0
    out.append(("exactly-once: 0 duplicates and 0 missed", f"{dup} duplicates, {missed} missed", verdict(ok)))
    fo = results.get("failover") or {}
    kill, term = fo.get("sigkill_max_s"), fo.get("sigterm_max_s")
    ttl = fo.get("lease_ttl", plan["failover"]["lease_ttl"])
    out.append(
        (
            f"failover ≤ lease TTL + 1 s = {ttl + 1:g} s",
            f"max {_num(kill, '.2f')} s",
            verdict(kill <= ttl + 1 if kill is not None else None),
        )
    )
    out.append(
        (
            "graceful handover < 1 s",
            f"max {_num(term, '.2f')} s",
            verdict(term < 1 if term is not None else None),
        )
    )
    starts = [
        _get(results, "startup", db, key)
        for db in ("sqlite", "postgresql")
        for key in ("process_cold_s", "process_warm_s")
    ]
    known = [s for s in starts if isinstance(s, float)]
    worst = max(known) if known else None
    out.append(
        (
            f"start-up with {plan['startup']['jobs']:,} jobs < 1.5 s "
            "(worst of SQLite/PostgreSQL, fresh/existing database)",
            f"{_num(worst, '.2f')} s",
            verdict(worst < 1.5 if worst is not None and len(known) == len(starts) else None),
        )
    )
    return out


# -- output ---------------------------------------------------------------------------


def table_text(results: dict[str, Any], plan: dict[str, Any]) -> str:
    lines = []
    for title, header, rows in tables(results, plan):
        lines += ["", title, " | ".join(header)]
        lines += [" | ".join(row) for row in rows]
    lines += ["", "Targets"]
    lines += [f"{verdict:>14}  {target}: {figure}" for target, figure, verdict in targets(results, plan)]
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    plan, m, v = meta["plan"], meta["machine"], meta["versions"]
    lines = [
        "# Benchmarks: scheduler vs APScheduler 3.11 and timeloop",
        "",
        "Regenerate this file (about 30 minutes; PostgreSQL on 127.0.0.1:5432 must be up):",
        "",
        "```",
        ".venv/bin/python -m bench.run --all",
        "```",
        "",
        "`--headline` runs only the headline cases, jobs due together (about 10 minutes).",
        "`--quick` runs every benchmark for a few seconds (the smoke test uses it); `--only` picks",
        "sections; `--lateness-duration`, `--drift-duration`, `--idle-quiet`, `--throughput-duration`,",
        "`--once-duration`, `--once-peer-duration` and `--failover-trials` change the durations.",
        "The 100-job lateness alone: `.venv/bin/python -m bench.lateness_100`. The raw figures of the",
        "recorded run are in `bench/results.json`; `--render-from bench/results.json` rewrites this file",
        "from them without running anything.",
        "",
        "## This run",
        "",
        f"- Command: `{meta['command']}` ({meta['profile']}), started {meta['started_at']}, "
        f"took {meta['elapsed_s'] / 60:.1f} min.",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM; {m['os']}; {m['python']}.",
        f"- Load average (1/5/15 min) at the start: {m['load']}; at the end: {meta['finished_load']}. "
        "PostgreSQL runs on the same machine and shares its 2 cores.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "- Durations used: " + _durations(plan) + ".",
        *([f"- **Incomplete**: not run yet: {', '.join(meta['missing'])}."] if meta.get("missing") else []),
        *([f"- Note: {meta['note']}"] if meta.get("note") else []),
        "",
        "## How each figure is measured",
        "",
        METHOD.rstrip(),
        "",
    ]
    for title, header, rows in tables(results, plan):
        lines += [f"## {title}", "", *_md_table(header, rows), ""]
    lines += [
        "## Targets",
        "",
        *_md_table(["Target", "Measured", "Verdict"], [list(t) for t in targets(results, plan)]),
        "",
    ]
    if FINDINGS.exists():
        lines += [FINDINGS.read_text().rstrip(), ""]
    return "\n".join(lines)


def _durations(plan: dict[str, Any]) -> str:
    lat, once, tp = plan["lateness"], plan["once"], plan["throughput"]
    sizes = ", ".join(f"{int(n):,} jobs every {i:g} s" for n, i in lat["sizes"])
    if lat.get("diagnostic"):
        d = lat["diagnostic"]
        sizes += f"; and {d['jobs']:,} jobs for {d['duration']:g} s"
        sizes += f" with the watchdog interval {d['watchdog_interval']}"
    return (
        f"lateness {lat['duration']:g} s per case after {lat['warmup']:g} s warm-up ({sizes}); "
        f"drift {plan['drift']['duration']:g} s; idle window up to {plan['idle']['quiet']:g} s; "
        f"throughput {tp['duration']:g} s after {tp['warmup']:g} s warm-up "
        f"(jobs every {tp['interval']:g} s), floor {tp['floor_s']:g} s; "
        f"exactly-once {once['duration']:g} s (ours) and {once['peer_duration']:g} s (APScheduler); "
        f"failover {plan['failover']['trials']} SIGKILL + {plan['failover']['trials']} SIGTERM trials"
    )


METHOD = """\
- **Lateness**: the moment the job function began minus its slot. Ours: `started_at -
  scheduled_for` of the run rows (SQLite, in-process `Service`, pool of 8, log level WARNING).
  APScheduler: `BackgroundScheduler`, `ThreadPoolExecutor(8)`, `IntervalTrigger` jobs,
  `time.time()` at the top of the function minus the trigger's grid slot. Both use the same
  anchors: the N jobs are spread evenly over one interval, so the load is N / interval runs per
  second. Only slots inside the window count; "slots not run" are window slots without a
  succeeded run.
- **Drift**: (last start - first start) - (runs - 1) x 1 s, for a 1 s job whose body sleeps
  200 ms, leaving out the first run (start-up); the three run side by side in separate processes.
- **Idle**: all jobs on one grid, so they fall due together once a minute. After the first burst
  is run (ours: and recorded), CPU time of the whole process over the quiet window before the
  next burst; RSS and thread count (from /proc) at the end of the window; the peak RSS includes
  the burst.
- **Throughput**: real daemons (`control.py run`) on one database; jobs spread evenly over the
  interval, with a demand above what they record. Succeeded rows committed between two counts,
  per second. The floor is a plain one-row `INSERT` + `COMMIT` loop (psycopg2, or sqlite3 with
  the daemon's WAL and `synchronous=NORMAL`) on the same database in the same run. SQLite is
  single-node, so 1 instance only.
- **Exactly-once**: 3 real processes; every executed run appends (pid, job, slot) to a file.
  Duplicates are executions beyond the first of a (job, slot); missed are window slots that no
  process executed. All jobs share one grid, so the 3 processes race for the same slots every
  second. The APScheduler peer is 3 processes sharing a `SQLAlchemyJobStore` (misfire grace
  30 s, like our catch-up window).
- **Failover**: 2 daemons, one job that holds until cancelled; the signal goes to the instance
  running it; the figure is the time from the signal to the next run's `started_at` on another
  instance. A fresh instance joins after each trial. "(leader)": the victim also held the
  leader lease.
- **Start-up**: a real `control.py run` process, from spawn until its instance row is
  registered (imports, migration, loading and syncing the jobs, crash recovery, first heartbeat).
"""
