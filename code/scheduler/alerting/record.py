"""The one record of the alerting flow: a `Finding`, what is wrong now.

Findings are detected (findings.py), become incidents (watchdog.py, stored by
`store.incidents`), and the same record, with the event that happened to it
(open, update, recover, realert), becomes a Slack payload (slack.py). A
stored incident is read back into a `Finding` with `from_incident`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scheduler.store.incidents import IncidentRow

KINDS = (
    "delayed",
    "inactive",
    "late",
    "failing",
    "skipping",
    "overrunning",
    "broken",
    "paused",
    "instance",
    "overloaded",
    "crashed",
    "database",
    "test",
)
# Incidents about the scheduler itself, not one job.
SCHEDULER_WIDE = frozenset({"late", "instance", "overloaded", "crashed", "database", "test"})


@dataclass(frozen=True)
class Finding:
    """Something wrong now; becomes an incident keyed by (subject, kind).

    Raises ValueError for an unknown kind or a naive `since`.
    """

    subject: str
    kind: str
    summary: str
    since: datetime
    host: str | None = None
    last_error: str | None = None
    action: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Finding.kind: unknown kind {self.kind!r}")
        if self.since.tzinfo is None:
            raise ValueError("Finding.since: must be tz-aware")

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.kind)

    def stored_details(self) -> dict[str, Any]:
        """What the incident row keeps, so `from_incident` can rebuild this record."""
        extra = {
            "since": self.since.isoformat(),
            "host": self.host,
            "last_error": self.last_error,
            "action": self.action,
        }
        return {**self.details, **{k: v for k, v in extra.items() if v is not None}}

    @classmethod
    def from_incident(cls, incident: IncidentRow) -> Finding:
        """The record a stored incident was opened (or last updated) with."""
        details = dict(incident.details)
        since = details.pop("since", None)
        host, error, action = (details.pop(k, None) for k in ("host", "last_error", "action"))
        return cls(
            incident.subject,
            incident.kind,
            incident.summary,
            datetime.fromisoformat(since) if since else incident.opened_at,
            host=host,
            last_error=error,
            action=action,
            details=details,
        )


def format_utc(instant: datetime) -> str:
    """'2026-11-25 08:00 UTC'."""
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
