"""The dashboard in a real browser: a daemon serving HTTP, headless chromium driven over DevTools.

Clicks are real mouse events at the buttons' positions; the test polls the
page's DOM (with a deadline) until the triggered run shows, then saves a
screenshot to docs/dashboard.png. Without chromium it skips loudly, except
under CI=true, where it fails.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.support.sandbox import REPO, Sandbox, query, wait_until

pytestmark = pytest.mark.system

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO / "docs" / "dashboard.png"
TOKEN = "dashboard-test-token"
JOBS = """
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

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    if not CHROMIUM.exists():
        message = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI=true: the dashboard test must run")
        pytest.skip("SKIPPING DASHBOARD BROWSER TEST: " + message)
    profile = tmp_path / "chromium"
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
            "--window-size=1280,1000",
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


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path / "box")
    try:
        yield sandbox
    finally:
        sandbox.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_trigger_from_the_dashboard_runs_the_job_and_the_run_shows_up(
    box: Sandbox, chromium: DevTools
) -> None:
    box.write_job("reports", JOBS)
    port = free_port()
    box.daemon(http_enabled="true", http_port=str(port), api_token=TOKEN)
    base = f"http://127.0.0.1:{port}"
    # the interval jobs run once right after start: wait for both, so the page has history
    wait_until(
        lambda: (
            {r.job for r in box.runs() if r.status in ("succeeded", "failed")}
            >= {
                "reports.report",
                "reports.sync_crm",
            }
        ),
        timeout=20,
    )

    chromium.call("Page.enable")
    chromium.call("Page.navigate", url=base + "/")
    wait_until(
        lambda: chromium.evaluate("document.readyState === 'complete' && !!document.querySelector('#jobs')")
    )
    names = chromium.evaluate("[...document.querySelectorAll('#jobs tr[data-job]')].map(r => r.dataset.job)")
    assert names == ["reports.morning_digest", "reports.report", "reports.sync_crm"]

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

    flash = wait_until(
        lambda: (chromium.evaluate("document.getElementById('flash').textContent") or "").startswith(
            "queued"
        ),
        timeout=10,
    )
    assert flash
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
    chromium.call("Page.navigate", url=f"{base}/runs/{run_id}")
    wait_until(
        lambda: (
            "report built for slot"
            in (
                chromium.evaluate(
                    "document.getElementById('run-log') ? document.getElementById('run-log').textContent : ''"
                )
                or ""
            )
        )
    )
    chromium.call("Page.navigate", url=base + "/")
    wait_until(lambda: chromium.evaluate(f"!!{row}"))
    shot = chromium.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(png)
