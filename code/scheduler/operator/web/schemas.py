"""The component schemas of the OpenAPI document: the JSON shapes of `scheduler.operator.queries`."""

from __future__ import annotations

from typing import Any

from scheduler.store import RUN_STATUSES

STATUSES = list(RUN_STATUSES)
NULL_STRING = {"type": ["string", "null"]}
NULL_TIME = {"type": ["string", "null"], "format": "date-time"}
NULL_NUMBER = {"type": ["number", "null"]}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def complete(properties: dict[str, Any]) -> dict[str, Any]:
    """An object with these properties, all present (others may be added)."""
    return {"type": "object", "properties": properties, "required": list(properties)}


def strict(**properties: Any) -> dict[str, Any]:
    """An object with exactly these properties, all present."""
    return complete(properties) | {"additionalProperties": False}


def extends(name: str, **properties: Any) -> dict[str, Any]:
    """Component `name` with these properties added, all present."""
    return {"allOf": [ref(name), complete(properties)]}


def schemas() -> dict[str, Any]:
    slot = {
        "type": "object",
        "properties": {
            "at": {"type": "string", "format": "date-time", "description": "UTC"},
            "local": {
                "type": "string",
                "format": "date-time",
                "description": "in the job's zone, with offset",
            },
            "zone": {"type": "string"},
            "abbreviation": NULL_STRING,
        },
        "required": ["at", "local", "zone"],
    }
    run_fields = {
        "id": {"type": "integer"},
        "job": {"type": "string"},
        "scheduled_for": {"type": "string", "format": "date-time"},
        "trigger": {"enum": ["schedule", "catchup", "manual"]},
        "status": {"enum": STATUSES},
        "attempt": {"type": "integer"},
        "instance": NULL_STRING,
        "host": NULL_STRING,
        "pid": {"type": ["integer", "null"]},
        "started_at": NULL_TIME,
        "finished_at": NULL_TIME,
        "duration_seconds": NULL_NUMBER,
        "lateness_seconds": NULL_NUMBER,
        "error_type": NULL_STRING,
        "error_message": NULL_STRING,
    }
    run = complete(run_fields)
    run_detail = extends(
        "Run", log=NULL_STRING, log_truncated={"type": "boolean"}, error_traceback=NULL_STRING
    )
    job_fields = {
        "name": {"type": "string"},
        "schedule": {"type": "string", "description": "the effective schedule, e.g. 'every 5m'"},
        "code_schedule": {"type": "string"},
        "overridden": {"type": "boolean"},
        "timezone": {"type": "string"},
        "enabled": {"type": "boolean"},
        "paused": {"type": "boolean"},
        "next_run": {"oneOf": [ref("Slot"), {"type": "null"}]},
        "due": {"type": "boolean"},
        "last_run": {"oneOf": [ref("Run"), {"type": "null"}]},
        "last_status": NULL_STRING,
        "changed_by": NULL_STRING,
        "changed_at": NULL_TIME,
        "loaded_at": NULL_TIME,
    }
    job = complete(job_fields)
    job_detail = extends(
        "Job",
        definition={"type": "object"},
        override={"type": "object"},
        recent_runs={"type": "array", "items": ref("Run")},
    )
    return {
        "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
        "Slot": slot,
        "Run": run,
        "RunDetail": run_detail,
        "Job": job,
        "JobDetail": job_detail,
        "Instance": strict(
            id={"type": "string"},
            host={"type": "string"},
            pid={"type": "integer"},
            version={"type": "string"},
            status={"enum": ["alive", "stopped", "dead"]},
            leader={"type": "boolean"},
            started_at={"type": "string", "format": "date-time"},
            heartbeat_at={"type": "string", "format": "date-time"},
            expires_at={"type": "string", "format": "date-time"},
            stopped_at=NULL_TIME,
            jobs={"type": "array", "items": {"type": "string"}},
            problems={"type": "array", "items": {"type": "object"}},
        ),
        "Incident": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "subject": {"type": "string"},
                "kind": {"type": "string"},
                "opened_at": {"type": "string", "format": "date-time"},
                "closed_at": NULL_TIME,
                "summary": {"type": "string"},
                "details": {"type": "object"},
            },
            "required": ["id", "subject", "kind", "opened_at", "closed_at", "summary"],
        },
        "AuditEntry": strict(
            at={"type": "string", "format": "date-time"},
            actor={"type": "string", "description": "user@host (CLI) or api:<address>"},
            action={"enum": ["pause", "resume", "set", "unset", "trigger"]},
            job=NULL_STRING,
            details={"type": "object"},
        ),
        "Slots": strict(
            job={"type": "string"},
            schedule={"type": "string"},
            timezone={"type": "string"},
            paused={"type": "boolean"},
            enabled={"type": "boolean"},
            slots={"type": "array", "items": ref("Slot")},
        ),
        "Queued": strict(
            job={"type": "string"},
            run_id={"type": "integer"},
            status={"const": "queued"},
            instances={
                "type": "array",
                "items": {"type": "string"},
                "description": "live instances loading it",
            },
        ),
        "Health": {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string"}},
            "required": ["ok", "reason"],
        },
        "ScheduleChange": {
            "description": "exactly one shape: an interval, a cron (and zone), or clear",
            "oneOf": [
                strict(interval={"type": ["string", "number"], "description": "seconds, or text like '5m'"}),
                {
                    "type": "object",
                    "properties": {
                        "cron": {"type": "string", "maxLength": 200},
                        "timezone": {
                            "type": "string",
                            "maxLength": 64,
                            "description": "zone of the cron schedule (default UTC)",
                        },
                    },
                    "required": ["cron"],
                    "additionalProperties": False,
                },
                strict(clear={"const": True, "description": "back to the schedule in the code"}),
            ],
        },
    }
