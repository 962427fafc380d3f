"""Calling a WSGI app in-process, as a server would: one request, its status, headers and body."""

from __future__ import annotations

import io
from typing import Any


def call(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    token: str | None = None,
    query: str = "",
    remote: str = "10.1.2.3",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path.encode().decode("latin-1"),
        "QUERY_STRING": query,
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": remote,
        "wsgi.input": io.BytesIO(body),
    }
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    environ.update(headers or {})
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(response_headers)

    data = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], data
