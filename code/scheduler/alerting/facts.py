"""The watchdog's run facts, kept current from what changed since the last pass.

The first pass (and a resync every `RESYNC_EVERY`) reads each job's newest
rows. Later passes read only the changed rows (`RunFactsRepository.changed`):
the rows past the id watermark, and the rows that were still queued, running
or abandoned (they may be retried) when last seen. The id watermark lags one
pass behind, because on PostgreSQL a row with a smaller id can commit after a
bigger one was read; rows read twice are applied twice to the same effect.
A pass at 10,000 quiet jobs reads next to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from scheduler.store import JobRow, Store
from scheduler.store.history import RunRow
from scheduler.store.runfacts import CHANGED_LIMIT, OUTCOMES, Activity

RESYNC_EVERY = timedelta(minutes=10)
UNSETTLED = ("queued", "running")
ABANDONED_PASSES = 3  # an abandoned run is watched this many passes: the reaper may requeue it
WATCH_UNSETTLED = 1_000_000  # a queued or running run is watched until it settles


@dataclass
class _Job:
    last_started: datetime | None = None
    outcomes: list[RunRow] = field(default_factory=list)  # newest slot first
    skipped: int = 0
    newest: datetime | None = None
    failures: int = 0  # failed or timed-out outcomes in a row, counted as runs end
    failures_at_least: bool = False  # the full read hit its depth: the streak may be longer
    last_success: datetime | None = None  # the slot of the newest succeeded run known


class RunFacts:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: dict[str, _Job] = {}
        self._depth = 0
        self._mark = 0  # every row up to this id was read at the last pass
        self._lagging_mark = 0  # ... and at the pass before: where the next read starts
        self._watched: dict[int, int] = {}  # run id -> passes left to re-read it
        self._synced_at: datetime | None = None
        self.rows_read = 0  # by the last pass, for the watchdog's sentence

    def refresh(self, names: list[str], depth: int, now: datetime) -> Activity:
        """The facts of `names` now, reading what changed. Raises StoreUnavailable."""
        resync = self._synced_at is None or now - self._synced_at >= RESYNC_EVERY or depth > self._depth
        changed: list[RunRow] = []
        if resync:
            self._jobs.clear()
            # Read before the full read: a row committed during it is read again at the next pass.
            self._mark = self._lagging_mark = max(self._mark, self.store.runfacts.max_id())
            self._synced_at, self._depth = now, depth
        else:
            start, self._lagging_mark = self._lagging_mark, self._mark
            changed = self.store.runfacts.changed(start, list(self._watched))
            if sum(r.id > start for r in changed) >= CHANGED_LIMIT:
                self._lagging_mark = max(r.id for r in changed)  # a backlog: move on, no overlap
        missing = [n for n in names if n not in self._jobs]
        if missing:
            self._load(missing)
        self._apply(changed)
        self.rows_read = len(changed)
        return self._activity(names)

    def _load(self, names: list[str]) -> None:
        full = self.store.runfacts.activity(names, self._depth)
        for name in names:
            self._jobs[name] = _Job(
                full.last_started.get(name),
                full.outcomes.get(name, []),
                full.skipped.get(name, 0),
                full.newest.get(name),
                full.failures.get(name, 0),
                name in full.failures_at_least,
                next((r.scheduled_for for r in full.outcomes.get(name, []) if r.status == "succeeded"), None),
            )
        for run in full.running:
            self._watched.setdefault(run.id, WATCH_UNSETTLED)

    def _apply(self, rows: list[RunRow]) -> None:
        for watched in list(self._watched):
            self._watched[watched] -= 1
            if self._watched[watched] <= 0:
                del self._watched[watched]
        for run in sorted(rows, key=lambda r: (r.job, r.scheduled_for, r.id)):
            self._mark = max(self._mark, run.id)
            if run.status in UNSETTLED:
                self._watched[run.id] = WATCH_UNSETTLED
            elif run.status == "abandoned":
                self._watched[run.id] = ABANDONED_PASSES
            else:
                self._watched.pop(run.id, None)
            job = self._jobs.get(run.job)
            if job is not None:
                _fold(job, run, self._depth)

    def _activity(self, names: list[str]) -> Activity:
        activity = Activity()
        for name in names:
            job = self._jobs[name]
            if job.last_started is not None:
                activity.last_started[name] = job.last_started
            activity.outcomes[name] = list(job.outcomes)
            activity.skipped[name] = job.skipped
            if job.newest is not None:
                activity.newest[name] = job.newest
            activity.failures[name] = job.failures
            if job.failures_at_least:
                activity.failures_at_least.add(name)
        activity.running.extend(self.store.runfacts.running())
        return activity


class JobRows:
    """The job rows, kept current from the rows changed since the last pass.

    An unchanged job keeps its row object, so per-job answers can be kept by
    identity (`findings.LatenessMemo`). Read afresh every `RESYNC_EVERY`.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._rows: dict[str, JobRow] = {}
        self._since: datetime | None = None
        self._synced_at: datetime | None = None

    def refresh(self, now: datetime) -> list[JobRow]:
        """Raises StoreUnavailable."""
        if self._since is None or self._synced_at is None or now - self._synced_at >= RESYNC_EVERY:
            self._rows = {r.name: r for r in self.store.jobs.all()}
            self._synced_at = now
        else:
            for row in self.store.jobs.changed_since(self._since):
                old = self._rows.get(row.name)
                if old is None or old != row:
                    self._rows[row.name] = row
        self._since = now
        return list(self._rows.values())


def _fold(job: _Job, run: RunRow, depth: int) -> None:
    """Apply one (new or changed) row to a job's facts; applying it twice changes nothing."""
    if run.started_at is not None and (job.last_started is None or run.started_at > job.last_started):
        job.last_started = run.started_at
    known = {r.id: r.status for r in job.outcomes}
    kept = [r for r in job.outcomes if r.id != run.id]
    if run.status in OUTCOMES:
        kept.append(run)
        kept.sort(key=lambda r: r.scheduled_for, reverse=True)
    if run.status in OUTCOMES and known.get(run.id) != run.status:
        after_success = job.last_success is None or run.scheduled_for > job.last_success
        if run.status != "succeeded" and after_success:
            job.failures += 1  # the streak is the failed outcomes after the newest success
        elif run.status == "succeeded" and after_success:
            job.last_success = run.scheduled_for
            job.failures = sum(r.status != "succeeded" and r.scheduled_for > run.scheduled_for for r in kept)
            job.failures_at_least = False
    job.outcomes = kept[:depth]
    if job.newest is None or run.scheduled_for > job.newest:
        job.newest = run.scheduled_for
        job.skipped = job.skipped + 1 if run.status == "skipped" else 0
