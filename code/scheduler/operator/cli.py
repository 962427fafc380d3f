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
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from scheduler.clock import SystemClock
from scheduler.config import Settings
from scheduler.errors import JobDefinitionError, StoreError
from scheduler.operator import RUN_STATUSES

if TYPE_CHECKING:
    from scheduler.store import Store
    from scheduler.store.reads import Reader

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
Handler = Callable[[Settings, argparse.Namespace], int]
clock = SystemClock()
S = TypeVar("S")
T = TypeVar("T")


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
    """Map invalid values to exit 2, as one line naming the target. Every other error (a refusal,
    a missing job) ends the command as any command's does: one line, exit 1 (control._main)."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        target = getattr(args, "job", None) or args.command
        try:
            return handler(settings, args)
        except JobDefinitionError as exc:
            print(f"error: {target}: {exc}", file=sys.stderr)
            return EXIT_USAGE

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


def _answer(
    source: AbstractContextManager[S],
    args: argparse.Namespace,
    query: Callable[[S], T],
    text: Callable[[T], str],
) -> int:
    """Run `query` on what `source` opens (`_read`, `_open`), then print what it returned: as JSON
    with --json, else as `text`."""
    with source as opened:
        data = query(opened)
    if args.json:
        _print_json(data)
    else:
        print(text(data))
    return EXIT_OK


# -- reading (the text of each answer: operator/tables.py) ---------------------


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    return _answer(
        _read(settings), args, lambda store: queries.list_jobs(store, clock.now()), tables.jobs_table
    )


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    return _answer(
        _read(settings), args, lambda store: queries.show_job(store, args.job, clock.now()), tables.job_text
    )


def cmd_next(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    def query(store: Reader) -> dict[str, Any]:
        return queries.next_slots(store, args.job, clock.now(), args.n)

    return _answer(_read(settings), args, query, tables.slots_text)


def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    def query(store: Reader) -> list[dict[str, Any]]:
        return queries.list_runs(store, args.job, args.status, args.limit)

    return _answer(_read(settings), args, query, lambda runs: tables.runs_table(runs) if runs else "no runs")


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    return _answer(_read(settings), args, lambda store: queries.show_run(store, args.run_id), tables.run_text)


def cmd_instances(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    def query(store: Store) -> list[dict[str, Any]]:
        return queries.list_instances(store, clock.now())

    return _answer(_open(settings), args, query, tables.instances_table)


def cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    def query(store: Store) -> list[dict[str, Any]]:
        return queries.list_alerts(store, open_only=not args.all, limit=args.limit)

    return _answer(
        _open(settings), args, query, lambda found: tables.alerts_table(found, open_only=not args.all)
    )


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import queries, tables

    def query(store: Store) -> list[dict[str, Any]]:
        return queries.list_audit(store, args.job, args.limit)

    return _answer(_open(settings), args, query, tables.audit_table)


# -- changing -----------------------------------------------------------------


def cmd_trigger(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import actions

    def text(result: dict[str, Any]) -> str:
        queued = f"queued run {result['run_id']} of {result['job']}"
        if result["instances"]:
            return queued
        return f"{queued}\nnote: no live instance loads {result['job']}; the run waits until one starts"

    return _answer(
        _open(settings), args, lambda store: actions.trigger(store, args.job, cli_actor(), clock.now()), text
    )


def cmd_pause(settings: Settings, args: argparse.Namespace) -> int:
    return _set_paused(settings, args, True)


def cmd_resume(settings: Settings, args: argparse.Namespace) -> int:
    return _set_paused(settings, args, False)


def _set_paused(settings: Settings, args: argparse.Namespace, paused: bool) -> int:
    from scheduler.operator import actions

    actor = cli_actor()

    def query(store: Store) -> dict[str, Any]:
        return actions.set_paused(store, args.job, paused, actor, clock.now())

    return _answer(
        _open(settings),
        args,
        query,
        lambda job: f"{'paused' if paused else 'resumed'} {job['name']} (by {actor})",
    )


def cmd_set(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import actions, tables

    actor = cli_actor()

    def change(store: Store) -> dict[str, Any]:
        return actions.set_schedule(
            store,
            args.job,
            actor,
            clock.now(),
            interval=args.interval,
            cron=args.cron,
            timezone=args.timezone,
            clear=args.clear,
        )

    return _answer(_open(settings), args, change, tables.schedule_text)


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
