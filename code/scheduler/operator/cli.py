"""Operator commands (jobs, history, pause, ...): registered on the control.py parser.

Every command reads or writes the database directly, so it works whether or
not a daemon runs, and prints an aligned table or, with `--json`, the same
dicts the HTTP API returns (see `queries`). Exit codes: 0 ok; 1 failure or not
found; 2 usage or an invalid value. Errors are one line on stderr.

This module is imported to build the parser of every command, `status` and
`--help` included: the store and the read model are imported by the handlers
that use them, never here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.clock import SystemClock
from scheduler.config import Settings
from scheduler.errors import JobDefinitionError, StoreError
from scheduler.operator import RUN_STATUSES

if TYPE_CHECKING:
    from scheduler.store import Store

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
Handler = Callable[[Settings, argparse.Namespace], int]
clock = SystemClock()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator commands to `sub`."""

    def add(name: str, handler: Handler, text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=text, description=text)
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.set_defaults(handler=_guarded(handler))
        return parser

    add("jobs", cmd_jobs, "list jobs: schedule, next run, last status, paused")
    add("show", cmd_show, "one job in detail, with its recent runs").add_argument("job")
    p = add("next", cmd_next, "the upcoming slots of a job, in its zone and UTC")
    p.add_argument("job")
    p.add_argument("-n", type=_positive, default=5, help="how many slots (default 5)")
    p = add("history", cmd_history, "recent runs, newest first")
    p.add_argument("job", nargs="?")
    p.add_argument("--status", choices=RUN_STATUSES)
    p.add_argument("--limit", type=_positive, default=20)
    add("logs", cmd_logs, "the captured log and error of a run").add_argument("run_id", type=_run_id)
    add("trigger", cmd_trigger, "queue one manual run of a job").add_argument("job")
    add("pause", cmd_pause, "stop scheduling a job (its slots pass unrun)").add_argument("job")
    add("resume", cmd_resume, "schedule a paused job again, from now on").add_argument("job")
    p = add("set", cmd_set, "override a job's schedule, or clear the override")
    p.add_argument("job")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--interval", help="e.g. 30s, 5m, 2h")
    which.add_argument("--cron", help='e.g. "0 6 * * 1-5"')
    which.add_argument("--clear", action="store_true", help="back to the schedule in the code")
    p.add_argument("--timezone", help="zone of a --cron schedule (default UTC)")
    add("instances", cmd_instances, "daemon instances: heartbeat, leader, jobs")
    p = add("alerts", cmd_alerts, "incidents raised by the watchdog (open ones by default)")
    p.add_argument("--all", action="store_true", help="closed incidents too")
    p.add_argument("--limit", type=_positive, default=50)
    add("notify-test", cmd_notify_test, "send a test notification to the configured Slack")
    p = add("db", cmd_db, "database schema: upgrade to this code's head, or show the revision")
    p.add_argument("action", choices=("upgrade", "current"))
    p = add("audit", cmd_audit, "operator changes (pause, resume, set, trigger), newest first")
    p.add_argument("job", nargs="?")
    p.add_argument("--limit", type=_positive, default=50)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_id(text: str) -> int:
    """A run id as the database stores it (a 64-bit integer): larger ones overflow the driver."""
    if not text.strip().isdigit() or len(text.strip()) > 18:
        raise argparse.ArgumentTypeError(f"not a run id (a whole number up to 18 digits): {text[:40]!r}")
    return int(text)


def _guarded(handler: Handler) -> Handler:
    """Map invalid values to exit 2 and refusals to exit 1, each as one line naming the target."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        from scheduler.operator.queries import RefusedError

        target = getattr(args, "job", None) or args.command
        try:
            return handler(settings, args)
        except JobDefinitionError as exc:
            print(f"error: {target}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except RefusedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL

    return run


@contextmanager
def _open(settings: Settings, *, migrate: bool = False) -> Iterator[Store]:
    """The store, refusing a database with no schema (a wrong URL) unless migrating."""
    if settings.is_sqlite and not migrate:
        path = settings.database_url.split(":///", 1)[-1]
        if path and path != ":memory:" and not Path(path).exists():
            raise StoreError(f"database file {path} does not exist (start the daemon or run 'db upgrade')")
    from scheduler.store import Store

    store = Store(settings.database_url)
    try:
        if not migrate and store.db.current_revision() is None:
            raise StoreError(f"database {store.safe_url} has no schema: run 'scheduler db upgrade'")
        yield store
    finally:
        store.dispose()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- reading ------------------------------------------------------------------


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    with _open(settings) as store:
        jobs = views.list_jobs(store, clock.now())
    if args.json:
        _print_json(jobs)
        return EXIT_OK
    rows = [
        [j["name"], j["schedule"], *_next_cells(j), j["last_status"] or "-", _yes(j["paused"])] for j in jobs
    ]
    print(table(["JOB", "SCHEDULE", "NEXT RUN (JOB ZONE)", "NEXT RUN (UTC)", "LAST", "PAUSED"], rows))
    return EXIT_OK


def _next_cells(job: dict[str, Any]) -> list[str]:
    if not job["enabled"]:
        return ["disabled", "-"]
    if job["paused"]:
        return ["paused", "-"]
    slot = job["next_run"]
    due = " (due)" if job["due"] else ""
    return [local_time(slot) + due, utc_time(slot["at"])]


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    with _open(settings) as store:
        job = views.show_job(store, args.job, clock.now())
    if args.json:
        _print_json(job)
        return EXIT_OK
    override = "yes (code: " + job["code_schedule"] + ")" if job["overridden"] else "no"
    pairs = [
        ("job", job["name"]),
        ("schedule", job["schedule"]),
        ("override", override),
        ("zone", job["timezone"]),
        ("state", "disabled in code" if not job["enabled"] else "paused" if job["paused"] else "active"),
        ("next run", " / ".join(_next_cells(job))),
        ("module", job["definition"].get("module", "-")),
        ("timeout", _seconds(job["definition"].get("timeout_seconds"))),
        ("retries", str(job["definition"].get("retries", 0))),
        ("overlap", job["definition"].get("overlap", "-")),
        ("catch-up", job["definition"].get("catchup", "-")),
        ("changed", f"{job['changed_at']} by {job['changed_by']}" if job["changed_by"] else "-"),
    ]
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key:<{width}}  {value}")
    print()
    print(runs_table(job["recent_runs"]) if job["recent_runs"] else "no runs yet")
    return EXIT_OK


def cmd_next(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    with _open(settings) as store:
        data = views.next_slots(store, args.job, clock.now(), args.n)
    if args.json:
        _print_json(data)
        return EXIT_OK
    state = " (paused: these slots pass unrun until resumed)" if data["paused"] else ""
    print(f"{data['job']}: {data['schedule']}{state}")
    rows = [[str(i), local_time(s), utc_time(s["at"])] for i, s in enumerate(data["slots"], 1)]
    print(table(["#", f"JOB ZONE ({data['timezone']})", "UTC"], rows))
    return EXIT_OK


def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    with _open(settings) as store:
        runs = views.list_runs(store, args.job, args.status, args.limit)
    if args.json:
        _print_json(runs)
    else:
        print(runs_table(runs) if runs else "no runs")
    return EXIT_OK


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    with _open(settings) as store:
        run = views.show_run(store, args.run_id)
    if args.json:
        _print_json(run)
        return EXIT_OK
    took = f", {run['duration_seconds']:.3f}s" if run["duration_seconds"] is not None else ""
    print(f"run {run['id']} of {run['job']}: {run['status']} (slot {utc_time(run['scheduled_for'])}{took})")
    print("-- log" + (" (truncated)" if run["log_truncated"] else ""))
    print((run["log"] or "(nothing captured)").rstrip("\n"))
    if run["error_type"]:
        print(f"-- error: {run['error_type']}: {run['error_message']}")
        if run["error_traceback"]:
            print(run["error_traceback"].rstrip("\n"))
    return EXIT_OK


def cmd_instances(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    with _open(settings) as store:
        found = views.list_instances(store, clock.now())
    if args.json:
        _print_json(found)
        return EXIT_OK
    headers = ["INSTANCE", "HOST", "PID", "STATUS", "LEADER", "HEARTBEAT (UTC)", "JOBS", "PROBLEMS"]
    rows = [
        [
            i["id"],
            i["host"],
            str(i["pid"]),
            i["status"],
            _yes(i["leader"]),
            utc_time(i["heartbeat_at"]),
            str(len(i["jobs"])),
            str(len(i["problems"])),
        ]
        for i in found
    ]
    print(table(headers, rows) if rows else "no instances have run against this database")
    return EXIT_OK


def cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    with _open(settings) as store:
        found = views.list_alerts(store, open_only=not args.all, limit=args.limit)
    if args.json:
        _print_json(found)
        return EXIT_OK
    headers = ["ID", "KIND", "SUBJECT", "OPENED (UTC)", "CLOSED (UTC)", "SUMMARY"]
    rows = [
        [
            str(i.get("id", "")),
            str(i.get("kind", "")),
            str(i.get("subject", "")),
            utc_time(i.get("opened_at")),
            utc_time(i.get("closed_at")),
            _short(str(i.get("summary", "")), 70),
        ]
        for i in found
    ]
    print(table(headers, rows) if rows else ("no open incidents" if not args.all else "no incidents"))
    return EXIT_OK


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    with _open(settings) as store:
        entries = views.list_audit(store, args.job, args.limit)
    if args.json:
        _print_json(entries)
        return EXIT_OK
    rows = [
        [
            utc_time(e["at"]),
            e["actor"],
            e["action"],
            e["job"] or "-",
            json.dumps(e["details"], sort_keys=True),
        ]
        for e in entries
    ]
    print(table(["AT (UTC)", "ACTOR", "ACTION", "JOB", "DETAILS"], rows) if rows else "no changes recorded")
    return EXIT_OK


# -- changing -----------------------------------------------------------------


def cmd_trigger(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    with _open(settings) as store:
        result = views.trigger(store, args.job, views.cli_actor(), clock.now())
    if args.json:
        _print_json(result)
        return EXIT_OK
    print(f"queued run {result['run_id']} of {result['job']}")
    if not result["instances"]:
        print(f"note: no live instance loads {result['job']}; the run waits until one starts")
    return EXIT_OK


def cmd_pause(settings: Settings, args: argparse.Namespace) -> int:
    return _set_paused(settings, args, True)


def cmd_resume(settings: Settings, args: argparse.Namespace) -> int:
    return _set_paused(settings, args, False)


def _set_paused(settings: Settings, args: argparse.Namespace, paused: bool) -> int:
    from scheduler.operator import queries as views

    actor = views.cli_actor()
    with _open(settings) as store:
        job = views.set_paused(store, args.job, paused, actor, clock.now())
    if args.json:
        _print_json(job)
    else:
        print(f"{'paused' if paused else 'resumed'} {job['name']} (by {actor})")
    return EXIT_OK


def cmd_set(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views

    actor = views.cli_actor()
    with _open(settings) as store:
        job = views.set_schedule(
            store,
            args.job,
            actor,
            clock.now(),
            interval=args.interval,
            cron=args.cron,
            timezone=args.timezone,
            clear=args.clear,
        )
    if args.json:
        _print_json(job)
        return EXIT_OK
    print(f"{job['name']}: {job['schedule']}{' (override)' if job['overridden'] else ' (from code)'}")
    if job["next_run"]:
        print(f"next run {local_time(job['next_run'])} = {utc_time(job['next_run']['at'])}")
    return EXIT_OK


def cmd_notify_test(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries as views
    from scheduler.operator.alerts import send_test  # slack_sdk only for this command

    result = send_test(settings)
    if args.json:
        _print_json({"sent": True, "result": views.plain(result)})
    else:
        print("test notification sent" + (f": {result}" if result else ""))
    return EXIT_OK


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    with _open(settings, migrate=True) as store:
        if args.action == "upgrade":
            store.upgrade()
        current, head = store.db.current_revision(), store.db.head_revision()
        url = store.safe_url
    if args.json:
        _print_json({"database": url, "current": current, "head": head, "up_to_date": current == head})
    else:
        state = "up to date" if current == head else f"behind: run 'db upgrade' to reach {head}"
        print(f"database {url}: revision {current or '(none)'}, {state}")
    return EXIT_OK if current == head else EXIT_FAIL


# -- formatting ---------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing blanks."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(f"{c:<{w}}" for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    return "\n".join(lines)


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    headers = ["RUN", "JOB", "SLOT (UTC)", "TRIGGER", "STATUS", "TRY", "DURATION", "ERROR"]
    rows = [
        [
            str(r["id"]),
            r["job"],
            utc_time(r["scheduled_for"]),
            r["trigger"],
            r["status"],
            str(r["attempt"]),
            _seconds(r["duration_seconds"]),
            _short(f"{r['error_type']}: {r['error_message']}", 60) if r["error_type"] else "",
        ]
        for r in runs
    ]
    return table(headers, rows)


def local_time(slot: dict[str, Any]) -> str:
    local = datetime.fromisoformat(slot["local"])
    return f"{local:%Y-%m-%d %H:%M:%S} {slot['abbreviation']}"


def utc_time(text: str | None) -> str:
    if not text:
        return "-"
    return f"{datetime.fromisoformat(text):%Y-%m-%d %H:%M:%S}Z"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s" if value < 60 else f"{value / 60:.1f}m"


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
