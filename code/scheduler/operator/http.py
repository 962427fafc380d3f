"""The HTTP API, dashboard, /healthz and /metrics: one WSGI app (served by `server.HttpServer`).

Reads need no credentials (bind to 127.0.0.1, the default, or put a proxy in
front). Writes need `Authorization: Bearer <api_token>`, compared in constant
time; with no token configured every write is refused (403). Every error is
JSON `{"error": "..."}` with a 4xx status, or 503 while the database is away;
a bad payload never gives a 500.
"""

from __future__ import annotations

import gzip
import hmac
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from scheduler.clock import Clock
from scheduler.cluster.health import Health
from scheduler.errors import JobDefinitionError, NotFoundError, RefusedError, StoreUnavailable
from scheduler.operator import actions, queries
from scheduler.operator.catalog import JobCatalog
from scheduler.operator.exchange import MAX_DEPTH as MAX_DEPTH
from scheduler.operator.exchange import HttpError, Request, Response, Route, error, reply
from scheduler.operator.exchange import json_depth as json_depth
from scheduler.operator.metrics import Metrics
from scheduler.operator.web import dashboard, listing, openapi, pages, site
from scheduler.store import Store

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"
MAX_BODY = 64 * 1024
STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Api:
    """The WSGI app over a Store and a Health; `clock` supplies `now` for every decision."""

    def __init__(
        self,
        store: Store,
        health: Health,
        clock: Clock,
        api_token: str = "",
        metrics: Metrics | None = None,
        live_log: Callable[[int], str | None] = lambda _run_id: None,
        default_isolation: str = "thread",
    ) -> None:
        self.store = store
        self.default_isolation = default_isolation  # a job's isolation when its definition names none
        self.live_log = live_log  # a running run's log so far, if it runs in this process
        self.catalog = JobCatalog(store, clock)  # the jobs list's rows, kept between pages
        self.health = health
        self.clock = clock
        self._token = api_token.encode()
        self.metrics = metrics
        self.routes = [
            Route("GET", "/", self.page),
            Route("GET", "/jobs/{name}", self.job_page),
            Route("GET", "/runs/{run_id}", self.run_page),
            Route("GET", "/static/{file}", self.static),
            Route("GET", "/healthz", self.healthz),
            Route("GET", "/metrics", self.metrics_text),
            Route("GET", "/api/openapi.json", self.openapi),
            Route("GET", "/api/jobs", self.jobs),
            Route("GET", "/api/jobs/{name}", self.job),
            Route("GET", "/api/jobs/{name}/next", self.next_slots),
            Route("POST", "/api/jobs/{name}/trigger", self.trigger, write=True),
            Route("POST", "/api/jobs/{name}/pause", self.pause, write=True),
            Route("POST", "/api/jobs/{name}/resume", self.resume, write=True),
            Route("PUT", "/api/jobs/{name}/schedule", self.schedule, write=True),
            Route("GET", "/api/runs", self.runs),
            Route("GET", "/api/runs/{run_id}", self.run),
            Route("GET", "/api/instances", self.instances),
            Route("GET", "/api/alerts", self.alerts),
            Route("GET", "/api/audit", self.audit),
        ]
        self._compiled = [(r, r.regex) for r in self.routes]

    # -- WSGI -------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            response = self.handle(environ)
        except HttpError as exc:
            response = error(exc.status, exc.message)
            response.headers += exc.headers
        except NotFoundError as exc:
            response = error(404, str(exc))
        except JobDefinitionError as exc:
            response = error(400, str(exc))
        except RefusedError as exc:
            response = error(409, str(exc))
        except StoreUnavailable as exc:
            response = error(503, str(exc))
        except Exception:
            log.exception("HTTP %s %s failed", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            response = error(500, "internal error; see the daemon's log")
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body)))]
        headers += SECURITY_HEADERS + response.headers
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else response.body]

    def handle(self, environ: dict[str, Any]) -> Response:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        try:
            path = str(environ.get("PATH_INFO") or "/").encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise HttpError(400, "the path is not valid UTF-8") from None
        allowed = []
        for route, regex in self._compiled:
            match = regex.match(path)
            if match is None:
                continue
            if route.method != method and not (method == "HEAD" and route.method == "GET"):
                allowed.append(route.method)
                continue
            request = self._request(environ, method, path, match.groupdict())
            if route.write:
                self._authorise(request)
            return route.handler(request)
        if allowed:
            raise HttpError(
                405, f"{method} is not allowed on {path}", [("Allow", ", ".join(sorted(allowed)))]
            )
        raise HttpError(404, f"no such path: {path}")

    def _request(self, environ: dict[str, Any], method: str, path: str, params: dict[str, str]) -> Request:
        raw_length = str(environ.get("CONTENT_LENGTH") or "0").strip()
        if not raw_length.isdigit():
            raise HttpError(400, f"bad Content-Length: {raw_length[:20]!r}")
        if int(raw_length) > MAX_BODY:
            raise HttpError(413, f"request body over {MAX_BODY} bytes")
        body = environ["wsgi.input"].read(int(raw_length)) if int(raw_length) else b""
        headers = {
            k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items() if k.startswith("HTTP_")
        }
        query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
        return Request(method, path, query, headers, str(environ.get("REMOTE_ADDR", "?")), body, params)

    def _authorise(self, request: Request) -> None:
        if not self._token:
            raise HttpError(403, "writes are disabled: no API token is configured (set SCHEDULER_API_TOKEN)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            raise HttpError(
                401, "a valid 'Authorization: Bearer <token>' is required", [("WWW-Authenticate", "Bearer")]
            )

    def now(self) -> datetime:
        return self.clock.now()

    # -- reading ------------------------------------------------------------------

    def jobs(self, request: Request) -> Response:
        return reply(queries.list_jobs(self.store, self.now()))

    def job(self, request: Request) -> Response:
        return reply(queries.show_job(self.store, request.params["name"], self.now()))

    def next_slots(self, request: Request) -> Response:
        count = request.int_arg("n", 5)
        return reply(queries.next_slots(self.store, request.params["name"], self.now(), count))

    def runs(self, request: Request) -> Response:
        limit = request.int_arg("limit", 50)
        return reply(
            queries.list_runs(self.store, request.arg("job") or None, request.arg("status") or None, limit)
        )

    def run(self, request: Request) -> Response:
        return reply(queries.show_run(self.store, _run_id(request)))

    def instances(self, request: Request) -> Response:
        return reply(queries.list_instances(self.store, self.now()))

    def alerts(self, request: Request) -> Response:
        open_only = not request.bool_arg("all")
        return reply(queries.list_alerts(self.store, open_only, request.int_arg("limit", 50)))

    def audit(self, request: Request) -> Response:
        return reply(queries.list_audit(self.store, request.arg("job") or None, request.int_arg("limit", 50)))

    def openapi(self, request: Request) -> Response:
        return reply(openapi.document())

    # -- writing ------------------------------------------------------------------

    def actor(self, request: Request) -> str:
        return f"api:{request.remote}"

    def trigger(self, request: Request) -> Response:
        _no_fields(request.json_object())
        result = actions.trigger(self.store, request.params["name"], self.actor(request), self.now())
        return reply(result, 202)

    def pause(self, request: Request) -> Response:
        _no_fields(request.json_object())
        return reply(
            actions.set_paused(self.store, request.params["name"], True, self.actor(request), self.now())
        )

    def resume(self, request: Request) -> Response:
        _no_fields(request.json_object())
        return reply(
            actions.set_paused(self.store, request.params["name"], False, self.actor(request), self.now())
        )

    def schedule(self, request: Request) -> Response:
        body = _schedule_change(request.json_object())
        job = actions.set_schedule(
            self.store,
            request.params["name"],
            self.actor(request),
            self.now(),
            interval=body.get("interval"),
            cron=body.get("cron"),
            timezone=body.get("timezone"),
            clear=body.get("clear", False),
        )
        return reply(job)

    # -- health, metrics, dashboard -------------------------------------------------

    def healthz(self, request: Request) -> Response:
        report = self.health.report()
        data = {
            "ok": report.ok,
            "reason": report.reason,
            "database_up": report.database_up,
            "database_down_seconds": round(report.database_down_for, 3),
            "loop_age_seconds": round(report.loop_age, 3),
        }
        return reply(data, 200 if report.ok else 503)

    def metrics_text(self, request: Request) -> Response:
        if self.metrics is None:
            raise HttpError(404, "metrics are not enabled in this app")
        body, content_type = self.metrics.render()
        vary = [("Vary", "Accept-Encoding")]
        if _accepts_gzip(request.headers.get("accept-encoding", "")):
            # level 1: at 10,000 jobs it shrinks the text ~10x at a fraction of level 9's CPU
            return Response(200, gzip.compress(body, 1), content_type, [("Content-Encoding", "gzip"), *vary])
        return Response(200, body, content_type, vary)

    def page(self, request: Request) -> Response:
        now = self.now()
        wanted = listing.Filter.parse(
            request.arg("q"), request.arg("state"), request.arg("sort"), request.arg("page")
        )
        try:
            report = self.health.report()
            html = site.front_page(
                self.store, self.catalog, report, now, wanted, bool(self._token), self.default_isolation
            )
        except StoreUnavailable as exc:
            return _html(dashboard.render_unavailable(str(exc), now), 503)
        return _html(html)

    def job_page(self, request: Request) -> Response:
        now = self.now()
        try:
            html = site.job_page(
                self.store, request.params["name"], now, bool(self._token), self.default_isolation
            )
        except StoreUnavailable as exc:
            return _html(dashboard.render_unavailable(str(exc), now), 503)
        return _html(html)

    def run_page(self, request: Request) -> Response:
        run = queries.show_run(self.store, _run_id(request))
        live = self.live_log(run["id"]) if run["status"] == "running" else None
        return _html(pages.render_run(run, self.now(), live))

    def static(self, request: Request) -> Response:
        name = request.params["file"]
        if name not in STATIC:
            raise HttpError(404, f"no such file: {name}")
        return Response(200, (WEB / name).read_bytes(), STATIC[name], [("Cache-Control", "no-cache")])


def _html(text: str, status: int = 200) -> Response:
    policy = [("Content-Security-Policy", PAGE_POLICY)]
    return Response(status, text.encode(), "text/html; charset=utf-8", policy)


def _accepts_gzip(header: str) -> bool:
    """True if `Accept-Encoding` lists gzip (or *) without q=0."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def _run_id(request: Request) -> int:
    raw = request.params["run_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise HttpError(400, f"run id must be a whole number, got {raw[:40]!r}")
    return int(raw)


def _schedule_change(body: dict[str, Any]) -> dict[str, Any]:
    """One of the document's three shapes: {interval}, {cron[, timezone]} or {clear: true}.

    Raises HttpError(400) naming what is wrong; the values are checked by set_schedule.
    """
    unknown = sorted(set(body) - {"interval", "cron", "timezone", "clear"})
    if unknown:
        raise HttpError(400, f"unknown fields: {', '.join(unknown)} (use interval, cron, timezone or clear)")
    for name in ("cron", "timezone"):
        if name in body and not isinstance(body[name], str):
            raise HttpError(400, f"{name} must be a string")
    interval = body.get("interval")
    if "interval" in body and (isinstance(interval, bool) or not isinstance(interval, str | int | float)):
        raise HttpError(400, "interval must be seconds or text like '5m'")
    if "clear" in body and body["clear"] is not True:
        raise HttpError(400, "clear must be true (leave it out to set a schedule)")
    shapes = [name for name in ("interval", "cron", "clear") if name in body]
    if len(shapes) != 1:
        raise HttpError(400, "give exactly one of interval, cron (with an optional timezone) or clear: true")
    if "timezone" in body and shapes != ["cron"]:
        raise HttpError(400, "timezone applies to a cron schedule only")
    return body


def _no_fields(body: dict[str, Any]) -> None:
    if body:
        raise HttpError(400, f"this action takes no fields; got {', '.join(sorted(body))}")
