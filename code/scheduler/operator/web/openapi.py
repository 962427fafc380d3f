"""The OpenAPI 3.1 document of the HTTP API, served at /api/openapi.json.

The shapes are those of `scheduler.operator.queries`; a test checks that every route of
`http.Api` (JSON, dashboard pages, static files, /metrics) is described here and nothing
else, and a schemathesis run checks the server against it.
"""

from __future__ import annotations

from typing import Any

from scheduler import __version__
from scheduler.operator.web.schemas import STATUSES, ref, schemas

JOB_STATES = ("failing", "late", "paused", "never-run", "skipping", "active", "disabled")
JOB_SORTS = ("name", "next", "last", "status")


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    400: "Invalid parameter or payload (a path that is not UTF-8, such as %FF, included)",
    401: "Missing or wrong bearer token",
    403: "Writes are disabled (no API token configured)",
    404: "No such job or run",
    409: "Refused in the job's current state (paused, disabled), or no watchdog in this build",
    413: "Request body too large",
    503: "The database is unavailable",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(ref("Error"), ERRORS[c]) for c in codes}


def _op(summary: str, ok: dict[str, Any], *codes: int, write: bool = False, **extra: Any) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(*codes, 503)}}
    if write:
        operation["security"] = [{"bearer": []}]
        operation["responses"].update(_errors(401, 403, 413))
    operation.update(extra)
    return operation


JOB_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},  # at most 18 digits
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _paths() -> dict[str, Any]:
    limit = _query(
        "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many (default 50)"
    )
    array = {"type": "array"}
    return {
        "/healthz": {
            "get": {
                "summary": "200 while the dispatcher loop and the database are alive, else 503",
                "responses": {
                    "200": _json(ref("Health"), "Alive"),
                    "503": _json(ref("Health"), "Not alive"),
                },
            }
        },
        "/api/jobs": {"get": _op("List jobs", {"200": _json(array | {"items": ref("Job")}, "Jobs")})},
        "/api/jobs/{name}": {
            "parameters": [JOB_NAME],
            "get": _op(
                "One job, with its definition and recent runs",
                {"200": _json(ref("JobDetail"), "Job")},
                400,
                404,
            ),
        },
        "/api/jobs/{name}/next": {
            "parameters": [JOB_NAME],
            "get": _op(
                "Upcoming slots from the effective schedule, in UTC and the job's zone",
                {"200": _json(ref("Slots"), "Slots")},
                400,
                404,
                parameters=[
                    _query("n", {"type": "integer", "minimum": 1, "maximum": 100}, "how many (default 5)")
                ],
            ),
        },
        "/api/jobs/{name}/trigger": {
            "parameters": [JOB_NAME],
            "post": _op(
                "Queue one manual run; a live instance that loads the job runs it (skipped if busy)",
                {"202": _json(ref("Queued"), "Queued")},
                400,
                404,
                409,
                write=True,
            ),
        },
        "/api/jobs/{name}/pause": {
            "parameters": [JOB_NAME],
            "post": _op("Pause a job", {"200": _json(ref("Job"), "Paused")}, 400, 404, write=True),
        },
        "/api/jobs/{name}/resume": {
            "parameters": [JOB_NAME],
            "post": _op(
                "Resume a job from now on", {"200": _json(ref("Job"), "Resumed")}, 400, 404, write=True
            ),
        },
        "/api/jobs/{name}/schedule": {
            "parameters": [JOB_NAME],
            "put": _op(
                "Override the schedule ({interval} or {cron, timezone}), or {clear: true}",
                {"200": _json(ref("Job"), "Changed")},
                400,
                404,
                write=True,
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": ref("ScheduleChange")}},
                },
            ),
        },
        "/api/runs": {
            "get": _op(
                "Recent runs, newest slot first",
                {"200": _json(array | {"items": ref("Run")}, "Runs")},
                400,
                404,
                parameters=[
                    _query("job", {"type": "string"}, "only this job"),
                    _query("status", {"enum": STATUSES}, "only this status"),
                    limit,
                ],
            )
        },
        "/api/runs/{run_id}": {
            "parameters": [RUN_ID],
            "get": _op(
                "One run with its log and traceback", {"200": _json(ref("RunDetail"), "Run")}, 400, 404
            ),
        },
        "/api/instances": {
            "get": _op(
                "Daemon instances, newest first",
                {"200": _json(array | {"items": ref("Instance")}, "Instances")},
            )
        },
        "/api/alerts": {
            "get": _op(
                "Incidents from the watchdog (open ones unless all=true)",
                {"200": _json(array | {"items": ref("Incident")}, "Incidents")},
                400,
                409,
                parameters=[_query("all", {"type": "boolean"}, "closed incidents too"), limit],
            )
        },
        "/api/audit": {
            "get": _op(
                "Operator changes, newest first",
                {"200": _json(array | {"items": ref("AuditEntry")}, "Entries")},
                400,
                parameters=[_query("job", {"type": "string"}, "only this job"), limit],
            )
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        **_pages(),
    }


def _text(media: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


HTML = "text/html"


def _pages() -> dict[str, Any]:
    """The dashboard's pages, its static files and /metrics: not JSON, but part of the contract."""
    page_errors = {"503": _text(HTML, "The database is unavailable (the page says so and retries)")}
    return {
        "/": {
            "get": {
                "summary": "The dashboard: health, incidents, the jobs list, recent runs, instances",
                "parameters": [
                    _query("q", {"type": "string"}, "jobs whose name contains this"),
                    _query("state", {"enum": ["", *JOB_STATES]}, "jobs in this state (empty: any)"),
                    _query("sort", {"enum": list(JOB_SORTS)}, "order of the jobs list (default name)"),
                    _query(
                        "page",
                        {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                        "page of the jobs list (default 1; past the last page shows the last)",
                    ),
                ],
                "responses": {
                    "200": _text(HTML, "The page"),
                    **page_errors,
                    "400": _json(ref("Error"), "Invalid parameter"),
                },
            }
        },
        "/jobs/{name}": {
            "parameters": [JOB_NAME],
            "get": {
                "summary": "A job's page: schedule, next slots, last runs, durations, incidents, audit",
                "responses": {
                    "200": _text(HTML, "The page"),
                    **_errors(400, 404),
                    **page_errors,
                },
            },
        },
        "/runs/{run_id}": {
            "parameters": [RUN_ID],
            "get": {
                "summary": "A run's page: its facts, error and log (live while it runs)",
                "responses": {"200": _text(HTML, "The page"), **_errors(400, 404), **page_errors},
            },
        },
        "/static/{file}": {
            "parameters": [
                {
                    "name": "file",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": ["dashboard.css", "dashboard.js"]},
                }
            ],
            "get": {
                "summary": "The dashboard's stylesheet and script",
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {
                            "text/css": {"schema": {"type": "string"}},
                            "text/javascript": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 404),
                },
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (gzip when Accept-Encoding asks for it)",
                "responses": {
                    "200": _text("text/plain", "The Prometheus text exposition format"),
                    "404": _json(ref("Error"), "Metrics are not enabled in this app"),
                },
            }
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "scheduler API",
            "version": __version__,
            "description": "Jobs, runs, instances and alerts; the same data as the CLI's --json.",
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "SCHEDULER_API_TOKEN"}
            },
        },
    }
