"""A local outbox: notices queued in a file while the database (and its outbox) is away.

Only the database-outage alert needs it: it cannot be written to the
database it is about. The notice is spooled to `SCHEDULER_STATE_DIR` and
sent by the same `OutboxSender` as every other notice, with the same retry
policy; when the database answers again the watchdog records the incident and
moves what the spool holds into the database outbox (see
`IncidentRepository.record_outage`), and the spool entry is removed. The file
is rewritten whole and atomically (write, fsync, rename), so a crash leaves
the old or the new content, and a restart during the outage neither repeats
nor loses the message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpooledNotice:
    id: int
    subject: str
    kind: str
    event: str
    payload: dict[str, Any] | None  # None: Slack not configured, nothing to send
    details: dict[str, Any]  # the stored details of the finding (see Finding.stored_details)
    summary: str
    created_at: str  # ISO 8601
    status: str = "pending"  # pending | sent | failed
    attempts: int = 0
    next_attempt_at: str = ""
    sent_at: str | None = None
    slack_ts: str | None = None
    last_error: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.kind)


class LocalOutbox:
    """The spool file; each method reads and rewrites it whole (it holds a notice or two)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def entries(self) -> list[SpooledNotice]:
        with self._lock:
            return self._read()

    def find(self, key: tuple[str, str]) -> SpooledNotice | None:
        return next((e for e in self.entries() if e.key == key), None)

    def add(
        self,
        subject: str,
        kind: str,
        summary: str,
        details: dict[str, Any],
        payload: dict[str, Any] | None,
        now: datetime,
    ) -> SpooledNotice:
        """Spool an opening notice. Raises OSError if the state dir cannot be written."""
        with self._lock:
            entries = self._read()
            entry = SpooledNotice(
                id=max((e.id for e in entries), default=0) + 1,
                subject=subject,
                kind=kind,
                event="open",
                payload=payload,
                details=details,
                summary=summary,
                created_at=now.isoformat(),
                status="pending" if payload is not None else "failed",
                next_attempt_at=now.isoformat(),
            )
            self._write([*entries, entry])
            return entry

    def due(self, now: datetime) -> list[SpooledNotice]:
        return [
            e
            for e in self.entries()
            if e.status == "pending" and datetime.fromisoformat(e.next_attempt_at) <= now
        ]

    def update(self, entry_id: int, **changes: Any) -> None:
        """Change one entry (status, attempts, sent_at, ...); a removed entry is ignored."""
        with self._lock:
            entries = self._read()
            self._write([replace(e, **changes) if e.id == entry_id else e for e in entries])

    def remove(self, entry_id: int) -> None:
        with self._lock:
            self._write([e for e in self._read() if e.id != entry_id])

    def _read(self) -> list[SpooledNotice]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("alert spool %s unreadable, starting it afresh: %s", self.path, exc)
            return []
        fields = SpooledNotice.__dataclass_fields__
        return [SpooledNotice(**{k: v for k, v in item.items() if k in fields}) for item in raw]

    def _write(self, entries: list[SpooledNotice]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as out:
            json.dump([asdict(e) for e in entries], out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
