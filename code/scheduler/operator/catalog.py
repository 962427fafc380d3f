"""Every job row, kept between reads by the dashboard's list and the metrics scrape.

Reading and decoding 10,000 job rows costs most of a scrape or a page. After
the first full read, a refresh reads only the rows updated since the last one
(`JobRepository.changed_since`, whose overlap absorbs commits that land out of
timestamp order, as the dispatcher relies on; of the rows in that overlap, only
those whose stamp differs from the kept row's), plus a count that catches a row
removed behind its back, in which case it reads everything again.
"""

from __future__ import annotations

import threading
from datetime import datetime

from scheduler.clock import Clock
from scheduler.store import JobRow, Store


class JobCatalog:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._rows: dict[str, JobRow] | None = None
        self._since: datetime | None = None
        self._lock = threading.Lock()

    def rows(self) -> list[JobRow]:
        """Every job row, by name. Raises StoreUnavailable (the cache stays as it was)."""
        with self._lock:
            started = self.clock.now()
            if self._rows is None or self._since is None:
                rows = {r.name: r for r in self.store.jobs.all()}
            else:
                rows = dict(self._rows)
                rows.update((r.name, r) for r in self.store.jobs.changed_since(self._since, self._rows))
                if len(rows) != self.store.jobs.count():
                    rows = {r.name: r for r in self.store.jobs.all()}
            self._rows, self._since = rows, started
            return [rows[name] for name in sorted(rows)]
