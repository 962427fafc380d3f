"""scheduler: a job-scheduler daemon with run records in SQLite or PostgreSQL.

Declare jobs in modules under `code/jobs/`:

    from datetime import timedelta
    from scheduler import job

    @job(interval=timedelta(seconds=30))
    def refresh_cache(ctx): ...

`job`, `JobSpec` and `JobContext` are imported on first use, so `control.py
status` (which needs only the pidfile) does not load the runner or the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "1.0.0"

if TYPE_CHECKING:
    from scheduler.engine.context import JobContext
    from scheduler.jobs.registry import JobSpec, job

__all__ = ["JobContext", "JobSpec", "__version__", "job"]

_LAZY = {
    "JobContext": "scheduler.engine.context",
    "JobSpec": "scheduler.jobs.registry",
    "job": "scheduler.jobs.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
