"""Smoke run of every benchmark with tiny durations: each one runs and reports its figures.

No timing is asserted: the figures depend on the machine. What is asserted is
that each benchmark drives the real parts to completion (runs recorded, slots
counted, failover observed) and that the report renders every section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench import render
from bench.common import machine, pg_problem, versions
from bench.run import QUICK, RUNNERS, SECTIONS
from bench.run import main as run_main
from tests.support.required import missing

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.system, pytest.mark.postgres]


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    """Every section of the quick profile, run side by side (each in its own processes)."""
    problem = pg_problem()
    if problem is not None:
        missing("benchmark smoke test", f"PostgreSQL on 127.0.0.1:5432 unreachable: {problem}")
    with ThreadPoolExecutor(len(SECTIONS)) as pool:
        futures = {s: pool.submit(RUNNERS[s], QUICK[s]) for s in SECTIONS}
        return {s: f.result(timeout=300) for s, f in futures.items()}


def _no_error(result: Any) -> None:
    assert not (isinstance(result, dict) and "error" in result), result


def test_lateness_benchmark_records_every_slot_for_both_schedulers(results: dict[str, Any]) -> None:
    assert [row.get("diagnostic", False) for row in results["lateness"]] == [False, True]
    for row in results["lateness"]:
        for impl in ("ours", "apscheduler") if not row.get("diagnostic") else ("ours",):
            _no_error(row[impl])
            assert row[impl]["lateness"]["count"] > 0
            assert row[impl]["expected_runs"] > 0


def test_headline_cases_time_every_run_from_inside_its_body_beside_apscheduler(
    results: dict[str, Any],
) -> None:
    headline = results["headline"]
    assert set(headline) == {"burst", "second", "cluster", "minute"}
    for case, row in headline.items():
        _no_error(row["ours"])
        assert row["ours"]["executions"] == row["ours"]["expected"] > 0, case
        assert row["ours"]["duplicates"] == 0
        assert row["ours"]["max_heartbeat_gap_s"] > 0  # heartbeats were watched
        if case != "cluster":  # APScheduler is single-process
            _no_error(row["apscheduler"])
            assert row["apscheduler"]["executions"] > 0
    assert len(headline["cluster"]["ours"]["share_percent"]) >= 1


def test_drift_benchmark_runs_all_three_schedulers(results: dict[str, Any]) -> None:
    for impl in ("ours", "apscheduler", "timeloop"):
        _no_error(results["drift"][impl])
        assert results["drift"][impl]["runs"] >= 2
        assert isinstance(results["drift"][impl]["drift_s"], float)


def test_idle_benchmark_measures_after_the_first_burst(results: dict[str, Any]) -> None:
    for impl in ("ours", "apscheduler"):
        r = results["idle"][impl]
        _no_error(r)
        assert r["window_s"] > 0 and r["rss_mb"] > 0 and r["threads"] >= 1


def test_throughput_benchmark_counts_recorded_runs_on_both_databases(results: dict[str, Any]) -> None:
    cases = [(r.get("db"), r.get("instances"), r.get("jobs")) for r in results["throughput"]]
    assert cases == [tuple(case) for case in QUICK["throughput"]["cases"]]
    assert {db for db, _, _ in cases} == {"sqlite", "postgresql"}
    for r in results["throughput"]:
        _no_error(r)
        assert r["runs_per_s"] > 0 and r["floor_commits_per_s"] > 0


def test_exactly_once_benchmark_counts_executions_of_three_processes(results: dict[str, Any]) -> None:
    for impl in ("ours", "apscheduler"):
        r = results["once"][impl]
        _no_error(r)
        assert r["expected_slots"] > 0 and r["executions"] > 0
        assert len(r["executions_per_process"]) >= 1


def test_failover_benchmark_observes_a_takeover_after_each_signal(results: dict[str, Any]) -> None:
    r = results["failover"]
    _no_error(r)
    assert len(r["sigkill_s"]) == QUICK["failover"]["trials"]
    assert len(r["sigterm_s"]) == QUICK["failover"]["trials"]


def test_startup_and_cron_benchmarks_report_figures(results: dict[str, Any]) -> None:
    for key in ("sqlite", "postgresql", "apscheduler", "cron"):
        _no_error(results["startup"][key])
    assert results["startup"]["sqlite"]["process_cold_s"] > 0
    assert set(results["startup"]["cron"]["rates"]) and all(
        v["ours"] > 0 and v["apscheduler"] > 0 for v in results["startup"]["cron"]["rates"].values()
    )


def test_isolation_benchmark_times_thread_process_and_apscheduler_runs(results: dict[str, Any]) -> None:
    _no_error(results["isolation"])
    for key in ("thread", "process", "apscheduler"):
        assert results["isolation"][key]["count"] == QUICK["isolation"]["runs"]
        assert results["isolation"][key]["p50_ms"] > 0


def test_report_has_every_section_and_a_verdict_per_target(results: dict[str, Any], tmp_path: Path) -> None:
    meta = {
        "command": ".venv/bin/python -m bench.run --quick",
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "profile": "quick durations",
        "plan": QUICK,
        "finished_load": machine()["load"],
        "elapsed_s": 1.0,
    }
    text = render.markdown(results, meta)
    for title in ("1. Dispatch lateness", "1b. Drift", "2. Idle", "3. Recorded-run", "4. Exactly-once"):
        assert f"## {title}" in text
    assert "## 5. Failover" in text and "## 6. Start-up" in text and "## Targets" in text
    assert "## 7. Per-run overhead of process isolation" in text
    assert "failed:" not in text
    verdicts = [line for line in text.splitlines() if line.endswith(("| met |", "| **NOT met** |"))]
    assert len(verdicts) >= 8  # all but the 1,000-job lateness targets are measured in the quick profile


def test_report_is_rewritten_from_saved_results_without_running(
    results: dict[str, Any], tmp_path: Path
) -> None:
    meta = {
        "command": ".venv/bin/python -m bench.run --quick",
        "started_at": "2026-01-01 00:00 UTC",
        "machine": machine(),
        "versions": {"scheduler": "test"},
        "profile": "quick durations",
        "plan": QUICK,
        "finished_load": "0.00 0.00 0.00",
        "elapsed_s": 1.0,
    }
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"meta": meta, "results": results}))
    out = tmp_path / "report.md"
    assert run_main(["--render-from", str(saved), "--output", str(out)]) == 0
    assert out.read_text() == render.markdown(json.loads(saved.read_text())["results"], meta)


def test_run_command_rejects_an_unknown_section() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--only", "lateness,nonsense", "--output", "-"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'code'}{os.pathsep}{REPO}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "bench: --only: unknown section 'nonsense' "
        "(choose from headline, lateness, drift, idle, throughput, once, failover, startup, isolation)"
    )
