"""Job declarations: the `@job` decorator, `JobSpec`, and the registry it fills.

`job(...)` registers a job when it is called, into the registry of the job
module being loaded (`scheduler.jobs.discovery` loads them), the way
APScheduler's `scheduled_job` and Celery's `@app.task` do: nothing depends on
where the module keeps the callable afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from scheduler.errors import JobDefinitionError
from scheduler.jobs.schedules import CronSchedule, IntervalSchedule, Schedule, parse_timezone

log = logging.getLogger(__name__)

Overlap = Literal["skip", "queue"]
Catchup = Literal["latest", "all", "skip"]
# "slot": the first grid slot after the job is first loaded; "interval": one interval later (timeloop's way).
FirstRun = Literal["slot", "interval"]
F = TypeVar("F", bound=Callable[..., Any])
Isolation = Literal["thread", "process"]
ISOLATIONS = ("thread", "process")
_SPEC_ATTR = "__scheduler_job__"
MODULE_PREFIX = "scheduler_jobs."


@dataclass(frozen=True)
class JobSpec:
    """A job as declared in code. Operator overrides live in the database."""

    name: str
    func: Callable[..., Any] = field(compare=False, repr=False)
    module: str
    interval: timedelta | None = None
    cron: str | None = None
    timezone: str = "UTC"
    timeout: timedelta | None = None
    retries: int = 0
    retry_delay: timedelta = timedelta(seconds=10)
    overlap: Overlap = "skip"
    catchup: Catchup = "latest"
    start_at: datetime | None = None
    first_run: FirstRun = "slot"
    jitter: timedelta = timedelta(0)
    enabled: bool = True
    grace: timedelta | None = None
    alert_after_failures: int = 1
    named: bool = field(default=True, compare=False)  # False: named after its callable by default
    # None: SCHEDULER_DEFAULT_ISOLATION decides (process when a limit is set).
    isolation: Isolation | None = None
    memory_limit: int | None = None  # bytes of address space (RLIMIT_AS), process runs only
    cpu_limit: timedelta | None = None  # CPU time (RLIMIT_CPU), process runs only
    wants_ctx: bool = field(default=False, compare=False)
    args: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def schedule(self, anchor: datetime) -> Schedule:
        """The schedule as declared; `anchor` starts an interval grid."""
        if self.interval is not None:
            return IntervalSchedule(self.interval, self.start_at or anchor)
        assert self.cron is not None
        return CronSchedule(self.cron, self.timezone)

    def describe(self) -> str:
        return self.schedule(datetime(2026, 1, 1, tzinfo=UTC)).describe()

    def definition(self) -> dict[str, Any]:
        """The JSON-able definition stored in the jobs table."""
        return {
            "module": self.module,
            "interval_seconds": self.interval.total_seconds() if self.interval else None,
            "cron": self.cron,
            "timezone": self.timezone,
            "timeout_seconds": self.timeout.total_seconds() if self.timeout else None,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay.total_seconds(),
            "overlap": self.overlap,
            "catchup": self.catchup,
            "start_at": self.start_at.isoformat() if self.start_at else None,
            "jitter_seconds": self.jitter.total_seconds(),
            "enabled": self.enabled,
            "grace_seconds": self.grace.total_seconds() if self.grace else None,
            "alert_after_failures": self.alert_after_failures,
            # Only when set, so that definitions stored before the option existed do not change.
            **({"first_run": self.first_run} if self.first_run != "slot" else {}),
            "isolation": self.isolation,
            "memory_limit": self.memory_limit,
            "cpu_limit_seconds": self.cpu_limit.total_seconds() if self.cpu_limit else None,
        }

    def isolated(self, default: str = "thread") -> bool:
        """True if runs execute in a child process (declared, a limit set, or the default)."""
        if self.isolation is not None:
            return self.isolation == "process"
        return default == "process" or self.memory_limit is not None or self.cpu_limit is not None


def retry_allowed(attempt: int, retries: int) -> bool:
    """The retry policy, for the runner (after an error) and the leader (after a lost instance):
    attempt `attempt` failed; another follows while attempts stay within 1 + `retries`."""
    return attempt <= retries


def retries_in(definition: dict[str, Any]) -> int:
    """`retries` of a stored definition (JobSpec.definition()); 0 if absent."""
    return int(definition.get("retries") or 0)


def job(
    interval: timedelta | None = None,
    *,
    cron: str | None = None,
    timezone: str = "UTC",
    name: str | None = None,
    timeout: timedelta | None = None,
    retries: int = 0,
    retry_delay: timedelta = timedelta(seconds=10),
    overlap: Overlap = "skip",
    catchup: Catchup = "latest",
    start_at: datetime | None = None,
    first_run: FirstRun = "slot",
    jitter: timedelta = timedelta(0),
    enabled: bool = True,
    grace: timedelta | None = None,
    alert_after_failures: int = 1,
    isolation: Isolation | None = None,
    memory_limit: int | str | None = None,
    cpu_limit: timedelta | None = None,
) -> Callable[[F], F]:
    """Declare a job: `@job(interval=timedelta(seconds=30))` or `@job(cron=..., timezone=...)`.

    The job is registered when this is called, into the module being loaded,
    so any callable works and nothing depends on how the module keeps it:
    functions, `functools.partial`, lambdas and callable objects (these three
    with `name=` unless their wrapped function names them), static and bound
    methods, jobs made in a loop. Each call is one job; the callable is
    returned unchanged. Raises JobDefinitionError, naming the job, for an
    invalid declaration.
    """
    caller = str(sys._getframe(1).f_globals.get("__name__", ""))
    options = dict(
        interval=interval,
        cron=cron,
        timezone=timezone,
        timeout=timeout,
        retries=retries,
        retry_delay=retry_delay,
        overlap=overlap,
        catchup=catchup,
        start_at=start_at,
        first_run=first_run,
        jitter=jitter,
        enabled=enabled,
        grace=grace,
        alert_after_failures=alert_after_failures,
        isolation=isolation,
        memory_limit=memory_limit,
        cpu_limit=cpu_limit,
    )

    def decorate(func: F) -> F:
        return _declare_job(func, caller, name, options)

    return decorate


def _declare_job(func: F, caller: str, name: str | None, options: dict[str, Any]) -> F:
    """`@job`'s registration: into the job module being loaded, else the module that called `job`."""
    if not callable(func):
        raise JobDefinitionError(f"@job needs a callable, got {func!r}")
    module = discovery_module() or caller
    spec = make_spec(
        func,
        name=name or f"{module_label(module)}.{default_name(func)}",
        module=module,
        named=name is not None,
        **(options | {"memory_limit": parse_bytes(options["memory_limit"])}),
    )
    declare(spec)
    with contextlib.suppress(AttributeError, TypeError):  # bound methods, slots, builtins
        setattr(func, _SPEC_ATTR, spec)
    return func


def default_name(func: Callable[..., Any]) -> str:
    """The name part of a job named after its callable; raises JobDefinitionError if it has none."""
    inner = func
    while isinstance(inner, functools.partial):
        inner = inner.func
    own = getattr(inner, "__name__", None)
    if own is None:  # a callable object: named after its class
        own = type(inner).__name__
    if own == "<lambda>":
        raise JobDefinitionError("a lambda has no name of its own: give @job a name=")
    qualname = getattr(inner, "__qualname__", own)
    return qualname if isinstance(qualname, str) and "<" not in qualname else str(own)


def module_label(module_name: str) -> str:
    """A module's name as shown in job names: `scheduler_jobs.billing.x` -> `billing.x`."""
    return module_name.removeprefix(MODULE_PREFIX)


# -- the registry of the module being loaded -------------------------------------------

_declared: dict[str, list[JobSpec]] = {}  # module name -> its jobs, in declaration order
_executing: list[str] = []  # job modules being executed, innermost last
_declared_lock = threading.RLock()


def discovery_module() -> str | None:
    """The job module whose code runs now (inside an import by the loader), if any."""
    return _executing[-1] if _executing else None


def declare(spec: JobSpec) -> None:
    """Add a job to the registry of the module that declares it."""
    with _declared_lock:
        _declared.setdefault(spec.module, []).append(spec)


def declared_in(module_name: str) -> list[JobSpec]:
    with _declared_lock:
        return list(_declared.get(module_name, []))


def forget(prefix: str) -> None:
    """Drop the registries of the modules a new load re-imports."""
    with _declared_lock:
        for module_name in [m for m in _declared if m == prefix or m.startswith(prefix + ".")]:
            del _declared[module_name]


@contextlib.contextmanager
def executing(module_name: str) -> Iterator[None]:
    """Jobs declared while this runs belong to `module_name`."""
    with _declared_lock:
        _declared.pop(module_name, None)
    _executing.append(module_name)
    try:
        yield
    finally:
        _executing.pop()


def make_spec(func: Callable[..., Any], *, name: str, module: str | None = None, **options: Any) -> JobSpec:
    """Build and validate a JobSpec (not registered). Raises JobDefinitionError naming the job."""
    where = module or str(getattr(func, "__module__", None) or "")
    try:
        return _validated(JobSpec(name=name, func=func, module=where, **options))
    except JobDefinitionError as exc:
        raise JobDefinitionError(f"job {name!r}: {exc}") from None


MAX_NAME = 200  # the width of the name columns


def check_job_name(name: object) -> None:
    """Raises JobDefinitionError for a name the API's /api/jobs/{name} paths could not carry.

    A '/' would split the path (the dashboard's buttons would answer 404); control
    characters and a backslash have no place in a name shown in logs and terminals.
    """
    if not isinstance(name, str) or not name.strip():
        raise JobDefinitionError("name must be a non-empty string")
    if len(name) > MAX_NAME:
        raise JobDefinitionError(f"name must be at most {MAX_NAME} characters, got {len(name)}")
    bad = sorted({c for c in name if c in "/\\" or unicodedata.category(c)[0] == "C"})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise JobDefinitionError(f"name must not contain '/', '\\' or control characters; found {shown}")


def _validated(spec: JobSpec) -> JobSpec:
    check_job_name(spec.name)
    if (spec.interval is None) == (spec.cron is None):
        raise JobDefinitionError("give exactly one of interval= or cron=")
    if spec.interval is not None:
        if not isinstance(spec.interval, timedelta):
            raise JobDefinitionError(f"interval must be a timedelta, got {spec.interval!r}")
        if spec.interval <= timedelta(0):
            raise JobDefinitionError(f"interval must be positive, got {spec.interval}")
    if spec.cron is not None:
        CronSchedule(spec.cron, spec.timezone)
    parse_timezone(spec.timezone)
    if spec.timeout is not None and spec.timeout <= timedelta(0):
        raise JobDefinitionError(f"timeout must be positive, got {spec.timeout}")
    if spec.retries < 0:
        raise JobDefinitionError(f"retries must be >= 0, got {spec.retries}")
    if spec.retry_delay < timedelta(0) or spec.jitter < timedelta(0):
        raise JobDefinitionError("retry_delay and jitter must not be negative")
    if spec.overlap not in ("skip", "queue"):
        raise JobDefinitionError(f"overlap must be 'skip' or 'queue', got {spec.overlap!r}")
    if spec.catchup not in ("latest", "all", "skip"):
        raise JobDefinitionError(f"catchup must be latest, all or skip, got {spec.catchup!r}")
    if spec.start_at is not None and spec.start_at.tzinfo is None:
        raise JobDefinitionError("start_at must be tz-aware")
    if spec.first_run not in ("slot", "interval"):
        raise JobDefinitionError(f"first_run must be 'slot' or 'interval', got {spec.first_run!r}")
    if spec.first_run == "interval" and spec.interval is None:
        raise JobDefinitionError("first_run='interval' applies to interval jobs only")
    if spec.alert_after_failures < 1:
        raise JobDefinitionError("alert_after_failures must be >= 1")
    _check_isolation(spec)
    wants_ctx = _takes_one_argument(spec.func) and not spec.args and not spec.kwargs
    object.__setattr__(spec, "wants_ctx", wants_ctx)
    return spec


_BYTE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_bytes(value: int | str | None) -> int | None:
    """`512M`, `2G`, `65536`: a size in bytes. Raises JobDefinitionError for anything else."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    text = str(value).strip().lower().removesuffix("b").removesuffix("i")
    number, unit = (text[:-1], text[-1]) if text[-1:] in _BYTE_UNITS else (text, "")
    try:
        return int(float(number) * _BYTE_UNITS[unit])
    except ValueError:
        raise JobDefinitionError(f"memory_limit must be bytes or e.g. '512M', got {value!r}") from None


def _check_isolation(spec: JobSpec) -> None:
    if spec.isolation is not None and spec.isolation not in ISOLATIONS:
        raise JobDefinitionError(f"isolation must be 'thread' or 'process', got {spec.isolation!r}")
    limited = spec.memory_limit is not None or spec.cpu_limit is not None
    if limited and spec.isolation == "thread":
        raise JobDefinitionError("memory_limit and cpu_limit need isolation='process'")
    if spec.memory_limit is not None and spec.memory_limit < 1024 * 1024:
        raise JobDefinitionError(f"memory_limit must be at least 1M, got {spec.memory_limit}")
    if spec.cpu_limit is not None and spec.cpu_limit < timedelta(seconds=1):
        raise JobDefinitionError(f"cpu_limit must be at least 1s, got {spec.cpu_limit}")


def _takes_one_argument(func: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [
        p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) == 1
