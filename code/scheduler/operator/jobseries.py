"""The per-job metric families: five series per job, rendered from lines cached per job.

At 10,000 jobs these are 40,000 samples, and formatting each one through
prometheus_client costs several times the whole scrape's budget; between two
scrapes, most jobs' values have not changed. So each job has a block: the
inputs its values come from (its job row, its latest run times, this
instance's counts of its ended runs) and its lines, one per family, built
again only when an input differs from the previous render's.

The families' HELP and TYPE lines are prometheus_client's own (rendered once,
from empty families). A sample line is what prometheus_client writes for a
`job`-labelled sample: `name{job="..."} value`, the label value escaped and
the value formatted by its `floatToGoString`. A test holds the whole text to
prometheus_client's rendering of the same samples.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from scheduler.jobs import effective
from scheduler.store.history import LatestTimes
from scheduler.store.reads import JobRow

FAILED = frozenset({"failed", "timed_out", "abandoned"})


@dataclass(frozen=True)
class Family:
    name: str  # without a counter's `_total`
    kind: str  # "counter" (this instance's counts) or "gauge" (read from the database)
    text: str

    def empty(self) -> Metric:
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return kind(self.name, self.text, labels=["job"])


# In exposition order; a block's lines are in this order too.
FAMILIES = (
    Family("scheduler_job_runs", "counter", "Runs finished by this instance, by job."),
    Family(
        "scheduler_job_failures",
        "counter",
        "Runs finished by this instance as failed, timed_out or abandoned, by job.",
    ),
    Family(
        "scheduler_job_next_run_timestamp_seconds", "gauge", "When each active job runs next (Unix time)."
    ),
    Family(
        "scheduler_job_last_run_timestamp_seconds",
        "gauge",
        "When each job's latest run ended, on any instance (Unix time).",
    ),
    Family(
        "scheduler_job_last_success_timestamp_seconds",
        "gauge",
        "When each job's latest successful run ended, on any instance (Unix time).",
    ),
)


class Families:
    """A fixed list of families, as the collector `generate_latest` takes."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


@dataclass(frozen=True)
class Block:
    inputs: tuple[Any, ...]
    lines: tuple[str, ...]  # one per family, "" where the job has no sample


class JobSeries:
    """This instance's per-job run counts, and the per-job families' text."""

    def __init__(self) -> None:
        self._headers = [generate_latest(Families([f.empty()])).decode() for f in FAMILIES]
        self._samples = [f.name + ("_total" if f.kind == "counter" else "") for f in FAMILIES]
        self._counts: dict[str, tuple[int, int]] = {}  # job -> (runs, failures)
        self._counts_lock = threading.Lock()  # counted off the pool threads, read by a scrape
        self._blocks: dict[str, Block] = {}  # touched by `render` only, which callers serialise

    def count(self, ended: dict[tuple[str, str], int]) -> None:
        """Add runs ended here, counted by (job, final status)."""
        with self._counts_lock:
            for (job, status), n in ended.items():
                runs, failures = self._counts.get(job, (0, 0))
                self._counts[job] = (runs + n, failures + (n if status in FAILED else 0))

    def block(self, name: str) -> Block | None:
        """The job's block as of the last render."""
        return self._blocks.get(name)

    def render(self, rows: list[JobRow] | None, times: dict[str, LatestTimes], now: datetime) -> str:
        """The families' text; without `rows` (the database did not answer) the counters only.

        Not thread-safe: one render at a time.
        """
        with self._counts_lock:
            counts = dict(self._counts)
        by_name = {r.name: r for r in rows or ()}
        blocks: dict[str, Block] = {}
        for name in sorted(by_name.keys() | times.keys() | counts.keys()):
            row, latest = by_name.get(name), times.get(name)
            # next_run_at reads `now` only through the change time (a change stamped ahead of now).
            changed = effective.change_time(row, now) if row is not None else None
            inputs = (row, latest, counts.get(name), changed)
            block = self._blocks.get(name)
            if block is None or block.inputs != inputs:
                block = Block(inputs, self._lines(name, row, latest, counts.get(name), now))
            blocks[name] = block
        self._blocks = blocks
        text = []
        for i, family in enumerate(FAMILIES):
            if family.kind == "gauge" and rows is None:
                continue
            text.append(self._headers[i])
            text.extend(b.lines[i] for b in blocks.values())
        return "".join(text)

    def _lines(
        self,
        name: str,
        row: JobRow | None,
        latest: LatestTimes | None,
        counts: tuple[int, int] | None,
        now: datetime,
    ) -> tuple[str, ...]:
        next_at = effective.next_run_at(row, latest.slot_at if latest else None, now) if row else None
        ended = latest.ended_at if latest else None
        succeeded = latest.succeeded_at if latest else None
        runs, failures = counts or (0, 0)
        values = (
            runs or None,  # a counter's series appears with its first count
            failures or None,
            next_at.timestamp() if next_at else None,
            ended.timestamp() if ended else None,
            succeeded.timestamp() if succeeded else None,
        )
        label = '{job="' + name.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"") + '"} '
        return tuple(
            "" if value is None else f"{sample}{label}{floatToGoString(value)}\n"  # type: ignore[no-untyped-call]
            for sample, value in zip(self._samples, values, strict=True)
        )
