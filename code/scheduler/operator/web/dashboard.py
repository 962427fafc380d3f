"""Server-rendered dashboard pages, from the same dicts the JSON API returns.

Every value is escaped here; the page loads only /static/dashboard.css and
/static/dashboard.js from this server (no external assets), and the script
swaps in a freshly rendered `#live` section every few seconds.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from scheduler.cluster.health import HealthReport
from scheduler.humanize import duration, short, span

STATUS_CLASS = {
    "succeeded": "ok",
    "running": "info",
    "queued": "info",
    "failed": "bad",
    "timed_out": "bad",
    "abandoned": "bad",
    "skipped": "warn",
    "missed": "warn",
}


def render_page(
    *,
    jobs: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    instances: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    health: HealthReport,
    now: datetime,
    writable: bool,
) -> str:
    running = sum(1 for r in runs if r["status"] == "running")
    state = "healthy" if health.ok else health.reason
    summary = (
        f'<p class="summary"><span class="badge {"ok" if health.ok else "bad"}">{escape(state)}</span> '
        f"{len(jobs)} jobs · {running} running · updated {_utc(now.isoformat())}</p>"
    )
    live = "".join(
        [
            summary,
            _section("Open incidents", _alerts(alerts, now)),
            _section("Jobs", _jobs(jobs, now, writable)),
            _section("Recent runs", _runs(runs, now)),
            _section("Instances", _instances(instances, now)),
        ]
    )
    return _layout("Dashboard", _token_bar(writable) + f'<div id="live">{live}</div>')


def render_unavailable(reason: str, now: datetime) -> str:
    """The page while the database does not answer; the script keeps retrying."""
    live = (
        f'<p class="summary"><span class="badge bad">{escape(reason)}</span> '
        f"updated {_utc(now.isoformat())}; retrying</p>"
    )
    return _layout("Dashboard", f'<div id="live">{live}</div>')


def render_run(run: dict[str, Any], now: datetime) -> str:
    rows = [
        ("Job", escape(run["job"])),
        ("Status", _badge(run["status"])),
        ("Slot", _utc(run["scheduled_for"])),
        ("Trigger", escape(run["trigger"])),
        ("Attempt", str(run["attempt"])),
        ("Started", _utc(run["started_at"])),
        ("Finished", _utc(run["finished_at"])),
        ("Duration", duration(run["duration_seconds"])),
        ("Lateness", duration(run["lateness_seconds"])),
        ("Instance", escape(f"{run['instance'] or '-'} on {run['host'] or '-'} (pid {run['pid'] or '-'})")),
    ]
    facts = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    body = f'<p><a href="/">← all jobs</a></p><table class="facts">{facts}</table>'
    if run["error_type"]:
        body += _section(
            "Error", f'<p class="error">{escape(run["error_type"])}: {escape(run["error_message"] or "")}</p>'
        )
        if run["error_traceback"]:
            body += f'<pre class="log">{escape(run["error_traceback"])}</pre>'
    note = " (truncated)" if run["log_truncated"] else ""
    log = escape(run["log"] or "(nothing captured)")
    body += _section(f"Log{note}", f'<pre class="log" id="run-log">{log}</pre>')
    return _layout(f"Run {run['id']} of {run['job']}", body)


# -- sections -------------------------------------------------------------------


def _jobs(jobs: list[dict[str, Any]], now: datetime, writable: bool) -> str:
    if not jobs:
        return '<p class="muted">No jobs yet: start a daemon with job modules.</p>'
    head = "<tr><th>Job</th><th>Schedule</th><th>State</th><th>Next run</th><th>Last run</th><th></th></tr>"
    rows = []
    for job in jobs:
        state = "disabled" if not job["enabled"] else "paused" if job["paused"] else "active"
        last = job["last_run"]
        last_cell = (
            f'<a href="/runs/{last["id"]}">{_badge(last["status"])}</a> '
            f'<span class="muted">{_ago(last["scheduled_for"], now)}</span>'
            if last
            else '<span class="muted">never</span>'
        )
        name = escape(job["name"])
        toggle = "resume" if job["paused"] else "pause"
        disabled = "" if writable and job["enabled"] else " disabled"
        run_disabled = "" if writable and state == "active" else " disabled"
        actions = (
            f'<button data-action="trigger" data-job="{name}"{run_disabled}>Run now</button> '
            f'<button data-action="{toggle}" data-job="{name}" class="secondary"{disabled}>'
            f"{toggle.title()}</button>"
        )
        rows.append(
            f'<tr data-job="{name}"><td class="name">{name}</td><td>{escape(job["schedule"])}</td>'
            f'<td><span class="badge {_state_class(state)}">{state}</span></td>'
            f'<td>{_next(job, now)}</td><td>{last_cell}</td><td class="actions">{actions}</td></tr>'
        )
    return f'<table id="jobs">{head}{"".join(rows)}</table>'


def _runs(runs: list[dict[str, Any]], now: datetime) -> str:
    if not runs:
        return '<p class="muted">No runs yet.</p>'
    head = (
        "<tr><th>Run</th><th>Job</th><th>Slot (UTC)</th><th>Trigger</th><th>Status</th>"
        "<th>Duration</th><th>Error</th></tr>"
    )
    rows = []
    for run in runs:
        message = f"{run['error_type']}: {run['error_message'] or ''}" if run["error_type"] else ""
        rows.append(
            f'<tr data-run="{run["id"]}" data-job="{escape(run["job"])}"><td><a href="/runs/{run["id"]}">'
            f"#{run['id']}</a></td><td>{escape(run['job'])}</td><td>{_utc(run['scheduled_for'])}</td>"
            f"<td>{escape(run['trigger'])}</td><td>{_badge(run['status'])}</td>"
            f"<td>{duration(run['duration_seconds'])}</td>"
            f'<td class="error" title="{escape(message)}">{escape(short(message, 80))}</td></tr>'
        )
    return f'<table id="runs">{head}{"".join(rows)}</table>'


def _instances(instances: list[dict[str, Any]], now: datetime) -> str:
    if not instances:
        return '<p class="muted">No instance has run against this database.</p>'
    head = "<tr><th>Instance</th><th>Host</th><th>PID</th><th>Status</th><th>Heartbeat</th><th>Jobs</th></tr>"
    rows = []
    for inst in instances:
        leader = ' <span class="badge info">leader</span>' if inst["leader"] else ""
        cls = "ok" if inst["status"] == "alive" else "bad" if inst["status"] == "dead" else "muted"
        problems = (
            f' <span class="badge bad">{len(inst["problems"])} problems</span>' if inst["problems"] else ""
        )
        rows.append(
            f"<tr><td>{escape(inst['id'])}{leader}</td><td>{escape(inst['host'])}</td><td>{inst['pid']}</td>"
            f'<td><span class="badge {cls}">{escape(inst["status"])}</span></td>'
            f"<td>{_ago(inst['heartbeat_at'], now)}</td><td>{len(inst['jobs'])}{problems}</td></tr>"
        )
    return f'<table id="instances">{head}{"".join(rows)}</table>'


def _alerts(alerts: list[dict[str, Any]], now: datetime) -> str:
    if not alerts:
        return '<p class="muted">None. All quiet.</p>'
    items = "".join(
        f'<li><span class="badge bad">{escape(str(a.get("kind", "")))}</span> '
        f"<strong>{escape(str(a.get('subject', '')))}</strong>: {escape(str(a.get('summary', '')))} "
        f'<span class="muted">opened {_ago(a.get("opened_at"), now)}</span></li>'
        for a in alerts
    )
    return f'<ul id="alerts" class="alerts">{items}</ul>'


def _token_bar(writable: bool) -> str:
    if not writable:
        return (
            '<div class="tokenbar"><span class="muted">Read-only: the daemon has no API token '
            "(set SCHEDULER_API_TOKEN to enable the buttons).</span></div>"
        )
    return (
        '<form class="tokenbar" id="token-form" autocomplete="off">'
        '<label for="token">API token</label>'
        '<input type="password" id="token" placeholder="paste SCHEDULER_API_TOKEN">'
        '<button type="submit" id="token-save">Use token</button>'
        '<button type="button" id="token-forget" class="secondary">Forget</button>'
        '<span id="token-state" class="muted"></span></form>'
        '<div id="flash" role="status"></div>'
    )


# -- pieces -----------------------------------------------------------------------


def _layout(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/dashboard.css"></head>'
        f'<body><header><h1><a href="/">scheduler</a></h1><span class="muted">{escape(title)}</span></header>'
        f'<main>{body}</main><script src="/static/dashboard.js"></script></body></html>'
    )


def _section(title: str, content: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{content}</section>"


def _next(job: dict[str, Any], now: datetime) -> str:
    slot = job["next_run"]
    if slot is None:
        return '<span class="muted">-</span>'
    local = datetime.fromisoformat(slot["local"])
    due = ' <span class="badge warn">due</span>' if job["due"] else ""
    return (
        f'<span title="{_utc(slot["at"])}">{local:%Y-%m-%d %H:%M:%S} '
        f"{escape(slot['abbreviation'] or '')}</span>"
        f' <span class="muted">{_until(slot["at"], now)}</span>{due}'
    )


def _badge(status: str) -> str:
    return f'<span class="badge {STATUS_CLASS.get(status, "muted")}">{escape(status)}</span>'


def _state_class(state: str) -> str:
    return {"active": "ok", "paused": "warn"}.get(state, "muted")


def _utc(text: str | None) -> str:
    return "-" if not text else f"{datetime.fromisoformat(text):%Y-%m-%d %H:%M:%S}Z"


def _until(text: str, now: datetime) -> str:
    delta = (datetime.fromisoformat(text) - now).total_seconds()
    return f"in {span(delta)}" if delta >= 0 else f"{span(delta)} ago"


def _ago(text: str | None, now: datetime) -> str:
    if not text:
        return "-"
    delta = (now - datetime.fromisoformat(text)).total_seconds()
    return f"{span(delta)} ago" if delta >= 0 else f"in {span(delta)}"
