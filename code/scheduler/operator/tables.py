"""The text of the CLI's answers: aligned tables, a job or a run in detail, times in the job zone and UTC."""

from __future__ import annotations

import json
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


def jobs_table(jobs: Sequence[dict[str, Any]]) -> str:
    rows = [
        [j["name"], j["schedule"], *next_cells(j), j["last_status"] or "-", yes(j["paused"])] for j in jobs
    ]
    return table(["JOB", "SCHEDULE", "NEXT RUN (JOB ZONE)", "NEXT RUN (UTC)", "LAST", "PAUSED"], rows)


def job_text(job: dict[str, Any]) -> str:
    """One job in detail (`show`): its settings, one a line, then its recent runs."""
    override = "yes (code: " + job["code_schedule"] + ")" if job["overridden"] else "no"
    pairs = [
        ("job", job["name"]),
        ("schedule", job["schedule"]),
        ("override", override),
        ("zone", job["timezone"]),
        ("state", "disabled in code" if not job["enabled"] else "paused" if job["paused"] else "active"),
        ("next run", " / ".join(next_cells(job))),
        ("module", job["definition"].get("module", "-")),
        ("timeout", duration(job["definition"].get("timeout_seconds"))),
        ("retries", str(job["definition"].get("retries", 0))),
        ("overlap", job["definition"].get("overlap", "-")),
        ("catch-up", job["definition"].get("catchup", "-")),
        ("changed", f"{job['changed_at']} by {job['changed_by']}" if job["changed_by"] else "-"),
    ]
    width = max(len(k) for k, _ in pairs)
    lines = [f"{key:<{width}}  {value}" for key, value in pairs]
    runs = runs_table(job["recent_runs"]) if job["recent_runs"] else "no runs yet"
    return "\n".join([*lines, "", runs])


def slots_text(data: dict[str, Any]) -> str:
    """A job's upcoming slots (`next`)."""
    state = " (paused: these slots pass unrun until resumed)" if data["paused"] else ""
    rows = [[str(i), local_time(s), utc_time(s["at"])] for i, s in enumerate(data["slots"], 1)]
    slots = table(["#", f"JOB ZONE ({data['timezone']})", "UTC"], rows)
    return f"{data['job']}: {data['schedule']}{state}\n{slots}"


def run_text(run: dict[str, Any]) -> str:
    """One run with its log and error (`logs`)."""
    took = f", {duration(run['duration_seconds'])}" if run["duration_seconds"] is not None else ""
    lines = [
        f"run {run['id']} of {run['job']}: {run['status']} (slot {utc_time(run['scheduled_for'])}{took})",
        "-- log" + (" (truncated)" if run["log_truncated"] else ""),
        (run["log"] or "(nothing captured)").rstrip("\n"),
    ]
    if run["error_type"]:
        lines.append(f"-- error: {run['error_type']}: {run['error_message']}")
        if run["error_traceback"]:
            lines.append(run["error_traceback"].rstrip("\n"))
    return "\n".join(lines)


def instances_table(found: Sequence[dict[str, Any]]) -> str:
    headers = ["INSTANCE", "HOST", "PID", "STATUS", "LEADER", "HEARTBEAT (UTC)", "JOBS", "PROBLEMS"]
    rows = [
        [
            i["id"],
            i["host"],
            str(i["pid"]),
            i["status"],
            yes(i["leader"]),
            utc_time(i["heartbeat_at"]),
            str(len(i["jobs"])),
            str(len(i["problems"])),
        ]
        for i in found
    ]
    return table(headers, rows) if rows else "no instances have run against this database"


def alerts_table(found: Sequence[dict[str, Any]], *, open_only: bool) -> str:
    headers = ["ID", "KIND", "SUBJECT", "OPENED (UTC)", "CLOSED (UTC)", "SUMMARY"]
    rows = [
        [
            str(i.get("id", "")),
            str(i.get("kind", "")),
            str(i.get("subject", "")),
            utc_time(i.get("opened_at")),
            utc_time(i.get("closed_at")),
            short(str(i.get("summary", "")), 70),
        ]
        for i in found
    ]
    return table(headers, rows) if rows else ("no open incidents" if open_only else "no incidents")


def audit_table(entries: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            utc_time(e["at"]),
            e["actor"],
            e["action"],
            e["job"] or "-",
            json.dumps(e["details"], sort_keys=True),
        ]
        for e in entries
    ]
    return table(["AT (UTC)", "ACTOR", "ACTION", "JOB", "DETAILS"], rows) if rows else "no changes recorded"


def schedule_text(job: dict[str, Any]) -> str:
    """A job's schedule after `set`: its source and next run."""
    text = f"{job['name']}: {job['schedule']}{' (override)' if job['overridden'] else ' (from code)'}"
    if job["next_run"]:
        text += f"\nnext run {local_time(job['next_run'])} = {utc_time(job['next_run']['at'])}"
    return text


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
