"""A fake Slack for tests: a real HTTP server on 127.0.0.1 that records requests.

Point the real clients at it: `WebClient(base_url=server.api_url)` or
`WebhookClient(server.webhook_url)`. It answers

- `POST /api/chat.postMessage` (JSON or form body) with
  `{"ok": true, "channel": "C123", "ts": ...}`, each ts unique and increasing;
- `POST /api/chat.update` with `{"ok": true, ...}` if the ts was posted, else
  `{"ok": false, "error": "message_not_found"}`;
- `POST /webhook/...` with 200 "ok";

unless told to fail the next requests (`fail_next`, `drop_next`, `hang_next`,
`garble_next`: HTTP 200 with an HTML page, as a proxy in front of Slack may).
Every request is recorded in `requests` (failed ones too, with the status
they got); the successful posts also in `messages`, the successful edits in
`edits`. Header names are recorded
in lower case: `request["headers"]["authorization"]`.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl

import pytest

API_PATH = "/api/"
WEBHOOK_PATH = "/webhook/T0000000/B0000000/fakeWebhookSecret0123456789"
CHANNEL_ID = "C123"


@dataclass(frozen=True)
class _Failure:
    status: int = 0
    retry_after: float | None = None
    slack_error: str | None = None
    drop: bool = False  # close the connection without answering
    hang: bool = False  # answer nothing until the server closes
    garble: bool = False  # HTTP 200 with a body that is not JSON


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


class FakeSlack:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.edits: list[dict[str, Any]] = []
        self._posted: set[str] = set()
        self._cond = threading.Condition()
        self._failures: deque[_Failure] = deque()
        self._ts_counter = 0
        self._released = threading.Event()
        self._closed = False
        self._server = _Server(self)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/"
        self.api_url = f"http://127.0.0.1:{port}{API_PATH}"
        self.webhook_url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-slack",
            daemon=True,
        )
        self._thread.start()

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        slack_error: str | None = None,
    ) -> None:
        """The next n requests fail.

        `status` alone: that HTTP status (429 adds `Retry-After: retry_after`
        when given). `slack_error`: the API answers `{"ok": false, "error": ...}`
        with HTTP 200 (or `status`), a webhook answers the code as plain text
        with HTTP 404 (or `status`), as Slack does.
        """
        if status is None and slack_error is None:
            raise ValueError("fail_next: give status, slack_error or both")
        failure = _Failure(status=status or 0, retry_after=retry_after, slack_error=slack_error)
        with self._cond:
            self._failures.extend([failure] * n)

    def drop_next(self, n: int = 1) -> None:
        """The next n requests get their connection closed without an answer."""
        with self._cond:
            self._failures.extend([_Failure(drop=True)] * n)

    def hang_next(self, n: int = 1) -> None:
        """The next n requests get no answer until close(): the client times out."""
        with self._cond:
            self._failures.extend([_Failure(hang=True)] * n)

    def garble_next(self, n: int = 1) -> None:
        """The next n requests get HTTP 200 with an HTML body instead of JSON."""
        with self._cond:
            self._failures.extend([_Failure(garble=True)] * n)

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until n messages were accepted; False if the timeout passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.messages) >= n, timeout)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until n requests arrived, failed or not; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.requests) >= n, timeout)

    def close(self) -> None:
        """Stop serving; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeSlack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handle(self, path: str, headers: dict[str, str], body: Any) -> _Answer | _Failure:
        """Record one request and choose its answer (a _Failure for drop or hang)."""
        with self._cond:
            failure = self._failures.popleft() if self._failures else None
            request: dict[str, Any] = {"path": path, "headers": headers, "body": body}
            if failure is not None and (failure.drop or failure.hang):
                request["status"] = None
                self.requests.append(request)
                self._cond.notify_all()
                return failure
            answer = self._answer(path, body, failure)
            request["status"] = answer.status
            self.requests.append(request)
            if failure is None and answer.status == 200 and path.endswith("chat.update"):
                if json.loads(answer.body).get("ok"):
                    self.edits.append(request)
            elif failure is None and answer.status == 200:
                self.messages.append(request)
            self._cond.notify_all()
            return answer

    def _answer(self, path: str, body: Any, failure: _Failure | None) -> _Answer:
        if failure is not None and failure.garble:
            return _Answer(200, b"<html><body>502 Bad Gateway</body></html>", "text/html", {})
        if path.startswith("/webhook/"):
            if failure is None:
                return _Answer(200, b"ok", "text/plain", {})
            if failure.slack_error is not None:
                return _text(failure.status or 404, failure.slack_error, failure)
            return _text(failure.status, _default_error(failure.status), failure)
        if path == f"{API_PATH}chat.postMessage":
            if failure is None:
                self._ts_counter += 100
                ts = f"1700000000.{self._ts_counter:06d}"
                text = body.get("text") if isinstance(body, dict) else None
                message = {"text": text, "ts": ts}
                self._posted.add(ts)
                return _json(200, {"ok": True, "channel": CHANNEL_ID, "ts": ts, "message": message})
            error = failure.slack_error or _default_error(failure.status)
            return _json(failure.status or 200, {"ok": False, "error": error}, failure)
        if path == f"{API_PATH}chat.update":
            if failure is not None:
                error = failure.slack_error or _default_error(failure.status)
                return _json(failure.status or 200, {"ok": False, "error": error}, failure)
            ts = body.get("ts") if isinstance(body, dict) else None
            if ts not in self._posted:
                return _json(200, {"ok": False, "error": "message_not_found"})
            return _json(200, {"ok": True, "channel": CHANNEL_ID, "ts": ts})
        if path.startswith(API_PATH):
            return _json(200, {"ok": False, "error": "unknown_method"})
        return _text(404, "not found")


def _default_error(status: int) -> str:
    return "ratelimited" if status == 429 else "internal_error"


def _retry_headers(failure: _Failure | None) -> dict[str, str]:
    if failure is None or failure.retry_after is None:
        return {}
    return {"Retry-After": f"{failure.retry_after:g}"}


def _json(status: int, data: dict[str, Any], failure: _Failure | None = None) -> _Answer:
    body = json.dumps(data).encode()
    return _Answer(status, body, "application/json; charset=utf-8", _retry_headers(failure))


def _text(status: int, text: str, failure: _Failure | None = None) -> _Answer:
    return _Answer(status, text.encode(), "text/plain; charset=utf-8", _retry_headers(failure))


def _parse(raw: bytes, content_type: str) -> Any:
    text = raw.decode("utf-8")
    if content_type.startswith("application/json"):
        return json.loads(text) if text else {}
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(text, keep_blank_values=True))
    return text


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeSlack) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        fake = cast(_Server, self.server).fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        body = _parse(raw, headers.get("content-type", ""))
        answer = fake._handle(self.path, headers, body)
        if isinstance(answer, _Failure):
            if answer.hang:
                fake._released.wait()
            self.close_connection = True
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


@pytest.fixture(name="fake_slack")
def fake_slack_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlack]:
    """A running FakeSlack, closed after the test.

    Registered for every test by tests/conftest.py; tests take it as `fake_slack`.
    """
    # slack_sdk sends through HTTP(S)_PROXY and ignores NO_PROXY; the fake is local.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = FakeSlack()
    try:
        yield server
    finally:
        server.close()
