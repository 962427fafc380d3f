"""Operator commands (jobs, history, pause, ...): registered on the control.py parser.

Every command reads or writes the database directly, so it works whether or
not a daemon runs, and prints an aligned table or, with `--json`, the same
dicts the HTTP API returns (see `queries`). Exit codes: 0 ok; 1 failure or not
found; 2 usage or an invalid value. Errors are one line on stderr. Every command's
parser is built from here: the store and the read model are imported by the handlers.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from scheduler.clock import SystemClock
from scheduler.config import Settings
from scheduler.errors import JobDefinitionError, RefusedError, StoreError
from scheduler.operator import RUN_STATUSES

if TYPE_CHECKING:
    from scheduler.store import Store
    from scheduler.store.reads import Reader

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
Handler = Callable[[Settings, argparse.Namespace], int]
clock = SystemClock()


def cli_actor() -> str:
    """`user@host`, as written to the audit table for a command-line change."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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
    _refuse_missing_file(settings, migrate)
    from scheduler.store import Store

    with _checked(Store(settings.database_url), migrate) as store:
        yield store


@contextmanager
def _read(settings: Settings) -> Iterator[Reader]:
    """What a read command reads through: on a plain SQLite file the lean reader, which imports
    no SQLAlchemy (its import alone takes longer than such a command may); else the store."""
    from scheduler.store import lite

    file = lite.file_of(settings.database_url)
    if file is None:
        with _open(settings) as store:
            yield store
        return
    _refuse_missing_file(settings, False)
    with _checked(lite.LiteReader(settings.database_url, file), False) as reader:
        yield reader


def _refuse_missing_file(settings: Settings, migrate: bool) -> None:
    path = settings.sqlite_file
    if path is not None and not migrate and not path.exists():
        raise StoreError(f"database file {path} does not exist (start the daemon or run 'db upgrade')")


class _Opened(Protocol):
    @property
    def safe_url(self) -> str: ...

    def current_revision(self) -> str | None: ...

    def dispose(self) -> None: ...


_O = TypeVar("_O", bound=_Opened)


@contextmanager
def _checked(opened: _O, migrate: bool) -> Iterator[_O]:
    try:
        if not migrate and opened.current_revision() is None:
            raise StoreError(f"database {opened.safe_url} has no schema: run 'scheduler db upgrade'")
        yield opened
    finally:
        opened.dispose()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- reading ------------------------------------------------------------------


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    with _read(settings) as store:
        jobs = queries.list_jobs(store, clock.now())
    if args.json:
        _print_json(jobs)
        return EXIT_OK
    rows = [
        [j["name"], j["schedule"], *tables.next_cells(j), j["last_status"] or "-", tables.yes(j["paused"])]
        for j in jobs
    ]
    print(tables.table(["JOB", "SCHEDULE", "NEXT RUN (JOB ZONE)", "NEXT RUN (UTC)", "LAST", "PAUSED"], rows))
    return EXIT_OK


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.humanize import duration
    from scheduler.operator import queries, tables

    with _read(settings) as store:
        job = queries.show_job(store, args.job, clock.now())
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
        ("next run", " / ".join(tables.next_cells(job))),
        ("module", job["definition"].get("module", "-")),
        ("timeout", duration(job["definition"].get("timeout_seconds"))),
        ("retries", str(job["definition"].get("retries", 0))),
        ("overlap", job["definition"].get("overlap", "-")),
        ("catch-up", job["definition"].get("catchup", "-")),
        ("changed", f"{job['changed_at']} by {job['changed_by']}" if job["changed_by"] else "-"),
    ]
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key:<{width}}  {value}")
    print()
    print(tables.runs_table(job["recent_runs"]) if job["recent_runs"] else "no runs yet")
    return EXIT_OK


def cmd_next(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    with _read(settings) as store:
        data = queries.next_slots(store, args.job, clock.now(), args.n)
    if args.json:
        _print_json(data)
        return EXIT_OK
    state = " (paused: these slots pass unrun until resumed)" if data["paused"] else ""
    print(f"{data['job']}: {data['schedule']}{state}")
    rows = [[str(i), tables.local_time(s), tables.utc_time(s["at"])] for i, s in enumerate(data["slots"], 1)]
    print(tables.table(["#", f"JOB ZONE ({data['timezone']})", "UTC"], rows))
    return EXIT_OK


def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    with _read(settings) as store:
        runs = queries.list_runs(store, args.job, args.status, args.limit)
    if args.json:
        _print_json(runs)
    else:
        print(tables.runs_table(runs) if runs else "no runs")
    return EXIT_OK


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.humanize import duration
    from scheduler.operator import queries, tables

    with _read(settings) as store:
        run = queries.show_run(store, args.run_id)
    if args.json:
        _print_json(run)
        return EXIT_OK
    took = f", {duration(run['duration_seconds'])}" if run["duration_seconds"] is not None else ""
    slot = tables.utc_time(run["scheduled_for"])
    print(f"run {run['id']} of {run['job']}: {run['status']} (slot {slot}{took})")
    print("-- log" + (" (truncated)" if run["log_truncated"] else ""))
    print((run["log"] or "(nothing captured)").rstrip("\n"))
    if run["error_type"]:
        print(f"-- error: {run['error_type']}: {run['error_message']}")
        if run["error_traceback"]:
            print(run["error_traceback"].rstrip("\n"))
    return EXIT_OK


def cmd_instances(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    with _open(settings) as store:
        found = queries.list_instances(store, clock.now())
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
            tables.yes(i["leader"]),
            tables.utc_time(i["heartbeat_at"]),
            str(len(i["jobs"])),
            str(len(i["problems"])),
        ]
        for i in found
    ]
    print(tables.table(headers, rows) if rows else "no instances have run against this database")
    return EXIT_OK


def cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.humanize import short
    from scheduler.operator import queries, tables

    with _open(settings) as store:
        found = queries.list_alerts(store, open_only=not args.all, limit=args.limit)
    if args.json:
        _print_json(found)
        return EXIT_OK
    headers = ["ID", "KIND", "SUBJECT", "OPENED (UTC)", "CLOSED (UTC)", "SUMMARY"]
    rows = [
        [
            str(i.get("id", "")),
            str(i.get("kind", "")),
            str(i.get("subject", "")),
            tables.utc_time(i.get("opened_at")),
            tables.utc_time(i.get("closed_at")),
            short(str(i.get("summary", "")), 70),
        ]
        for i in found
    ]
    print(tables.table(headers, rows) if rows else ("no open incidents" if not args.all else "no incidents"))
    return EXIT_OK


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    with _open(settings) as store:
        entries = queries.list_audit(store, args.job, args.limit)
    if args.json:
        _print_json(entries)
        return EXIT_OK
    rows = [
        [
            tables.utc_time(e["at"]),
            e["actor"],
            e["action"],
            e["job"] or "-",
            json.dumps(e["details"], sort_keys=True),
        ]
        for e in entries
    ]
    print(
        tables.table(["AT (UTC)", "ACTOR", "ACTION", "JOB", "DETAILS"], rows)
        if rows
        else "no changes recorded"
    )
    return EXIT_OK


# -- changing -----------------------------------------------------------------


def cmd_trigger(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import actions

    with _open(settings) as store:
        result = actions.trigger(store, args.job, cli_actor(), clock.now())
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
    from scheduler.operator import actions

    actor = cli_actor()
    with _open(settings) as store:
        job = actions.set_paused(store, args.job, paused, actor, clock.now())
    if args.json:
        _print_json(job)
    else:
        print(f"{'paused' if paused else 'resumed'} {job['name']} (by {actor})")
    return EXIT_OK


def cmd_set(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import actions, tables

    actor = cli_actor()
    with _open(settings) as store:
        job = actions.set_schedule(
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
        print(f"next run {tables.local_time(job['next_run'])} = {tables.utc_time(job['next_run']['at'])}")
    return EXIT_OK


def cmd_notify_test(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries
    from scheduler.operator.alerts import send_test  # slack_sdk only for this command

    result = send_test(settings)
    if args.json:
        _print_json({"sent": True, "result": queries.plain(result)})
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
