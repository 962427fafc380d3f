"""The HTTP API's requests and responses: query parameters, JSON bodies, JSON replies, routes.

Every problem with a request is an `HttpError` carrying its 4xx status.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 16  # nesting of a JSON body


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    remote: str
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def int_arg(self, name: str, default: int) -> int:
        """A whole-number query parameter (the queries check its range); absent gives `default`,
        empty or not a number is a 400. Raises HttpError(400)."""
        raw = self.arg(name)
        if raw is None:
            return default
        if not re.fullmatch(r"[+-]?\d{1,9}", raw.strip()):
            raise HttpError(400, f"query parameter {name!r} must be a whole number, got {raw[:40]!r}")
        return int(raw)

    def bool_arg(self, name: str) -> bool:
        """`true` or `false`, as the document's boolean parameters are written; absent is false."""
        raw = self.arg(name)
        if raw is None:
            return False
        if raw not in ("true", "false"):
            raise HttpError(400, f"query parameter {name!r} must be true or false, got {raw[:40]!r}")
        return raw == "true"

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; an empty body is {}. Raises HttpError(400).

        The nesting depth is counted before parsing: a deep body would otherwise end in a
        RecursionError (a 500) inside the parser.
        """
        if not self.body.strip():
            return {}
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "request body is not valid UTF-8 JSON") from None
        if json_depth(text) > MAX_DEPTH:
            raise HttpError(400, f"request body nests deeper than {MAX_DEPTH} levels")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise HttpError(400, "request body is not valid UTF-8 JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, f"request body must be a JSON object, got {type(data).__name__}")
        return data


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str  # OpenAPI-style path: /api/jobs/{name}
    handler: Callable[[Request], Response]
    write: bool = False

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.pattern) + "$")


def reply(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, ensure_ascii=False).encode())


def error(status: int, message: str) -> Response:
    return reply({"error": message}, status)


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in JSON text, ignoring those inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
