"""The dashboard's front page, server-rendered from the read model and the jobs listing.

The page loads only /static/dashboard.css and /static/dashboard.js from this
server (no external assets), and the script swaps in a freshly rendered
`#live` section every few seconds. The jobs list is filtered, sorted and paged
on the server (query parameters q, state, sort, page), so the page stays small
at 10,000 jobs.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from scheduler.cluster.health import HealthReport
from scheduler.humanize import duration, short
from scheduler.operator.web.html import (
    ago,
    badge,
    job_href,
    layout,
    scroll,
    section,
    state_badge,
    strip,
    until,
    utc,
)
from scheduler.operator.web.listing import PAGE_SIZE, JobLine, Listing
from scheduler.operator.web.openapi import JOB_SORTS, JOB_STATES


def render_page(
    *,
    listing: Listing,
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
        f"{listing.total} jobs · {running} running · updated {utc(now)}</p>"
    )
    live = "".join(
        [
            summary,
            section("Open incidents", _alerts(alerts, now)),
            section("Jobs", _jobs(listing, now, writable)),
            section("Recent runs", _runs(runs)),
            section("Instances", _instances(instances, now)),
        ]
    )
    return layout("Dashboard", token_bar(writable) + _filter_form(listing) + f'<div id="live">{live}</div>')


def render_unavailable(reason: str, now: datetime) -> str:
    """The page while the database does not answer; the script keeps retrying."""
    live = (
        f'<p class="summary"><span class="badge bad">{escape(reason)}</span> updated {utc(now)}; retrying</p>'
    )
    return layout("Dashboard", f'<div id="live">{live}</div>')


# -- the jobs list --------------------------------------------------------------


def _filter_form(listing: Listing) -> str:
    wanted = listing.filter
    states = "".join(
        f'<option value="{s}"{" selected" if s == wanted.state else ""}>{s.replace("-", " ")}</option>'
        for s in JOB_STATES
    )
    sorts = "".join(
        f'<option value="{s}"{" selected" if s == wanted.sort else ""}>by {s}</option>' for s in JOB_SORTS
    )
    return (
        '<form class="filters" id="filter-form" method="get" action="/" role="search">'
        f'<input type="search" name="q" id="filter-text" value="{escape(wanted.text)}"'
        ' placeholder="filter jobs by name" aria-label="filter jobs by name">'
        f'<select name="state" id="filter-state" aria-label="state"><option value="">any state</option>'
        f"{states}</select>"
        f'<select name="sort" id="filter-sort" aria-label="sort">{sorts}</select>'
        '<button type="submit" class="secondary">Filter</button></form>'
    )


def _jobs(listing: Listing, now: datetime, writable: bool) -> str:
    if listing.total == 0:
        return '<p class="muted">No jobs yet: start a daemon with job modules.</p>'
    if not listing.lines:
        return f'<p class="muted" id="no-match">No job matches ({listing.total} jobs in all).</p>'
    head = (
        "<thead><tr><th>Job</th><th>Schedule</th><th>State</th><th>Recent runs</th><th>Next run</th>"
        "<th>Last run</th><th></th></tr></thead>"
    )
    rows = "".join(_job_row(line, now, writable) for line in listing.lines)
    table = f'<table id="jobs" class="cards">{head}<tbody>{rows}</tbody></table>'
    return scroll(table) + _pager(listing)


def _job_row(line: JobLine, now: datetime, writable: bool) -> str:
    name = escape(line.name)
    last = line.last
    last_cell = (
        f'<a href="/runs/{last.id}">{badge(last.status)}</a> '
        f'<span class="muted">{ago(last.scheduled_for, now)}</span>'
        if last
        else '<span class="muted">never</span>'
    )
    return (
        f'<tr data-job="{name}" data-state="{line.state}">'
        f'<td class="name" data-label="Job"><a href="{job_href(line.name)}">{name}</a></td>'
        f'<td data-label="Schedule">{escape(line.schedule)}</td>'
        f'<td data-label="State">{state_badge(line.state)}{isolation_badge(line.isolated)}</td>'
        f'<td data-label="Recent runs">{strip(line.strip, size="mini")}</td>'
        f'<td data-label="Next run">{_next(line, now)}</td><td data-label="Last run">{last_cell}</td>'
        f'<td class="actions">{action_buttons(line.name, line.paused, line.enabled, writable)}</td></tr>'
    )


def isolation_badge(isolated: bool) -> str:
    """A "process" badge for a job whose runs go to a child process; nothing for a thread job."""
    title = "its runs go to a child process (isolation=process)"
    return f' <span class="badge info isolation" title="{title}">process</span>' if isolated else ""


def action_buttons(name: str, paused: bool, enabled: bool, writable: bool) -> str:
    job = escape(name)
    toggle = "resume" if paused else "pause"
    disabled = "" if writable and enabled else " disabled"
    run_disabled = "" if writable and enabled and not paused else " disabled"
    return (
        f'<button data-action="trigger" data-job="{job}"{run_disabled}>Run now</button> '
        f'<button data-action="{toggle}" data-job="{job}" class="secondary"{disabled}>'
        f"{toggle.title()}</button>"
    )


def _next(line: JobLine, now: datetime) -> str:
    if line.next_at is None:
        return '<span class="muted">-</span>'
    local = line.next_at.astimezone(ZoneInfo(line.zone))
    due = ' <span class="badge warn">due</span>' if line.next_at <= now else ""
    return (
        f'<span title="{utc(line.next_at)}">{local:%Y-%m-%d %H:%M} {escape(local.tzname() or "")}</span>'
        f' <span class="muted">{until(line.next_at, now)}</span>{due}'
    )


def _pager(listing: Listing) -> str:
    wanted = listing.filter
    first = (listing.page - 1) * PAGE_SIZE + 1 if listing.lines else 0
    shown = f"{first}-{first + len(listing.lines) - 1} of {listing.matched}"
    if listing.matched != listing.total:
        shown += f" matching ({listing.total} in all)"

    def link(page: int, text: str, rel: str) -> str:
        sort = "" if wanted.sort == "name" else wanted.sort  # the default stays out of the link
        query = {"q": wanted.text, "state": wanted.state, "sort": sort, "page": page}
        href = "/?" + urlencode({k: v for k, v in query.items() if v})
        return f'<a href="{escape(href)}" rel="{rel}" id="page-{rel}">{text}</a>'

    links = []
    if listing.page > 1:
        links.append(link(listing.page - 1, "← previous", "prev"))
    if listing.page < listing.pages:
        links.append(link(listing.page + 1, "next →", "next"))
    pages = f"page {listing.page} of {listing.pages}"
    return f'<p class="pager muted" id="pager">{shown} · {pages} {" ".join(links)}</p>'


# -- the other sections ---------------------------------------------------------------


def _runs(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return '<p class="muted">No runs yet.</p>'
    head = (
        "<thead><tr><th>Run</th><th>Job</th><th>Slot (UTC)</th><th>Trigger</th><th>Status</th>"
        "<th>Duration</th><th>Error</th></tr></thead>"
    )
    rows = []
    for run in runs:
        message = f"{run['error_type']}: {run['error_message'] or ''}" if run["error_type"] else ""
        rows.append(
            f'<tr data-run="{run["id"]}" data-job="{escape(run["job"])}"><td><a href="/runs/{run["id"]}">'
            f'#{run["id"]}</a></td><td><a href="{job_href(run["job"])}">{escape(run["job"])}</a></td>'
            f"<td>{utc(run['scheduled_for'])}</td>"
            f"<td>{escape(run['trigger'])}</td><td>{badge(run['status'])}</td>"
            f"<td>{duration(run['duration_seconds'])}</td>"
            f'<td class="error" title="{escape(message)}">{escape(short(message, 80))}</td></tr>'
        )
    return scroll(f'<table id="runs">{head}<tbody>{"".join(rows)}</tbody></table>')


def _instances(instances: list[dict[str, Any]], now: datetime) -> str:
    if not instances:
        return '<p class="muted">No instance has run against this database.</p>'
    head = (
        "<thead><tr><th>Instance</th><th>Host</th><th>PID</th><th>Status</th><th>Heartbeat</th>"
        "<th>Jobs</th></tr></thead>"
    )
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
            f"<td>{ago(inst['heartbeat_at'], now)}</td><td>{len(inst['jobs'])}{problems}</td></tr>"
        )
    return scroll(f'<table id="instances">{head}<tbody>{"".join(rows)}</tbody></table>')


def alerts_list(alerts: list[dict[str, Any]], now: datetime, element_id: str = "alerts") -> str:
    if not alerts:
        return '<p class="muted">None. All quiet.</p>'
    items = "".join(
        f'<li><span class="badge {"muted" if a.get("closed_at") else "bad"}">{escape(str(a.get("kind", "")))}'
        f"</span> <strong>{escape(str(a.get('subject', '')))}</strong>: {escape(str(a.get('summary', '')))} "
        f'<span class="muted">opened {ago(a.get("opened_at"), now)}'
        f"{'; closed ' + ago(a.get('closed_at'), now) if a.get('closed_at') else ''}</span></li>"
        for a in alerts
    )
    return f'<ul id="{element_id}" class="alerts">{items}</ul>'


def _alerts(alerts: list[dict[str, Any]], now: datetime) -> str:
    return alerts_list(alerts, now)


def token_bar(writable: bool) -> str:
    if not writable:
        return (
            '<div class="tokenbar"><span class="muted">Read-only: the daemon has no API token '
            "(set SCHEDULER_API_TOKEN to enable the buttons).</span></div>"
        )
    return (
        '<form class="tokenbar" id="token-form" autocomplete="off">'
        '<label for="token">API token</label>'
        '<input type="password" id="token" placeholder="paste SCHEDULER_API_TOKEN">'
        '<span class="tokenbuttons"><button type="submit" id="token-save">Use token</button>'
        '<button type="button" id="token-forget" class="secondary">Forget</button></span>'
        '<span id="token-state" class="muted"></span></form>'
        '<div id="flash" role="status"></div>'
    )
