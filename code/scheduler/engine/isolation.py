"""Process isolation: a run executed in a child process, in its own process group.

Children are forked by multiprocessing's forkserver, which imported the job
modules once (`scheduler.engine.preload`), so a run costs a fork, not an
interpreter start. The daemon's thread that owns the run waits for the child:

- its stdout, stderr and logging go to a file that becomes the run's log;
- an exception (or `sys.exit(n)`, n != 0) comes back over a pipe and is raised
  in the runner's thread as `ChildFailed`, so retries treat it as any exception;
- an exit without a result (`os._exit`, a signal, the OOM killer) becomes
  `ChildFailed` naming the exit status or the signal;
- at the timeout the process group gets SIGTERM, then SIGKILL after
  `KILL_GRACE`; at shutdown it gets SIGTERM and the child ends `ChildStopped`.

Whatever the child leaves in its process group is killed when the run ends.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import resource
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from scheduler.clock import Clock
from scheduler.engine import proctitle
from scheduler.jobs.registry import JobSpec

log = logging.getLogger(__name__)

KILL_GRACE = 3.0  # seconds from SIGTERM to SIGKILL
POLL = 0.2
PRELOAD_ENV = "SCHEDULER_ISOLATION_PRELOAD"  # jobs folder the forkserver imports once
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ChildFailed(Exception):
    """The child ended without success; carries the child's own error, not the daemon's."""

    def __init__(self, error_type: str, message: str, child_traceback: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.child_traceback = child_traceback


class ChildStopped(Exception):
    """The child ended on the shutdown's SIGTERM."""


class RunStopped(BaseException):
    """Raised inside the child by SIGTERM, like KeyboardInterrupt for SIGINT."""


@dataclass(frozen=True)
class Request:
    job: str
    module_file: str
    jobs_path: str
    run_id: int
    scheduled_for: datetime
    attempt: int
    log_path: str
    log_level: int
    memory_limit: int | None
    cpu_seconds: int | None
    title: str


class ProcessIsolation:
    """Starts process runs and keeps their process groups, to kill them at shutdown."""

    def __init__(self, jobs_path: Path | None = None, default: str = "thread") -> None:
        self.jobs_path = jobs_path
        self.default = default
        self._ctx = multiprocessing.get_context("forkserver")
        self._groups: dict[int, int] = {}  # run_id -> pid, which is also the child's pgid
        self._lock = threading.Lock()

    def applies(self, spec: JobSpec) -> bool:
        return spec.isolated(self.default)

    def prewarm(self) -> None:
        """Start the forkserver now (importing the job modules), not at the first process run."""
        if self.jobs_path is not None:
            os.environ[PRELOAD_ENV] = str(self.jobs_path)
        self._ctx.set_forkserver_preload(["__main__", "scheduler.engine.preload"])
        multiprocessing.forkserver.ensure_running()

    def running(self) -> dict[int, int]:
        with self._lock:
            return dict(self._groups)

    def run(
        self,
        spec: JobSpec,
        run_id: int,
        scheduled_for: datetime,
        attempt: int,
        deadline: float | None,
        clock: Clock,
        cancelled: threading.Event,
        write_log: Any,
    ) -> None:
        """Run one attempt in a child; returns on success.

        Raises ChildFailed (error, exit status or signal), ChildStopped (shutdown).
        At `deadline` (on `clock.monotonic()`) the child is killed and ChildFailed raised.
        """
        handle, log_path = tempfile.mkstemp(prefix=f"scheduler-run-{run_id}-", suffix=".log")
        os.close(handle)
        request = self._request(spec, run_id, scheduled_for, attempt, log_path)
        receive, send = self._ctx.Pipe(duplex=False)
        child = self._ctx.Process(target=child_main, args=(request, send), name=f"run-{run_id}")
        try:
            child.start()
            send.close()
            assert child.pid is not None
            with self._lock:
                self._groups[run_id] = child.pid
            try:
                message, how = _wait(child, receive, deadline, clock, cancelled)
            finally:
                _kill_group(child.pid, signal.SIGKILL)  # what the run left behind in its group
                with self._lock:
                    self._groups.pop(run_id, None)
                child.join(KILL_GRACE)
            code = child.exitcode
        finally:
            receive.close()
            write_log(_read_log(log_path))
        _raise_for(message, how, code, request)

    def _request(self, spec: JobSpec, run_id: int, slot: datetime, attempt: int, log_path: str) -> Request:
        stem = spec.module.rsplit(".", 1)[-1]
        jobs = self.jobs_path or Path(sys.modules[spec.module].__file__ or ".").parent
        loaded = getattr(sys.modules.get(spec.module), "__file__", None)  # sub-folders included
        return Request(
            job=spec.name,
            module_file=loaded or str(jobs / f"{stem}.py"),
            jobs_path=str(jobs),
            run_id=run_id,
            scheduled_for=slot,
            attempt=attempt,
            log_path=log_path,
            log_level=logging.getLogger().getEffectiveLevel(),
            memory_limit=spec.memory_limit,
            cpu_seconds=int(spec.cpu_limit.total_seconds()) if spec.cpu_limit else None,
            title=proctitle.base(),
        )

    def kill_all(self) -> int:
        """SIGKILL the process group of every process run still going; returns how many."""
        groups = self.running()
        for pid in groups.values():
            _kill_group(pid, signal.SIGKILL)
        return len(groups)


def _wait(
    child: Any,
    receive: multiprocessing.connection.Connection,
    deadline: float | None,
    clock: Clock,
    cancelled: threading.Event,
) -> tuple[tuple[Any, ...] | None, str]:
    """Wait for the child's result or end. Returns (message or None, "" | "timeout" | "stop")."""
    how, term_at, message = "", 0.0, None
    while True:
        if not how:
            if deadline is not None and clock.monotonic() >= deadline:
                how = "timeout"
            elif cancelled.is_set():
                how = "stop"
            if how:
                _kill_group(child.pid, signal.SIGTERM)
                term_at = time.monotonic()
        elif how == "timeout" and time.monotonic() - term_at >= KILL_GRACE:
            _kill_group(child.pid, signal.SIGKILL)
        ready = multiprocessing.connection.wait([receive, child.sentinel], POLL)
        if receive in ready and message is None:
            try:
                message = receive.recv()
            except (EOFError, OSError):
                message = None
            # A result is in: the child only has to exit (its non-daemon threads may hold it).
            child.join(KILL_GRACE)
            return message, how
        if child.sentinel in ready:
            return message, how


def _raise_for(message: tuple[Any, ...] | None, how: str, code: int | None, request: Request) -> None:
    if message is not None:
        kind = message[0]
        if kind == "ok":
            return
        if kind == "stopped":
            raise ChildStopped("stopped by SIGTERM at shutdown")
        raise ChildFailed(message[1], message[2], message[3])
    if how == "stop":
        raise ChildStopped("killed at shutdown")
    raise ChildFailed(*_death(code, how))


def _death(code: int | None, how: str) -> tuple[str, str]:
    """The error for a child that ended without a result: (type, message)."""
    if how == "timeout":
        return "Timeout", "the run's process was killed"
    if code is None:
        return "ChildKilled", "the run's process vanished"
    if code < 0:
        number = -code
        if number == signal.SIGKILL:
            return "ChildKilled", f"killed by signal {number} (out of memory?)"
        if number == signal.SIGXCPU:
            return "ChildKilled", f"killed by signal {number} (SIGXCPU: cpu_limit reached)"
        return "ChildKilled", f"killed by signal {number} ({_signal_name(number)})"
    return "ChildExited", f"the run's process exited with status {code} without finishing (os._exit?)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _kill_group(pid: int | None, sig: int) -> None:
    if pid is None or pid <= 1:
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group is gone and its id reused by someone else's
        pass


def _read_log(path: str, limit: int = 4 * 1024 * 1024) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
        os.unlink(path)
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


# -- in the child ---------------------------------------------------------------


def child_main(request: Request, send: multiprocessing.connection.Connection) -> None:
    """The child's whole life: own group, title, output, limits, then the job."""
    os.setpgid(0, 0)
    proctitle.set_title(f"{request.title} [scheduler run {request.job} #{request.run_id}]")
    _redirect_output(request)
    _apply_limits(request)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the daemon's terminal is the daemon's
    try:
        send.send(_call(request))
    except BaseException as exc:  # an unpicklable exception, or the pipe gone: say what we can
        with contextlib.suppress(BaseException):
            send.send(("error", type(exc).__name__, str(exc)[:2000], ""))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        send.close()


def _call(request: Request) -> tuple[Any, ...]:
    from scheduler.engine import preload
    from scheduler.engine.context import JobContext

    cancelled = threading.Event()
    global _cancelled
    _cancelled = cancelled
    try:
        spec = preload.find(request.job, Path(request.module_file), Path(request.jobs_path))
        if spec.wants_ctx:
            ctx = JobContext(
                job=spec.name,
                scheduled_for=request.scheduled_for,
                run_id=request.run_id,
                attempt=request.attempt,
                log=logging.getLogger(f"scheduler.job.{spec.name}"),
                cancelled=cancelled,
            )
            spec.func(ctx)
        else:
            spec.func(*spec.args, **spec.kwargs)
    except RunStopped:
        return ("stopped",)
    except SystemExit as exc:
        if exc.code in (None, 0):
            return ("ok",)
        return _error(exc, request)
    except BaseException as exc:
        return _error(exc, request)
    return ("ok",)


def _error(exc: BaseException, request: Request) -> tuple[Any, ...]:
    message = str(exc)[:2000]
    if isinstance(exc, MemoryError) and request.memory_limit:
        message = f"out of memory under memory_limit={request.memory_limit} bytes" + (
            f": {message}" if message else ""
        )
    return ("error", type(exc).__name__, message, "".join(traceback.format_exception(exc))[-8000:])


_cancelled: threading.Event | None = None


def _on_sigterm(_signum: int, _frame: object) -> None:
    if _cancelled is not None:
        _cancelled.set()
    raise RunStopped()


def _redirect_output(request: Request) -> None:
    fd = os.open(request.log_path, os.O_WRONLY | os.O_APPEND)
    for target in (1, 2):
        if fd != target:
            os.dup2(fd, target)
    if fd > 2:  # a forkserver started by a daemonized parent may lack fd 1 or 2: os.open took it
        os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(request.log_level)


def _apply_limits(request: Request) -> None:
    if request.memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (request.memory_limit, request.memory_limit))
    if request.cpu_seconds:
        # The soft limit sends SIGXCPU; the hard one, a second later, SIGKILL.
        resource.setrlimit(resource.RLIMIT_CPU, (request.cpu_seconds, request.cpu_seconds + 1))
