"""The job rows kept between dashboard pages and scrapes follow every change in the database."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from scheduler.clock import FakeClock
from scheduler.jobs.effective import schedule_of
from scheduler.jobs.registry import make_spec
from scheduler.operator.catalog import JobCatalog
from scheduler.store import Store
from scheduler.store.schema import jobs


def work() -> None:
    """A job function; never called here."""


def test_the_catalog_sees_new_paused_rescheduled_and_removed_jobs(store: Store, clock: FakeClock) -> None:
    store.jobs.sync(
        [make_spec(work, name=n, interval=timedelta(minutes=5)) for n in ("a.one", "b.two")], clock.now()
    )
    catalog = JobCatalog(store, clock)
    assert [(r.name, r.paused) for r in catalog.rows()] == [("a.one", False), ("b.two", False)]

    clock.advance(timedelta(minutes=1))
    store.jobs.set_paused("b.two", True, "ops", clock.now())  # another process, as far as the catalog knows
    store.jobs.set_schedule("a.one", "ops", clock.now(), interval=timedelta(minutes=7))
    clock.advance(timedelta(minutes=1))
    rows = {r.name: r for r in catalog.rows()}
    assert rows["b.two"].paused and schedule_of(rows["a.one"]).describe() == "every 7m"

    clock.advance(timedelta(minutes=1))
    store.jobs.sync([make_spec(work, name="c.three", interval=timedelta(minutes=5))], clock.now())
    assert [r.name for r in catalog.rows()] == ["a.one", "b.two", "c.three"]

    with store.db.write() as conn:
        conn.execute(sa.delete(jobs).where(jobs.c.name == "a.one"))
    assert [r.name for r in catalog.rows()] == ["b.two", "c.three"]
