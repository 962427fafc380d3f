"""Pieces every dashboard page shares: the layout, badges, times, the status strip, the SVG chart.

Every value is escaped here. Nothing uses an inline style or script (the pages are
served under a CSP without 'unsafe-inline'): colours come from classes in
dashboard.css, SVG geometry from presentation attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from urllib.parse import quote

from scheduler.store import RunBrief

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
STATE_CLASS = {
    "active": "ok",
    "failing": "bad",
    "late": "bad",
    "skipping": "warn",
    "paused": "warn",
    "never-run": "muted",
    "disabled": "muted",
}


def layout(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/dashboard.css"></head>'
        f'<body><header><h1><a href="/">scheduler</a></h1><span class="muted">{escape(title)}</span></header>'
        f'<main>{body}</main><script src="/static/dashboard.js"></script></body></html>'
    )


def section(title: str, content: str, extra: str = "") -> str:
    return f"<section{extra}><h2>{escape(title)}</h2>{content}</section>"


def scroll(table: str) -> str:
    """A table that scrolls inside its card on a narrow screen instead of widening the page."""
    return f'<div class="scroll">{table}</div>'


def job_href(name: str) -> str:
    return "/jobs/" + quote(name, safe="")


def badge(status: str) -> str:
    return f'<span class="badge {STATUS_CLASS.get(status, "muted")}">{escape(status)}</span>'


def state_badge(state: str) -> str:
    return f'<span class="badge {STATE_CLASS.get(state, "muted")}">{escape(state)}</span>'


def utc(at: datetime | str | None) -> str:
    if not at:
        return "-"
    value = datetime.fromisoformat(at) if isinstance(at, str) else at
    return f"{value:%Y-%m-%d %H:%M:%S}Z"


def span(seconds: float) -> str:
    whole = int(abs(seconds))
    if whole >= 86400:
        return f"{whole // 86400}d {whole % 86400 // 3600}h"
    if whole >= 3600:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    if whole >= 60:
        return f"{whole // 60}m {whole % 60}s"
    return f"{whole}s"


def until(at: datetime | str, now: datetime) -> str:
    value = datetime.fromisoformat(at) if isinstance(at, str) else at
    delta = (value - now).total_seconds()
    return f"in {span(delta)}" if delta >= 0 else f"{span(delta)} ago"


def ago(at: datetime | str | None, now: datetime) -> str:
    if not at:
        return "-"
    value = datetime.fromisoformat(at) if isinstance(at, str) else at
    delta = (now - value).total_seconds()
    return f"{span(delta)} ago" if delta >= 0 else f"in {span(delta)}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return span(seconds) if seconds >= 60 else f"{seconds:.1f} s"


def short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def strip(runs: Sequence[RunBrief], *, size: str = "") -> str:
    """Runs as coloured cells, oldest on the left; each links to its run."""
    if not runs:
        return '<span class="muted">no runs</span>'
    cells = "".join(
        f'<a class="cell {STATUS_CLASS.get(r.status, "muted")}" href="/runs/{r.id}" data-run="{r.id}"'
        f' data-status="{escape(r.status)}" title="#{r.id} {escape(r.status)} · slot {utc(r.scheduled_for)}'
        f' · {duration(r.duration_seconds)}"></a>'
        for r in reversed(runs)
    )
    return f'<span class="strip{(" " + size) if size else ""}">{cells}</span>'


def duration_chart(runs: Sequence[RunBrief], width: int = 600, height: int = 120) -> str:
    """An SVG bar chart of run durations, oldest on the left, coloured by status."""
    timed = [r for r in reversed(runs) if r.duration_seconds is not None]
    if not timed:
        return '<p class="muted">No finished runs to chart yet.</p>'
    top = max(r.duration_seconds or 0.0 for r in timed) or 1.0
    slot = width / max(len(timed), 1)
    bar = min(max(slot * 0.7, 1.0), 24.0)
    plot = height - 18
    bars = []
    for i, run in enumerate(timed):
        value = run.duration_seconds or 0.0
        h = max(plot * value / top, 1.0)
        bars.append(
            f'<rect class="{STATUS_CLASS.get(run.status, "muted")}" x="{i * slot:.1f}" y="{plot - h:.1f}"'
            f' width="{bar:.1f}" height="{h:.1f}"><title>#{run.id} {escape(run.status)}: '
            f"{duration(value)}</title></rect>"
        )
    label = f"max {duration(top)} · {len(timed)} runs"
    return (
        f'<svg class="chart" id="durations" viewBox="0 0 {width} {height}" role="img"'
        f' aria-label="run durations, {escape(label)}">'
        f'<line class="axis" x1="0" y1="{plot}" x2="{width}" y2="{plot}"/>{"".join(bars)}'
        f'<text x="0" y="{height - 4}">{escape(label)}</text></svg>'
    )
