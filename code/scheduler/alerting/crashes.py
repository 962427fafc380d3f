"""The `crashed` finding: a daemon died while runs were in flight (pure: no clock reads, no I/O).

A thread run that calls os._exit or crashes in C code takes its daemon with it.
The next daemon started on that host marks the runs that were in flight
`abandoned` ("process N on HOST died while running it"); each host with such
runs in the last window has one finding, so a daemon that keeps crashing under
supervisord is one incident, whose text names the latest run, until the host
has gone a quiet window without one.
"""

from __future__ import annotations

from datetime import timedelta

from scheduler.alerting.findings import span
from scheduler.alerting.record import Finding, format_utc
from scheduler.store.runfacts import Crash

LISTED = 5  # runs named in the text; the rest are counted


def crashed(crashes: list[Crash], window: timedelta) -> list[Finding]:
    """Per host, the daemon deaths recorded in the last `window` (`crashes` newest first)."""
    by_host: dict[str, list[Crash]] = {}
    for c in crashes:
        by_host.setdefault(c.host, []).append(c)
    return [_finding(host, found, window) for host, found in sorted(by_host.items())]


def _finding(host: str, crashes: list[Crash], window: timedelta) -> Finding:
    latest = crashes[0]
    summary = (
        f"the daemon on {host} (pid {latest.pid}) died while run {latest.run_id} of {latest.job} "
        f"was in flight (found at {format_utc(latest.abandoned_at)})"
    )
    others = crashes[1:]
    if others:
        named = ", ".join(f"run {c.run_id} of {c.job}" for c in others[:LISTED])
        more = f" and {len(others) - LISTED} more" if len(others) > LISTED else ""
        summary += f"; in the last {span(window)} also {named}{more}"
    action = (
        f"scheduler history {latest.job}; a thread run that calls os._exit or crashes in C code "
        'takes the daemon with it: give the job isolation="process"'
    )
    details = {"runs": [c.run_id for c in crashes[: LISTED + 1]], "pid": latest.pid, "job": latest.job}
    return Finding(host, "crashed", summary, latest.abandoned_at, host=host, action=action, details=details)
