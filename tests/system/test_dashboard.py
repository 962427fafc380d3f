"""The dashboard in a real browser: a daemon serving HTTP, headless chromium driven over DevTools.

One daemon and one browser serve every test of this module. The viewport is
set with Emulation.setDeviceMetricsOverride (1280x900 desktop, 390x844 phone)
and each test waits until the page has laid out at that width before it
measures or takes a screenshot, so a screenshot never comes from a page with
no size. Clicks are real mouse events at the buttons' positions; the tests
poll the page's DOM (with a deadline). Screenshots go to docs/ (dashboard.png
is the README's). Without chromium the tests skip loudly, except under
CI=true, where they fail.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.support.ports import free_port
from tests.support.required import missing
from tests.support.sandbox import REPO, Sandbox, query, wait_until

pytestmark = pytest.mark.system

CHROMIUM = Path("/usr/bin/chromium")
DOCS = REPO / "docs"
TOKEN = "dashboard-test-token"
DESKTOP = (1280, 900)
PHONE = (390, 844)
JOBS = """
import time
from datetime import timedelta
from scheduler import job


@job(interval=timedelta(hours=1))
def report(ctx):
    ctx.log.info("report built for slot %s", ctx.scheduled_for.isoformat())


@job(interval=timedelta(hours=6), retries=0)
def sync_crm(ctx):
    raise ConnectionError("CRM API answered 502 Bad Gateway")


@job(cron="0 6 * * 1-5", timezone="Europe/Paris")
def morning_digest(ctx):
    ctx.log.info("digest sent")


@job(interval=timedelta(seconds=1))
def slow_export(ctx):
    # far longer than its period: every slot while it runs is skipped
    for step in range(600):
        if ctx.stopping:
            return
        ctx.log.info("exported batch %d", step)
        time.sleep(0.2)
"""


class DevTools:
    """A minimal Chrome DevTools Protocol client on one page target."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=15, suppress_origin=True)
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
        raise AssertionError(f"no answer to {method} within 15s")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real left click at the centre of the element (scrolled into view first)."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2, disabled: !!e.disabled}; })()"
        )
        assert box is not None, f"no element {selector}"
        assert not box["disabled"], f"{selector} is disabled"
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1
            )

    def viewport(self, size: tuple[int, int]) -> None:
        """Emulate a screen of `size` CSS pixels (a phone, with touch and the viewport meta, below 500)."""
        width, height = size
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 500,
        )

    def open(self, url: str, ready: str, size: tuple[int, int]) -> None:
        """Navigate at `size` and wait until `ready` (a JS expression) holds on a laid-out page."""
        self.viewport(size)
        self.call("Page.navigate", url=url)
        laid_out = (
            f"document.readyState === 'complete' && window.innerWidth === {size[0]}"
            " && document.documentElement.getBoundingClientRect().width > 0"
        )
        wait_until(lambda: self.evaluate(f"({laid_out}) && !!({ready})"), timeout=20)
        # one more frame, so the screenshot sees the painted layout
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")

    def screenshot(self, name: str) -> bytes:
        width = self.evaluate("document.documentElement.scrollWidth")
        height = self.evaluate("Math.max(document.documentElement.scrollHeight, window.innerHeight)")
        assert width > 0 and height > 0
        shot = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": min(height, 4000), "scale": 1},
        )
        png = base64.b64decode(shot["data"])
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
        DOCS.mkdir(exist_ok=True)
        (DOCS / name).write_bytes(png)
        return png

    def horizontal_overflow(self) -> int:
        """How many CSS pixels the page is wider than the viewport (0: no sideways scroll)."""
        return int(self.evaluate("document.documentElement.scrollWidth - window.innerWidth"))

    def texts(self, selector: str, attribute: str | None = None) -> list[Any]:
        pick = f"e.getAttribute({json.dumps(attribute)})" if attribute else "e.textContent"
        return list(self.evaluate(f"[...document.querySelectorAll({json.dumps(selector)})].map(e => {pick})"))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    if not CHROMIUM.exists():
        missing("dashboard browser test", f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    tmp_path = tmp_path_factory.mktemp("chromium")
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,900",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "chromium.log").open("wb"),
        start_new_session=True,  # its own process group: teardown ends chromium's helpers too
    )
    try:
        active = profile / "DevToolsActivePort"
        wait_until(lambda: active.exists() and len(active.read_text().splitlines()) >= 2, timeout=30)
        port = int(active.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        try:
            yield tools
        finally:
            tools.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, str]]:
    """One daemon with the jobs above, serving HTTP with a token; its interval jobs have run once."""
    sandbox = Sandbox(tmp_path_factory.mktemp("box"))
    try:
        sandbox.write_job("reports", JOBS)
        port = free_port()
        sandbox.daemon(http_enabled="true", http_port=str(port), api_token=TOKEN, grace_period="1s")
        wait_until(
            lambda: (
                {r.job for r in sandbox.runs() if r.status in ("succeeded", "failed")}
                >= {"reports.report", "reports.sync_crm"}
            ),
            timeout=30,
        )
        yield sandbox, f"http://127.0.0.1:{port}"
    finally:
        sandbox.close()


def test_trigger_from_the_dashboard_runs_the_job_and_the_run_shows_up(
    served: tuple[Sandbox, str], chromium: DevTools
) -> None:
    box, base = served
    chromium.call("Page.enable")
    chromium.open(base + "/", "document.querySelector('#jobs')", DESKTOP)
    names = chromium.texts("#jobs tr[data-job]", "data-job")
    assert names == ["reports.morning_digest", "reports.report", "reports.slow_export", "reports.sync_crm"]

    # the token, typed into the page once, is kept in this tab's sessionStorage
    chromium.evaluate("document.getElementById('token').focus()")
    chromium.call("Input.insertText", text=TOKEN)
    chromium.click("#token-save")
    wait_until(
        lambda: (
            chromium.evaluate("document.getElementById('token-state').textContent")
            == "token set for this tab"
        )
    )
    assert chromium.evaluate(f"sessionStorage.getItem('scheduler.apiToken') === {json.dumps(TOKEN)}")
    assert chromium.evaluate("document.getElementById('token').value") == ""

    manual = (
        "[...document.querySelectorAll('#runs tr[data-job=\"reports.report\"]')]"
        ".filter(r => r.cells[3].textContent === 'manual')"
    )
    assert chromium.evaluate(manual + ".length") == 0
    chromium.click('button[data-action="trigger"][data-job="reports.report"]')
    wait_until(
        lambda: (chromium.evaluate("document.getElementById('flash').textContent") or "").startswith(
            "queued"
        ),
        timeout=10,
    )
    text = chromium.evaluate("document.getElementById('flash').textContent")
    run_id = int(text.rsplit("#", 1)[1].rstrip(")"))
    assert text == f"queued a run of reports.report (run #{run_id})"

    # the page refreshes itself: the manual run appears with its final status
    row = f"document.querySelector('#runs tr[data-run=\"{run_id}\"]')"
    wait_until(
        lambda: chromium.evaluate(f"{row} ? {row}.cells[4].textContent : ''") == "succeeded", timeout=20
    )
    assert chromium.evaluate(f"{row}.cells[3].textContent") == "manual"
    stored = query(box.db_url, "SELECT job, trigger, status FROM runs WHERE id = :id", id=run_id)
    assert stored == [{"job": "reports.report", "trigger": "manual", "status": "succeeded"}]
    actors = query(box.db_url, "SELECT actor, action FROM audit WHERE job = 'reports.report'")
    assert actors == [{"actor": "api:127.0.0.1", "action": "trigger"}]

    # the run's page shows its captured log
    chromium.open(f"{base}/runs/{run_id}", "document.getElementById('run-log')", DESKTOP)
    assert "report built for slot" in chromium.evaluate("document.getElementById('run-log').textContent")
    chromium.open(base + "/", f"!!{row}", DESKTOP)
    chromium.screenshot("dashboard.png")


def test_the_filter_keeps_the_jobs_matching_the_name_and_the_state(
    served: tuple[Sandbox, str], chromium: DevTools
) -> None:
    _box, base = served
    chromium.open(base + "/", "document.querySelector('#filter-text')", DESKTOP)
    chromium.evaluate("document.getElementById('filter-text').focus()")
    chromium.call("Input.insertText", text="sync")
    # the page submits the form after a pause in typing
    wait_until(lambda: chromium.evaluate("location.search").startswith("?q=sync"), timeout=10)
    chromium.open(base + "/?q=sync", "document.querySelector('#jobs')", DESKTOP)
    assert chromium.texts("#jobs tr[data-job]", "data-job") == ["reports.sync_crm"]

    chromium.open(base + "/", "document.querySelector('#filter-state')", DESKTOP)
    chromium.evaluate(
        "(() => { const s = document.getElementById('filter-state'); s.value = 'failing';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    wait_until(lambda: "state=failing" in chromium.evaluate("location.search"), timeout=10)
    wait_until(
        lambda: chromium.evaluate("document.readyState === 'complete' && !!document.querySelector('#jobs')")
    )
    assert chromium.texts("#jobs tr[data-job]", "data-job") == ["reports.sync_crm"]
    assert chromium.texts("#jobs tr[data-job]", "data-state") == ["failing"]

    chromium.open(base + "/?q=no-such-job", "document.querySelector('#no-match')", DESKTOP)
    assert chromium.texts("#jobs tr[data-job]") == []


def test_a_job_that_keeps_skipping_is_flagged_on_the_list_and_its_page(
    served: tuple[Sandbox, str], chromium: DevTools
) -> None:
    box, base = served
    wait_until(lambda: len([r for r in box.runs("reports.slow_export") if r.status == "skipped"]) >= 4, 30)
    chromium.open(base + "/?state=skipping", "document.querySelector('#jobs')", DESKTOP)
    assert chromium.texts("#jobs tr[data-job]", "data-job") == ["reports.slow_export"]
    assert chromium.texts("#jobs tr[data-job]", "data-state") == ["skipping"]
    chromium.open(base + "/jobs/reports.slow_export", "document.querySelector('#skipping')", DESKTOP)
    assert "were skipped" in chromium.evaluate("document.getElementById('skipping').textContent")


def test_the_job_page_strip_matches_the_runs_in_the_database(
    served: tuple[Sandbox, str], chromium: DevTools
) -> None:
    box, base = served
    chromium.open(base + "/jobs/reports.slow_export", "document.querySelector('#history .strip')", DESKTOP)
    shown = chromium.evaluate(
        "[...document.querySelectorAll('#history .strip .cell')].map(c => [+c.dataset.run, c.dataset.status])"
    )
    stored = query(
        box.db_url,
        "SELECT id, status FROM runs WHERE job = 'reports.slow_export'"
        " ORDER BY scheduled_for DESC, id DESC LIMIT 50",
    )
    # the page may have been rendered a moment before the query: compare the runs both saw
    expected = [[r["id"], r["status"]] for r in reversed(stored)]
    newest_shown = shown[-1][0]
    assert shown == [pair for pair in expected if pair[0] <= newest_shown][-len(shown) :]
    assert len(shown) == min(50, len([p for p in expected if p[0] <= newest_shown]))
    assert chromium.evaluate("!!document.querySelector('svg#durations')") or all(
        status in ("running", "skipped") for _id, status in shown
    )
    chromium.screenshot("dashboard-job.png")


def test_a_running_run_shows_its_elapsed_time_and_a_live_log_tail(
    served: tuple[Sandbox, str], chromium: DevTools
) -> None:
    box, base = served
    running = wait_until(
        lambda: [r for r in box.runs("reports.slow_export") if r.status == "running" and r.started_at], 20
    )
    url = f"{base}/runs/{running[0].id}"
    chromium.open(url, "document.querySelector('#elapsed') && document.getElementById('run-log')", DESKTOP)
    assert chromium.evaluate("document.getElementById('run-log').dataset.live") == "1"

    def batches() -> int:
        text = chromium.evaluate("document.getElementById('run-log').textContent") or ""
        return text.count("exported batch")

    first = wait_until(batches, 10)
    # the page refreshes the tail by itself, without a reload
    chromium.evaluate("window.notReloaded = true")
    wait_until(lambda: batches() > first, timeout=15)
    assert chromium.evaluate("window.notReloaded === true")


@pytest.mark.parametrize(
    ("path", "ready", "shot"),
    [
        ("/", "document.querySelector('#jobs')", "dashboard-phone.png"),
        ("/jobs/reports.sync_crm", "document.querySelector('#history')", "dashboard-job-phone.png"),
        ("/runs/1", "document.getElementById('run-log')", None),
    ],
)
def test_on_a_phone_the_page_never_scrolls_sideways(
    served: tuple[Sandbox, str], chromium: DevTools, path: str, ready: str, shot: str | None
) -> None:
    _box, base = served
    chromium.open(base + path, ready, PHONE)
    assert chromium.evaluate("window.innerWidth") == PHONE[0]
    assert chromium.horizontal_overflow() == 0
    # the Forget button of the token bar is fully on screen
    right = chromium.evaluate(
        "(() => { const b = document.getElementById('token-forget');"
        " return b ? b.getBoundingClientRect().right : 0; })()"
    )
    assert right <= PHONE[0]
    if shot:
        chromium.screenshot(shot)
