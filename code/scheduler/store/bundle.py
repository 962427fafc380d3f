"""`Store`: one `Database` (engine, transactions, migrations) with the repositories that hold every query."""

from __future__ import annotations

from scheduler.store.cluster import ClusterRepository
from scheduler.store.db import Database
from scheduler.store.incidents import IncidentRepository
from scheduler.store.jobs import JobRepository
from scheduler.store.outbox import OutboxRepository
from scheduler.store.runfacts import RunFactsRepository
from scheduler.store.runs import RunRepository


class Store:
    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.jobs = JobRepository(self.db)
        self.runs = RunRepository(self.db)
        self.cluster = ClusterRepository(self.db)
        self.incidents = IncidentRepository(self.db)
        self.outbox = OutboxRepository(self.db)
        self.runfacts = RunFactsRepository(self.db)

    @property
    def safe_url(self) -> str:
        return self.db.safe_url

    @property
    def is_sqlite(self) -> bool:
        return self.db.is_sqlite

    def current_revision(self) -> str | None:
        return self.db.current_revision()

    def upgrade(self) -> None:
        self.db.upgrade()

    def dispose(self) -> None:
        self.db.dispose()
