"""Example: an interval job that takes the run context and logs through it."""

from datetime import timedelta

from scheduler import JobContext, job


@job(interval=timedelta(seconds=10), timeout=timedelta(seconds=30))
def ping(ctx: JobContext) -> None:
    """Every 10 s: a sign of life, stored with the run's log."""
    lateness = ctx.scheduled_for.isoformat()
    ctx.log.info("alive; slot %s, attempt %d", lateness, ctx.attempt)
