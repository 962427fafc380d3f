"""Job declarations: the `@job` decorator, `JobSpec`, and loading `code/jobs/`.

A job module is a plain Python file. Functions decorated with `@job(...)` are
jobs; so are the jobs of any `timeloop.Timeloop` instance at module level
(`@tl.job(interval=...)`), which our dispatcher runs instead of timeloop's own
thread-per-job loop.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
import traceback
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from scheduler.errors import JobDefinitionError
from scheduler.jobs.schedules import CronSchedule, IntervalSchedule, Schedule, parse_timezone

log = logging.getLogger(__name__)

Overlap = Literal["skip", "queue"]
Catchup = Literal["latest", "all", "skip"]
Isolation = Literal["thread", "process"]
ISOLATIONS = ("thread", "process")
_SPEC_ATTR = "__scheduler_job__"
_MODULE_PREFIX = "scheduler_jobs."


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
    jitter: timedelta = timedelta(0)
    enabled: bool = True
    grace: timedelta | None = None
    alert_after_failures: int = 1
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
    jitter: timedelta = timedelta(0),
    enabled: bool = True,
    grace: timedelta | None = None,
    alert_after_failures: int = 1,
    isolation: Isolation | None = None,
    memory_limit: int | str | None = None,
    cpu_limit: timedelta | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a job: `@job(interval=timedelta(seconds=30))` or `@job(cron=..., timezone=...)`.

    Raises JobDefinitionError, naming the function, for an invalid declaration.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        spec = make_spec(
            func,
            name=name or f"{_module_label(func.__module__)}.{func.__name__}",
            interval=interval,
            cron=cron,
            timezone=timezone,
            timeout=timeout,
            retries=retries,
            retry_delay=retry_delay,
            overlap=overlap,
            catchup=catchup,
            start_at=start_at,
            jitter=jitter,
            enabled=enabled,
            grace=grace,
            alert_after_failures=alert_after_failures,
            isolation=isolation,
            memory_limit=parse_bytes(memory_limit),
            cpu_limit=cpu_limit,
        )
        setattr(func, _SPEC_ATTR, spec)
        return func

    return decorate


def make_spec(func: Callable[..., Any], *, name: str, **options: Any) -> JobSpec:
    """Build and validate a JobSpec. Raises JobDefinitionError naming the job."""
    try:
        return _validated(JobSpec(name=name, func=func, module=func.__module__, **options))
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


def _module_label(module_name: str) -> str:
    return module_name.removeprefix(_MODULE_PREFIX)


@dataclass(frozen=True)
class LoadProblem:
    """A module or job that could not be loaded; `where` is a file or job name."""

    where: str
    message: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class LoadResult:
    specs: dict[str, JobSpec]
    problems: list[LoadProblem]


def load_jobs(path: Path) -> LoadResult:
    """Import every `*.py` in `path` (not `_*.py`) and collect its jobs.

    Never raises for a broken module: each problem is returned, and the jobs of
    the other modules still load.
    """
    result = LoadResult(specs={}, problems=[])
    if not path.is_dir():
        result.problems.append(LoadProblem(str(path), "jobs path is not a directory"))
        return result
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    for file in sorted(path.glob("*.py")):
        if file.name.startswith("_"):
            continue
        try:
            module = _import_fresh(file)
            specs = _specs_in(module)  # a timeloop job is validated here, after import
        except (Exception, SystemExit) as exc:  # a module calling sys.exit() must not stop the daemon
            message = _one_line(exc)
            detail = traceback.format_exc()
            result.problems.append(LoadProblem(_rel(file), message, detail))
            continue
        for spec in specs:
            if spec.name in result.specs:
                first = result.specs[spec.name].module
                message = f"duplicate job name {spec.name!r} (first defined in {first})"
                result.problems.append(LoadProblem(_rel(file), message))
                continue
            result.specs[spec.name] = spec
    return result


def _import_fresh(file: Path) -> ModuleType:
    name = _MODULE_PREFIX + file.stem
    sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise JobDefinitionError("cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _specs_in(module: ModuleType) -> list[JobSpec]:
    specs: list[JobSpec] = []
    for value in list(vars(module).values()):
        spec = getattr(value, _SPEC_ATTR, None)
        if isinstance(spec, JobSpec) and getattr(value, "__module__", None) == module.__name__:
            specs.append(spec)
        specs.extend(_timeloop_specs(value, module.__name__))
    return specs


def _timeloop_specs(value: object, module_name: str) -> list[JobSpec]:
    """Adapt a module-level `timeloop.Timeloop` instance's jobs."""
    try:
        from timeloop import Timeloop
    except ImportError:  # pragma: no cover - timeloop is a pinned dependency
        return []
    if not isinstance(value, Timeloop):
        return []
    specs = []
    for tl_job in value.jobs:
        func = tl_job.execute
        name = f"{_module_label(module_name)}.{func.__name__}"
        spec = make_spec(
            func,
            name=name,
            interval=tl_job.interval,
            args=tuple(tl_job.args),
            kwargs=dict(tl_job.kwargs),
        )
        specs.append(spec)
    return specs


def _rel(file: Path) -> str:
    try:
        return str(file.relative_to(Path.cwd()))
    except ValueError:
        return str(file)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, JobDefinitionError):
        return str(exc)
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
