"""scheduler: a job-scheduler daemon with run records in SQLite or PostgreSQL.

Declare jobs in modules under `code/jobs/`:

    from datetime import timedelta
    from scheduler import job

    @job(interval=timedelta(seconds=30))
    def refresh_cache(ctx): ...
"""

from __future__ import annotations

__version__ = "1.0.0"

from scheduler.engine.runner import JobContext
from scheduler.jobs.registry import JobSpec, job

__all__ = ["JobContext", "JobSpec", "__version__", "job"]
