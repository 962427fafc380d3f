"""The database: the only package that imports SQLAlchemy.

`Store` bundles one `Database` (engine, transactions, migrations) with the
repositories that hold every query: jobs, runs, cluster, incidents, outbox, run facts.
"""

from __future__ import annotations

from scheduler.store.claims import Claim, Claimed, Owner
from scheduler.store.cluster import ClusterRepository, InstanceRow, LeaseRow
from scheduler.store.db import Database
from scheduler.store.history import RunBrief, RunRow
from scheduler.store.incidents import IncidentRepository
from scheduler.store.jobs import AuditEntry, JobRepository, JobRow
from scheduler.store.outbox import OutboxRepository
from scheduler.store.runfacts import RunFactsRepository
from scheduler.store.runs import Outcome, RunRepository
from scheduler.store.schema import FINAL_STATUSES, RUN_STATUSES

__all__ = [
    "AuditEntry",
    "Claim",
    "Claimed",
    "ClusterRepository",
    "Database",
    "FINAL_STATUSES",
    "InstanceRow",
    "JobRow",
    "LeaseRow",
    "Outcome",
    "Owner",
    "RUN_STATUSES",
    "RunBrief",
    "RunRow",
    "Store",
]


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

    def upgrade(self) -> None:
        self.db.upgrade()

    def dispose(self) -> None:
        self.db.dispose()
