"""Command line: start | stop | restart | status | run | check, and the operator commands.

Runs as `python code/scheduler/control.py ...` (from the repo root, or from
`code/` with PYTHONPATH set) and as the `scheduler` console script. Exit
codes: 0 ok; 1 failure; 2 invalid configuration or usage; 3 not running
(`status`, as LSB asks).
"""

from __future__ import annotations

import os.path
import sys

if __package__ in (None, ""):
    # Run as a script: sys.path[0] is this folder, whose subpackages (operator/, daemon/, jobs/)
    # would shadow the standard library and python-daemon. Drop it before any other import.
    _here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from scheduler import config as config_module
from scheduler.config import Settings
from scheduler.daemon import pidfile
from scheduler.errors import ConfigError, SchedulerError

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_NOT_RUNNING = 0, 1, 2, 3
STOP_MARGIN = 15.0  # seconds `stop` waits beyond the grace period
START_WAIT = 60.0  # seconds `start` waits for the daemon to be up (`start --wait`)
PROGRESS = "importing "  # the daemon's start-up progress lines to `start`


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return _reader_went_away()


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config_module.load(flags=_flags(args), config_file=args.config)
        return int(args.handler(settings, args))
    except ConfigError as exc:
        print(f"config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SchedulerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL


def _reader_went_away() -> int:
    """`... | head` closed our stdout: stop quietly (no traceback, none at exit's flush either)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout already closed or replaced
        pass
    os.close(devnull)
    return EXIT_FAIL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scheduler", description="Job-scheduler daemon.")
    parser.add_argument("--config", type=Path, help="TOML settings file (or SCHEDULER_CONFIG)")
    parser.add_argument("--database-url", help="sqlite:///path or postgresql://... (SCHEDULER_DATABASE_URL)")
    parser.add_argument("--jobs-path", help="folder of job modules (SCHEDULER_JOBS_PATH)")
    parser.add_argument("--pidfile", help="pidfile path (SCHEDULER_PIDFILE)")
    parser.add_argument("--log-dir", help="log folder (SCHEDULER_LOG_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, handler, text in (
        ("start", cmd_start, "start the daemon in the background"),
        ("stop", cmd_stop, "stop the daemon (SIGTERM, then wait)"),
        ("restart", cmd_restart, "stop, then start"),
        ("status", cmd_status, "exit 0 if running, 3 if not"),
        ("run", cmd_run, "run in the foreground (for supervisord)"),
        ("check", cmd_check, "validate settings and job modules"),
    ):
        command = sub.add_parser(name, help=text)
        command.set_defaults(handler=handler)
        if name == "check":
            command.add_argument("--json", action="store_true", help="the same report as one JSON object")
        if name in ("start", "restart"):
            command.add_argument(
                "--wait",
                type=_seconds,
                default=START_WAIT,
                help=f"seconds to wait for start-up ({START_WAIT:g})",
            )
        if name == "status":
            command.add_argument("--json", action="store_true", help="print JSON instead of a line")
    from scheduler.operator import cli as commands

    commands.register(sub)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 86400, got {text!r}")
    return value


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "database_url": args.database_url,
        "jobs_path": args.jobs_path,
        "pidfile": args.pidfile,
        "log_dir": args.log_dir,
    }


# -- lifecycle ---------------------------------------------------------------


def _preflight(settings: Settings) -> None:
    """Refuse to start, in one line naming the setting, if a folder the daemon writes cannot be."""
    from scheduler import writable

    writable.require(settings.log_dir, "SCHEDULER_LOG_DIR")
    writable.require(settings.state_dir, "SCHEDULER_STATE_DIR")
    writable.require(settings.pidfile.parent, "SCHEDULER_PIDFILE")
    if (path := settings.sqlite_file) is not None:
        writable.require(path.parent, "SCHEDULER_DATABASE_URL")


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    _preflight(settings)
    lock = pidfile.make_lock(settings.pidfile)
    lock.acquire()
    try:
        code = _serve(settings, stderr=True)
    finally:
        if lock.i_am_locking():
            lock.release()
    if _jobs_still_running():
        # Their runs are already marked abandoned; but the interpreter joins the pool's
        # threads at exit and would wait for as long as these jobs run.
        logging.shutdown()
        os._exit(code)
    return code


def _jobs_still_running(patience: float = 0.5) -> bool:
    """True if a job thread outlived shutdown (idle pool threads end within `patience`)."""
    deadline = time.monotonic() + patience
    for thread in threading.enumerate():
        if thread.name.startswith("job"):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return True
    return False


def cmd_start(settings: Settings, args: argparse.Namespace) -> int:
    import daemon

    _preflight(settings)
    lock = pidfile.make_lock(settings.pidfile)
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        return _await_start(read_end, float(getattr(args, "wait", START_WAIT)), settings.pidfile)
    os.close(read_end)
    context = daemon.DaemonContext(
        pidfile=lock,
        working_directory=os.getcwd(),
        umask=0o022,
        files_preserve=[write_end],
        signal_map={},  # handlers are installed by _serve
    )
    try:
        with context:
            code = _serve(settings, stderr=False, ready_fd=write_end)
    except BaseException as exc:  # report to the waiting parent, whatever happened
        _tell(write_end, f"error: {exc}")
        os._exit(EXIT_FAIL)
    os._exit(code)


def _await_start(read_end: int, patience: float, pid_path: Path) -> int:
    """Wait for the daemon's "ok"/"error" line; give up after `patience` seconds, naming where it is."""
    deadline = time.monotonic() + patience
    buffer, importing = b"", ""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return _give_up(patience, importing, pid_path)
            chunk = pipe.read(4096)
            buffer += chunk or b""
            *lines, rest = buffer.split(b"\n")
            for line in (x.decode(errors="replace").strip() for x in lines):
                if line.startswith(PROGRESS):
                    importing = line.removeprefix(PROGRESS)
                elif line:
                    return _started(line)
            buffer = rest
            if not chunk:
                return _started(buffer.decode(errors="replace").strip())


def _started(message: str) -> int:
    message = message or "error: the daemon exited during start-up"
    if message.startswith("ok"):
        print(f"started{message[2:]}")
        return EXIT_OK
    print(message, file=sys.stderr)
    return EXIT_FAIL


def _give_up(patience: float, importing: str, pid_path: Path) -> int:
    """Start-up hangs (a job module loops at import time): stop that daemon and say where it was."""
    where = f"; stuck importing job module {importing}" if importing else ""
    pid = pidfile.running_pid(pid_path)
    if pid is not None:
        for _ in range(2):  # a second SIGTERM makes the daemon exit at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            time.sleep(0.2)  # the handler runs between the two signals
    print(
        f"error: the daemon did not finish starting within {patience:g}s{where}; stopped it", file=sys.stderr
    )
    return EXIT_FAIL


@contextlib.contextmanager
def _progress_to(fd: int | None) -> Iterator[None]:
    """While starting, tell the waiting `start` each job module imported (not on later reloads)."""
    if fd is None:
        yield
        return
    from scheduler.jobs import discovery

    def tell(path: str) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, f"{PROGRESS}{path}\n".encode())

    discovery.on_import.append(tell)
    try:
        yield
    finally:
        discovery.on_import.remove(tell)


def _tell(fd: int | None, message: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, message.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _serve(settings: Settings, *, stderr: bool, ready_fd: int | None = None) -> int:
    from scheduler.daemon import logsetup
    from scheduler.daemon.wiring import build_service

    log_path = logsetup.configure(
        settings.log_dir, settings.log_level, settings.log_max_bytes, settings.log_backups, stderr=stderr
    )
    service = build_service(settings)
    _install_signals(service)
    try:
        with _progress_to(ready_fd):
            service.start()
    except SchedulerError as exc:
        _tell(ready_fd, f"error: {exc}")
        if ready_fd is None:
            raise
        return EXIT_FAIL
    _tell(ready_fd, f"ok (pid {os.getpid()}, log {log_path})")
    service.serve_forever()
    return EXIT_OK


def _install_signals(service: Any) -> None:
    def on_stop(signum: int, _frame: FrameType | None) -> None:
        if service.stop_event.is_set():
            os._exit(EXIT_FAIL)  # a second SIGTERM/SIGINT: exit at once
        service.request_stop()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        service.reload_event.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)


def cmd_stop(settings: Settings, _args: argparse.Namespace) -> int:
    record = pidfile.running(settings.pidfile)
    if record is None:
        pidfile.running_pid(settings.pidfile)  # removes a stale file
        print("not running")
        return EXIT_OK
    pid = record.pid
    os.kill(pid, signal.SIGTERM)
    patience = settings.grace_period.total_seconds() + STOP_MARGIN
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if not pidfile.is_ours(record):
            print(f"stopped (pid {pid})")
            return EXIT_OK
        time.sleep(0.1)  # polling another process's exit; there is no event to wait on
    print(f"error: pid {pid} still running after {patience:.0f}s; not killed", file=sys.stderr)
    return EXIT_FAIL


def cmd_restart(settings: Settings, args: argparse.Namespace) -> int:
    code = cmd_stop(settings, args)
    return code if code != EXIT_OK else cmd_start(settings, args)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    record = pidfile.running(settings.pidfile)
    if record is not None:
        state, code, text = "running", EXIT_OK, f"running (pid {record.pid})"
    elif settings.pidfile.exists():
        # LSB: 1 = "program is dead and the pidfile exists" (or names a process that is not ours).
        state, code, text = "stale", EXIT_FAIL, f"not running (stale pidfile {settings.pidfile})"
    else:
        state, code, text = "stopped", EXIT_NOT_RUNNING, "not running"
    if getattr(args, "json", False):
        pid = record.pid if record else None
        print(
            json.dumps(
                {"state": state, "running": record is not None, "pid": pid, "pidfile": str(settings.pidfile)}
            )
        )
    else:
        print(text)
    return code


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.operator import check

    return check.run(settings, as_json=bool(getattr(args, "json", False)))


if __name__ == "__main__":
    sys.exit(main())
