"""The dashboard's pages as served by the WSGI app: the jobs list's states, filter, sort and paging,
a job's page, a running run's page. The browser tests (tests/system/test_dashboard.py) check the
same pages laid out in chromium."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.jobs.registry import make_spec
from scheduler.operator.http import Api
from scheduler.store import Claim, Outcome, Owner, Store

from tests.support.wsgi import call

TOKEN = "t0ken"
OWNER = Owner("inst-a", "host-a", 4242)


def work() -> None:
    """A job function; never called here."""


def page(app: Api, path: str, query: str = "") -> str:
    status, headers, body = call(app, "GET", path, query=query)
    assert status == 200, body[:500]
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    return body.decode()


def listed(html: str) -> list[tuple[str, str]]:
    """(job, state) of each row of the jobs list, in order."""
    return re.findall(r'<tr data-job="([^"]+)" data-state="([^"]+)">', html)


def finish(store: Store, job: str, slot_ago: timedelta, status: str, clock: FakeClock) -> int:
    slot = clock.now() - slot_ago
    claimed = store.runs.claim([Claim(job, slot)], OWNER, slot, slot + timedelta(minutes=1))[0]
    if status == "running":  # begun, as the recorder writes it for a run still executing
        store.runs.mark_started([(claimed.run_id, claimed.fence, slot)])
    else:
        ended = slot + timedelta(seconds=2)
        store.runs.finish([Outcome(claimed.run_id, claimed.fence, status, ended, started_at=slot)])
    return claimed.run_id


@pytest.fixture
def app(store: Store, clock: FakeClock) -> Api:
    now = clock.now()
    specs = [
        make_spec(work, name=name, interval=timedelta(minutes=10)) for name in ("a.ok", "b.fails", "c.new")
    ]
    specs += [make_spec(work, name="d.paused", interval=timedelta(minutes=10))]
    specs += [make_spec(work, name="e.skips", interval=timedelta(minutes=1))]
    store.jobs.sync(specs, now - timedelta(hours=1))
    finish(store, "a.ok", timedelta(minutes=5), "succeeded", clock)
    finish(store, "b.fails", timedelta(minutes=5), "failed", clock)
    finish(store, "e.skips", timedelta(minutes=4), "running", clock)
    for minutes in (3, 2, 1):
        slot = clock.now() - timedelta(minutes=minutes)
        store.runs.claim([Claim("e.skips", slot, status="skipped")], OWNER, slot, slot)
    store.jobs.set_paused("d.paused", True, "ops@host", now)
    return Api(store, Health(clock), clock, TOKEN, live_log=lambda run_id: f"line of run {run_id}\n")


def test_each_job_shows_its_state_and_the_filter_keeps_those_asked_for(app: Api) -> None:
    html = page(app, "/")
    assert listed(html) == [
        ("a.ok", "active"),
        ("b.fails", "failing"),
        ("c.new", "never-run"),
        ("d.paused", "paused"),
        ("e.skips", "skipping"),
    ]
    assert listed(page(app, "/", "state=failing")) == [("b.fails", "failing")]
    assert listed(page(app, "/", "state=skipping")) == [("e.skips", "skipping")]
    assert listed(page(app, "/", "state=never-run")) == [("c.new", "never-run")]
    assert listed(page(app, "/", "state=paused&q=PAUSED")) == [("d.paused", "paused")]
    assert listed(page(app, "/", "q=.ok")) == [("a.ok", "active")]
    empty = page(app, "/", "q=nothing-like-it")
    assert listed(empty) == [] and 'id="no-match"' in empty


def test_a_job_whose_slot_is_past_its_grace_is_late(app: Api, clock: FakeClock) -> None:
    clock.advance(timedelta(minutes=20))  # a.ok's next slot (5 min after its last) is 15 min past
    states = dict(listed(page(app, "/")))
    assert states["a.ok"] == "late"
    assert states["b.fails"] == "failing"  # failing outranks late


def test_sorting_by_status_puts_the_worst_first(app: Api) -> None:
    names = [name for name, _ in listed(page(app, "/", "sort=status"))]
    assert names == ["b.fails", "e.skips", "c.new", "d.paused", "a.ok"]


def test_the_jobs_list_shows_fifty_jobs_a_page_with_links_to_the_others(
    store: Store, clock: FakeClock
) -> None:
    specs = [make_spec(work, name=f"bulk.job{i:03d}", interval=timedelta(minutes=5)) for i in range(120)]
    store.jobs.sync(specs, clock.now())
    app = Api(store, Health(clock), clock)
    first = page(app, "/")
    assert [name for name, _ in listed(first)] == [f"bulk.job{i:03d}" for i in range(50)]
    assert "1-50 of 120 · page 1 of 3" in first and 'href="/?page=2"' in first
    last = page(app, "/", "page=3")
    assert [name for name, _ in listed(last)] == [f"bulk.job{i:03d}" for i in range(100, 120)]
    assert 'rel="prev"' in last and 'rel="next"' not in last
    beyond = page(app, "/", "page=99")  # past the end: the last page
    assert listed(beyond) == listed(last)


def test_the_list_strip_has_a_cell_per_recent_run_oldest_first(app: Api, store: Store) -> None:
    html = page(app, "/", "q=e.skips")
    cells = re.findall(r'data-run="(\d+)" data-status="(\w+)"', html)
    ids = [r.id for r in sorted(store.runs.history("e.skips"), key=lambda r: r.scheduled_for)]
    assert [int(i) for i, _ in cells] == ids
    assert [s for _, s in cells] == ["running", "skipped", "skipped", "skipped"]


def test_a_job_page_has_its_slots_runs_chart_incidents_audit_and_buttons(
    app: Api, store: Store, clock: FakeClock
) -> None:
    store.incidents.open_incident("b.fails", "failing", "b.fails <b>failed</b>", {}, clock.now(), None)
    html = page(app, "/jobs/b.fails")
    assert len(re.findall(r"<li>", html.split('id="next-slots"')[1].split("</ol>")[0])) == 5
    assert re.findall(r'data-status="(\w+)"', html) == ["failed"]
    assert '<svg class="chart" id="durations"' in html and "<rect" in html
    assert "b.fails &lt;b&gt;failed&lt;/b&gt;" in html
    assert 'data-action="trigger" data-job="b.fails"' in html and 'data-action="pause"' in html
    paused = page(app, "/jobs/d.paused")
    assert "ops@host" in paused and 'data-action="resume"' in paused and 'id="next-slots"' not in paused
    skipping = page(app, "/jobs/e.skips")
    assert 'id="skipping"' in skipping and "3 of the last 4 slots were skipped" in skipping
    status, _, body = call(app, "GET", "/jobs/nope")
    assert status == 404 and b"no job named 'nope'" in body


def isolation_badges(html: str) -> list[str]:
    """The jobs whose row (or page heading) carries the "process" isolation badge."""
    rows = re.findall(r'<tr data-job="([^"]+)"(.*?)</tr>', html, re.S)
    return [name for name, row in rows if 'class="badge info isolation"' in row]


def test_the_jobs_list_and_job_page_mark_the_jobs_whose_runs_go_to_a_child_process(
    store: Store, clock: FakeClock
) -> None:
    every = timedelta(minutes=10)
    specs = [
        make_spec(work, name="p.own", interval=every, isolation="process"),
        make_spec(work, name="t.own", interval=every, isolation="thread"),
        make_spec(work, name="u.default", interval=every),
    ]
    store.jobs.sync(specs, clock.now())
    threads = Api(store, Health(clock), clock)
    assert isolation_badges(page(threads, "/")) == ["p.own"]
    processes = Api(store, Health(clock), clock, default_isolation="process")
    assert isolation_badges(page(processes, "/")) == ["p.own", "u.default"]
    assert 'class="badge info isolation"' in page(threads, "/jobs/p.own")
    assert 'class="badge info isolation"' not in page(threads, "/jobs/u.default")
    assert 'class="badge info isolation"' in page(processes, "/jobs/u.default")
    assert 'class="badge info isolation"' not in page(processes, "/jobs/t.own")


def test_a_running_run_page_shows_elapsed_time_and_the_live_log_tail(
    app: Api, store: Store, clock: FakeClock
) -> None:
    running = [r for r in store.runs.history("e.skips") if r.status == "running"][0]
    clock.advance(timedelta(seconds=30))
    html = page(app, f"/runs/{running.id}")
    assert '<span id="elapsed">4m 30s so far</span>' in html
    assert f'data-live="1">line of run {running.id}\n</pre>' in html
    done = [r for r in store.runs.history("a.ok")][0]
    assert "data-live" not in page(app, f"/runs/{done.id}")
