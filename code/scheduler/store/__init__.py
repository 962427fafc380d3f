"""The database: the only package that imports SQLAlchemy.

`Store` bundles one `Database` (engine, transactions, migrations) with the
repositories that hold every query: jobs, runs, cluster, incidents, outbox, run facts.

The names below are imported on first use, so that `scheduler.store.reads` and
`scheduler.store.lite` (the CLI's read commands on SQLite) load without SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.store.bundle import Store
    from scheduler.store.claims import Claim, Claimed, Owner
    from scheduler.store.cluster import ClusterRepository, InstanceRow, LeaseRow
    from scheduler.store.db import Database
    from scheduler.store.history import RunBrief
    from scheduler.store.jobs import AuditEntry
    from scheduler.store.reads import FINAL_STATUSES, RUN_STATUSES, JobRow, RunRow
    from scheduler.store.runs import Outcome

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

_HOME = {
    "AuditEntry": "jobs",
    "Claim": "claims",
    "Claimed": "claims",
    "ClusterRepository": "cluster",
    "Database": "db",
    "FINAL_STATUSES": "reads",
    "InstanceRow": "cluster",
    "JobRow": "reads",
    "LeaseRow": "cluster",
    "Outcome": "runs",
    "Owner": "claims",
    "RUN_STATUSES": "reads",
    "RunBrief": "history",
    "RunRow": "reads",
    "Store": "bundle",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:  # a submodule's name: `from scheduler.store import bulk` imports it
        raise AttributeError(f"module 'scheduler.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"scheduler.store.{home}"), name)
    globals()[name] = value
    return value
