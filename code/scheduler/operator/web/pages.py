"""The dashboard's job page and run page.

A job page: its schedule and next slots, a strip of its last runs and an SVG
chart of their durations, a note when it keeps skipping slots, its incidents
and audit trail, and the Run now / Pause / Resume buttons. A run page: its
facts, error and log; while the run is going, its elapsed time and the tail of
its log (live from this instance's memory when it runs here), refreshed by the
page script like the front page.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from scheduler.humanize import duration
from scheduler.operator.web.dashboard import action_buttons, alerts_list, isolation_badge, token_bar
from scheduler.operator.web.html import (
    badge,
    duration_chart,
    job_href,
    layout,
    scroll,
    section,
    state_badge,
    strip,
    utc,
)
from scheduler.operator.web.listing import SKIP_STREAK
from scheduler.store import RunBrief

LOG_TAIL = 8 * 1024  # characters of a running run's log shown


def render_job(
    *,
    job: dict[str, Any],
    state: str,
    isolated: bool,
    runs: list[RunBrief],
    slots: list[dict[str, Any]],
    incidents: list[dict[str, Any]],
    audit: list[dict[str, Any]],
    now: datetime,
    writable: bool,
) -> str:
    name = job["name"]
    head = (
        f'<div class="jobhead"><h2 class="jobname">{escape(name)}</h2> {state_badge(state)}'
        f"{isolation_badge(isolated)}"
        f'<span class="actions">{action_buttons(name, job["paused"], job["enabled"], writable)}</span></div>'
    )
    live = "".join(
        [
            head,
            _skip_note(runs),
            section("Schedule", _schedule(job, slots)),
            section(
                f"Last {len(runs)} run{'' if len(runs) == 1 else 's'}",
                strip(runs, size="wide") + _legend(runs),
                ' id="history"',
            ),
            section("Durations", duration_chart(runs)),
            section("Incidents", alerts_list(incidents, now, "job-incidents")),
            section("Audit trail", _audit(audit)),
        ]
    )
    body = '<p><a href="/">← all jobs</a></p>' + token_bar(writable) + f'<div id="live">{live}</div>'
    return layout(f"Job {name}", body)


def _skip_note(runs: list[RunBrief]) -> str:
    scheduled = [r for r in runs if r.trigger != "manual"]
    skipped = sum(1 for r in scheduled if r.status == "skipped")
    streak = 0
    for run in scheduled:
        if run.status != "skipped":
            break
        streak += 1
    if skipped == 0 or (streak < SKIP_STREAK and skipped * 4 < len(scheduled)):
        return ""
    return (
        f'<p class="notice warn" id="skipping">Skipping: {skipped} of the last {len(scheduled)} slots were '
        f"skipped ({streak} in a row now) because the previous run was still going. Its runs take longer "
        'than its period: lengthen the interval, shorten the job, or set overlap="queue".</p>'
    )


def _schedule(job: dict[str, Any], slots: list[dict[str, Any]]) -> str:
    code = (
        f' <span class="muted">(override; code: {escape(job["code_schedule"])})</span>'
        if job["overridden"]
        else ""
    )
    facts = [
        ("Schedule", escape(job["schedule"]) + code),
        ("Zone", escape(job["timezone"])),
        ("Timeout", duration(job["definition"].get("timeout_seconds"))),
        ("Retries", escape(str(job["definition"].get("retries", 0)))),
        ("Overlap", escape(str(job["definition"].get("overlap", "-")))),
        ("Changed", escape(f"{utc(job['changed_at'])} by {job['changed_by']}") if job["changed_by"] else "-"),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    if job["paused"] or not job["enabled"]:
        upcoming = '<p class="muted">No upcoming slots while it is paused or disabled.</p>'
    else:
        items = "".join(
            f"<li>{escape(datetime.fromisoformat(s['local']).strftime('%Y-%m-%d %H:%M:%S'))} "
            f'{escape(s["abbreviation"] or "")} <span class="muted">{utc(s["at"])}</span></li>'
            for s in slots
        )
        upcoming = f'<h3>Next slots</h3><ol id="next-slots" class="slots">{items}</ol>'
    return f'<table class="facts">{rows}</table>{upcoming}'


def _legend(runs: list[RunBrief]) -> str:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    parts = " ".join(f"{badge(s)} {n}" for s, n in sorted(counts.items()))
    return f'<p class="legend">{parts}</p>' if parts else ""


def _audit(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return '<p class="muted">No operator changes.</p>'
    rows = "".join(
        f"<tr><td>{utc(e['at'])}</td><td>{escape(e['actor'])}</td><td>{escape(e['action'])}</td>"
        f"<td>{escape(_details(e['details']))}</td></tr>"
        for e in entries
    )
    head = "<thead><tr><th>At (UTC)</th><th>Who</th><th>Action</th><th>Details</th></tr></thead>"
    return scroll(f'<table id="audit">{head}<tbody>{rows}</tbody></table>')


def _details(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(details.items())) or "-"


# -- a run --------------------------------------------------------------------------


def render_run(run: dict[str, Any], now: datetime, live_log: str | None = None) -> str:
    going = run["status"] == "running" and run["started_at"] is not None
    elapsed = (
        f'<span id="elapsed">{duration((now - datetime.fromisoformat(run["started_at"])).total_seconds())}'
        " so far</span>"
        if going
        else duration(run["duration_seconds"])
    )
    rows = [
        ("Job", f'<a href="{job_href(run["job"])}">{escape(run["job"])}</a>'),
        ("Status", badge(run["status"])),
        ("Slot", utc(run["scheduled_for"])),
        ("Trigger", escape(run["trigger"])),
        ("Attempt", str(run["attempt"])),
        ("Started", utc(run["started_at"])),
        ("Finished", utc(run["finished_at"])),
        ("Duration", elapsed),
        ("Lateness", duration(run["lateness_seconds"])),
        ("Instance", escape(f"{run['instance'] or '-'} on {run['host'] or '-'} (pid {run['pid'] or '-'})")),
    ]
    facts = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    body = scroll(f'<table class="facts">{facts}</table>')
    if run["error_type"]:
        body += section(
            "Error", f'<p class="error">{escape(run["error_type"])}: {escape(run["error_message"] or "")}</p>'
        )
        if run["error_traceback"]:
            body += f'<pre class="log">{escape(run["error_traceback"])}</pre>'
    body += _log(run, going, live_log)
    top = f'<p><a href="{job_href(run["job"])}">← {escape(run["job"])}</a></p>'
    return layout(f"Run {run['id']} of {run['job']}", top + f'<div id="live">{body}</div>')


def _log(run: dict[str, Any], going: bool, live_log: str | None) -> str:
    if not going:
        note = " (truncated)" if run["log_truncated"] else ""
        text = escape(run["log"] or "(nothing captured)")
        return section(f"Log{note}", f'<pre class="log" id="run-log">{text}</pre>')
    if live_log is None:
        where = escape(run["instance"] or "another instance")
        message = f"(the log is stored when the run ends; it runs on {where})"
        return section("Log", f'<pre class="log" id="run-log">{message}</pre>')
    tail = live_log[-LOG_TAIL:]
    cut = "… " if len(live_log) > LOG_TAIL else ""
    text = escape(cut + tail) if tail else "(nothing logged yet)"
    return section("Log (live tail)", f'<pre class="log" id="run-log" data-live="1">{text}</pre>')
