"""Smoke run of bench.operator with tiny sizes: it times every CLI command beside supervisorctl,
and reports a metrics scrape and the dashboard pages. No timing is asserted (that is for the
recorded run on a quiet machine); the supervisord it starts is gone afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.system


def test_the_operator_benchmark_reports_the_cli_beside_supervisorctl_and_the_scrape_size() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.operator", "--runs", "1", "--jobs", "30", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    cli = figures["cli"]
    for name in ("scheduler status", "scheduler jobs", "scheduler history --limit 5", "supervisorctl status"):
        assert cli[name]["median_ms"] > 0, name
    [scrape] = figures["metrics"]
    assert scrape["jobs"] == 30 and scrape["series"] <= 30 * 5 + 40 and scrape["gzip_bytes"] < scrape["bytes"]
    [page] = figures["dashboard"]
    assert page["front"]["bytes"] > 0 and page["filtered"]["bytes"] > 0
    leftover = subprocess.run(["pgrep", "-f", "bench-cli-.*supervisord.conf"], capture_output=True, text=True)
    assert leftover.stdout == ""
