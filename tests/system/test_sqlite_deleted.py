"""The SQLite file deleted under a running daemon: noticed on the next heartbeat, unhealthy, alerted."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from scheduler.errors import StoreUnavailable
from scheduler.store import Store

from tests.support.ports import free_port
from tests.support.sandbox import Sandbox, wait_until

pytestmark = pytest.mark.system


def healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_deleting_the_sqlite_file_makes_the_daemon_unhealthy_and_opens_the_database_incident(
    sandbox: Sandbox,
) -> None:
    port = free_port()
    daemon = sandbox.daemon(
        http_enabled="true", http_port=str(port), db_alert_after="1s", watchdog_interval="1s"
    )
    wait_until(lambda: sandbox.runs("tick.tick"), 15)
    assert healthz(port)[0] == 200
    db_file = Path(sandbox.db_url.removeprefix("sqlite:///"))

    db_file.unlink()

    status, body = wait_until(lambda: (h := healthz(port))[0] == 503 and h, 15)
    assert body["ok"] is False and "was deleted or replaced while in use" in str(body["reason"])
    assert str(body["reason"]).startswith(f"database unavailable: SQLite file {db_file} was deleted")
    wait_until(lambda: "incident opened: database:" in sandbox.info_log.read_text(), 20)
    assert not db_file.exists(), "nothing may recreate an empty database under the running daemon"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0


def test_store_refuses_reads_and_writes_once_its_sqlite_file_was_replaced(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'scheduler.db'}")
    store.upgrade()
    assert store.jobs.count() == 0  # the file as first opened: fine
    (tmp_path / "scheduler.db").rename(tmp_path / "moved.db")
    (tmp_path / "scheduler.db").write_bytes((tmp_path / "moved.db").read_bytes())
    try:
        with pytest.raises(StoreUnavailable, match="was deleted or replaced while in use"):
            store.jobs.count()
        with pytest.raises(StoreUnavailable, match="was deleted or replaced while in use"):
            store.upgrade()
    finally:
        store.dispose()
