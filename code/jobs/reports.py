"""Example: a daily cron job in a time zone, and a flaky job that retries."""

import random
from datetime import timedelta

from scheduler import JobContext, job


@job(cron="0 6 * * *", timezone="Europe/London", timeout=timedelta(minutes=10))
def daily_summary(ctx: JobContext) -> None:
    """06:00 London time every day, summer or winter."""
    ctx.log.info("building the daily summary for %s", ctx.scheduled_for.date())


@job(interval=timedelta(seconds=30), retries=2, retry_delay=timedelta(seconds=2))
def flaky_sync(ctx: JobContext) -> None:
    """Fails now and then, like a call to a remote API; retried twice."""
    if random.random() < 0.3:
        raise ConnectionError("upstream API timed out")
    print(f"synced on attempt {ctx.attempt}")
