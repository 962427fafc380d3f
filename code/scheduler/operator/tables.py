"""Plain-text tables and times for the CLI: aligned columns, slots in the job's zone and UTC."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from scheduler.humanize import duration, short


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing blanks."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(f"{c:<{w}}" for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    return "\n".join(lines)


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    headers = ["RUN", "JOB", "SLOT (UTC)", "TRIGGER", "STATUS", "TRY", "DURATION", "ERROR"]
    rows = [
        [
            str(r["id"]),
            r["job"],
            utc_time(r["scheduled_for"]),
            r["trigger"],
            r["status"],
            str(r["attempt"]),
            duration(r["duration_seconds"]),
            short(f"{r['error_type']}: {r['error_message']}", 60) if r["error_type"] else "",
        ]
        for r in runs
    ]
    return table(headers, rows)


def local_time(slot: dict[str, Any]) -> str:
    local = datetime.fromisoformat(slot["local"])
    return f"{local:%Y-%m-%d %H:%M:%S} {slot['abbreviation']}"


def utc_time(text: str | None) -> str:
    if not text:
        return "-"
    return f"{datetime.fromisoformat(text):%Y-%m-%d %H:%M:%S}Z"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def next_cells(job: dict[str, Any]) -> list[str]:
    """A job's next-run cells: the slot in its zone (due or not) and in UTC, or why there is none."""
    if not job["enabled"]:
        return ["disabled", "-"]
    if job["paused"]:
        return ["paused", "-"]
    slot = job["next_run"]
    due = " (due)" if job["due"] else ""
    return [local_time(slot) + due, utc_time(slot["at"])]
