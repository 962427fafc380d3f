"""Hostile HTTP clients against a real waitress server: floods of idle sockets, huge and deep bodies."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from datetime import timedelta
from itertools import product
from typing import Any

import pytest
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.jobs.registry import make_spec
from scheduler.operator.http import MAX_BODY, MAX_DEPTH, Api, json_depth
from scheduler.operator.server import HttpServer
from scheduler.store import Store

IDLE, HALF_SENT = 200, 50
TOKEN = "t0ken-for-tests"


def call(
    app: Api, method: str, path: str, body: bytes = b"", token: str | None = None, query: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One request straight into the WSGI app."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": "10.1.2.3",
        "wsgi.input": io.BytesIO(body),
    }
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)

    data = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], data


def work() -> None:
    """A job function; never called here."""


@pytest.fixture
def app(sqlite_url: str, clock: FakeClock) -> Iterator[Api]:
    store = Store(sqlite_url)
    store.upgrade()
    store.jobs.sync([make_spec(work, name="etl.load", interval=timedelta(minutes=10))], clock.now())
    yield Api(store, Health(clock), clock, TOKEN)
    store.dispose()


@pytest.fixture
def server(app: Api) -> Iterator[HttpServer]:
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    yield server
    server.stop()


def connect(server: HttpServer) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=5)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or the head and a JSON body arrived."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if body and (body.endswith(b"}") or b"413" in head.split(b"\r\n")[0]):
            break
    return data


def get(server: HttpServer, path: str) -> bytes:
    with connect(server) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return answer(sock)


def test_healthz_answers_while_hundreds_of_idle_and_half_sent_connections_are_held(
    server: HttpServer,
) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(IDLE):
            held.append(connect(server))
        for _ in range(HALF_SENT):
            sock = connect(server)
            sock.sendall(b"POST /api/jobs/etl.load/trigger HTTP/1.1\r\nHost: x\r\nContent-Le")
            held.append(sock)
        for _ in range(3):  # a socket timeout (5 s) here is the failure: the health check would time out
            reply = get(server, "/healthz")
            assert reply.startswith(b"HTTP/1.1 200 ") and b'"ok": true' in reply
        assert get(server, "/api/jobs").startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()


def test_body_over_the_limit_is_refused_on_its_content_length_before_it_is_sent(server: HttpServer) -> None:
    with connect(server) as sock:
        # 50 MB announced, not one byte of it sent, no token: the refusal comes at once.
        sock.sendall(
            b"POST /api/jobs/etl.load/trigger HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n"
        )
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_body_of_exactly_the_limit_is_still_read(server: HttpServer) -> None:
    body = b" " * MAX_BODY
    with connect(server) as sock:
        head = f"PUT /api/jobs/etl.load/schedule HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode())
        sock.sendall(body)
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"unknown fields" not in reply


def nested(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    return (opener * depth + closer * depth).encode()


SHAPES = [
    nested(100_000 // 2 - 1),
    nested(5000),
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"interval": ' + nested(MAX_DEPTH + 1) + b"}",
    b'{"interval": 1e999999}',
    b'{"interval": -1e999999}',
    b'{"interval": NaN}',
    b'{"interval": Infinity}',
    b'{"interval": "' + b"9" * 10_000 + b's"}',
    b'{"interval": ' + b"9" * 10_000 + b"}",
    b'{"cron": "' + b"* " * 10_000 + b'"}',
    b'{"timezone": "../../../../etc/passwd", "cron": "0 6 * * *"}',
    b'{"timezone": "\\u0000", "cron": "0 6 * * *"}',
    b'{"interval": true}',
    b'{"interval": [], "cron": {}}',
    b'{"clear": 1}',
    b"\xff\xfe{}",
    b'"\\ud800"',
    b"[" * MAX_DEPTH + b"]" * MAX_DEPTH,
]


@pytest.mark.parametrize("body", SHAPES, ids=range(len(SHAPES)))
@pytest.mark.parametrize("path", ["/api/jobs/etl.load/schedule", "/api/jobs/etl.load/trigger"])
def test_no_payload_shape_yields_a_500(app: Api, body: bytes, path: str) -> None:
    method = "PUT" if path.endswith("schedule") else "POST"
    status, _, data = call(app, method, path, body[:MAX_BODY], token=TOKEN)
    assert 400 <= status < 500, (status, data[:200])
    assert "error" in json.loads(data)


@pytest.mark.parametrize(
    ("path", "query"),
    list(
        product(
            ["/api/runs", "/api/alerts", "/api/audit", "/api/jobs/etl.load/next", "/api/runs/1"],
            ["limit=9" + "9" * 5000, "limit=99999999999999999999", "n=-99999999999999", "n=1e3", "limit=%00"],
        )
    ),
)
def test_no_query_number_yields_a_500(app: Api, path: str, query: str) -> None:
    status, _, data = call(app, "GET", path, query=query)
    assert status in (200, 400, 404), (status, data[:200])


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth('{"a": "[[[[{{{{", "b": [1, {"c": "\\"]]"}]}') == 3
    assert json_depth("[]") == 1 and json_depth("3") == 0
