"""Text for people, shared by the CLI, the dashboard and Slack: durations and one-line excerpts.

Pure functions, no time read here; callers pass the seconds.
"""

from __future__ import annotations


def span(seconds: float) -> str:
    """A length of time in its two largest units: '5s', '4m 5s', '2h 3m', '1d 2h' (sign dropped)."""
    whole = int(abs(seconds))
    if whole >= 86400:
        return f"{whole // 86400}d {whole % 86400 // 3600}h"
    if whole >= 3600:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    if whole >= 60:
        return f"{whole // 60}m {whole % 60}s"
    return f"{whole}s"


def duration(seconds: float | None) -> str:
    """How long a run took: '120 ms', '2.0 s', '4m 5s'; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 60 else span(seconds)


def short(text: str, width: int) -> str:
    """`text` on one line (whitespace runs collapsed), cut to `width` characters with '…'."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
