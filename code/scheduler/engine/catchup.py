"""What to claim for a job's due slots, by its catch-up policy, and how not-run slots are explained.

Pure: the dispatcher decides which slots are due; this says what each becomes. A slot
later than MISFIRE_GRACE is no longer on time, and the job's `catchup` policy decides:
`latest` runs the newest, `all` runs every one in order (queued), `skip` runs none. The
slots not run are recorded `missed`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import NamedTuple

from scheduler.jobs.registry import JobSpec
from scheduler.store import Claim, Claimed

log = logging.getLogger("scheduler.engine.dispatcher")

# A slot this late is no longer "on time": catch-up policies decide about it.
MISFIRE_GRACE = timedelta(seconds=30)


class CatchupNote(NamedTuple):
    """A catch-up decision, logged once its claim is written (not at every retry of an outage)."""

    job: str
    missed: int
    cut: bool  # older slots than the catch-up limit were left out
    latest: datetime
    policy: str


def claims_for(
    spec: JobSpec, slots: list[datetime], now: datetime, cut: bool
) -> tuple[list[Claim], CatchupNote | None]:
    """The claims for a job's due `slots` (oldest first), and the note of a catch-up if it is one."""
    overlap = spec.overlap  # applied by the store, which sees the runs executing in the cluster
    latest = slots[-1]
    on_time = now - latest <= MISFIRE_GRACE
    if len(slots) == 1 and on_time:
        return [Claim(spec.name, latest, "schedule", "running", overlap)], None
    note = CatchupNote(spec.name, len(slots) - (1 if on_time else 0), cut, latest, spec.catchup)
    if spec.catchup == "all":
        first, rest = slots[0], slots[1:]
        return [Claim(spec.name, first, "catchup", "running", "queue")] + [
            Claim(spec.name, s, "catchup", "queued") for s in rest
        ], note
    missed = [Claim(spec.name, s, "catchup", "missed") for s in slots[:-1]]
    if spec.catchup == "latest" or on_time:
        trigger = "schedule" if on_time else "catchup"
        return missed + [Claim(spec.name, latest, trigger, "running", overlap)], note
    return missed + [Claim(spec.name, latest, "catchup", "missed")], note


def log_catchup(notes: list[CatchupNote]) -> None:
    for note in notes:
        log.info(
            "job %s: %d%s slots missed up to %s, catch-up policy %r",
            note.job,
            note.missed,
            "+" if note.cut else "",
            note.latest.isoformat(),
            note.policy,
            extra={"job": note.job, "action": "catchup"},
        )


def not_run_reason(claimed: Claimed) -> str:
    """Why a won slot is not started now, for its log line: only an overlap is 'still going'."""
    if claimed.trigger == "catchup":
        if claimed.status == "queued":
            return "queued to catch up after downtime"
        return "passed while the scheduler was not running (outside the catch-up policy)"
    if claimed.status in ("skipped", "queued"):
        return "previous run still going"
    return "not run"
