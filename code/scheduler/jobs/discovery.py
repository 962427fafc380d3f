"""Loading the jobs path: every module, sub-folders as packages, under one namespace.

Job modules load as `scheduler_jobs.<path>` (`code/jobs/billing/invoices.py` is
`scheduler_jobs.billing.invoices`), so a module named like an installed one
(`statistics.py`) shadows nothing: the jobs path is only appended to sys.path,
for job modules that import their helpers by bare name. `_*.py` files are
helpers: imported only when a job module imports them. Each module is logged
as it is imported, so a module that hangs at import time is named in the log.

A job belongs to the module whose code declared it (`job(...)` registers it
there). The jobs of module-level `timeloop.Timeloop` instances are adopted
too; `Timeloop.start`/`stop` do nothing while modules load, so a module
ending in `tl.start(block=True)` loads like any other.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from scheduler.errors import JobDefinitionError
from scheduler.jobs import registry
from scheduler.jobs.registry import MODULE_PREFIX, JobSpec, make_spec, module_label

log = logging.getLogger(__name__)

ROOT = MODULE_PREFIX.rstrip(".")
# Called with each module's file just before it is imported (start-up progress for `start`).
on_import: list[Callable[[str], None]] = []


@dataclass(frozen=True)
class LoadProblem:
    """A module or job that could not be loaded; `where` is a file or job name."""

    where: str
    message: str
    detail: str = ""
    module: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class LoadResult:
    specs: dict[str, JobSpec]
    problems: list[LoadProblem]
    warnings: list[LoadProblem] = field(default_factory=list)
    modules: dict[str, list[str]] = field(default_factory=dict)  # module -> names of its jobs


def load_jobs(path: Path, previous: dict[str, JobSpec] | None = None) -> LoadResult:
    """Import every job module under `path` and collect the jobs they declare.

    Never raises for a broken module: each problem is returned, and the jobs of
    the other modules still load. With `previous` (a reload), a module that
    loaded before and fails now keeps its previous jobs, with a warning: a
    typo saved in one file must not silently stop that file's jobs.
    """
    result = LoadResult(specs={}, problems=[])
    if not path.is_dir():
        result.problems.append(LoadProblem(str(path), "jobs path is not a directory"))
        return result
    path = path.resolve()
    with _namespace(path), _timeloop_quiet():
        units = dict(_module_files(path))
        for name, file in units.items():
            _load_one(file, name, result, units)
    if previous:
        _keep_previous(previous, result)
    return result


def _load_one(file: Path, name: str, result: LoadResult, units: dict[str, Path]) -> None:
    first_new = len(_executed)
    try:
        module = importlib.import_module(name)
        specs = _specs_of(module)  # a timeloop job is validated here, after import
        # Helpers it imported (`_*.py`, or by bare name) may declare jobs too: theirs.
        for helper in _executed[first_new:]:
            if helper not in units and helper in sys.modules:
                specs += _specs_of(sys.modules[helper])
    except (Exception, SystemExit) as exc:  # a module calling sys.exit() must not stop the daemon
        result.problems.append(LoadProblem(_rel(file), _one_line(exc), traceback.format_exc(), name))
        return
    result.modules[name] = []
    for spec in specs:
        if spec.name in result.specs:
            first = result.specs[spec.name].module
            message = f"duplicate job name {spec.name!r} (first defined in {first})"
            if first == spec.module:
                message = f"job name {spec.name!r} is declared twice: give each declaration its own name="
            result.problems.append(LoadProblem(_rel(file), message, module=name))
            continue
        result.specs[spec.name] = spec
        result.modules[name].append(spec.name)
    if not specs and not file.name.startswith("_"):
        result.warnings.append(LoadProblem(_rel(file), "declares no job", module=name))


def _module_files(path: Path) -> Iterator[tuple[str, Path]]:
    """Job modules under `path`, sub-folders included, as (module name, file)."""
    for file in sorted(path.rglob("*.py")):
        parts = file.relative_to(path).with_suffix("").parts
        if any(p.startswith((".", "_")) for p in parts[:-1]) or parts[-1].startswith("_"):
            continue  # helpers, private folders, __pycache__, __init__ (run as its package)
        if not all(p.isidentifier() for p in parts):
            continue  # not importable as a module name ('my-job.py')
        yield ".".join((ROOT, *parts)), file


def _specs_of(module: ModuleType) -> list[JobSpec]:
    """The jobs the module declared (wrappers applied over `@job` run instead), then its timeloops."""
    specs = [_outermost(spec, module) for spec in registry.declared_in(module.__name__)]
    for value in list(vars(module).values()):
        specs.extend(_timeloop_specs(value, module.__name__))
    return specs


def _outermost(spec: JobSpec, module: ModuleType) -> JobSpec:
    """The callable that runs: a module global wrapping `spec.func` (functools.wraps) runs instead.

    A job named after its callable whose only module binding has another name
    (a decorator without functools.wraps under @job) is named after the binding.
    """
    bindings = [(key, value) for key, value in vars(module).items() if _wraps(value, spec.func)]
    outer = [(key, value) for key, value in bindings if value is not spec.func]
    if outer:
        spec = replace(spec, func=outer[0][1])
    own = getattr(spec.func, "__name__", None)
    if not spec.named and len(bindings) == 1 and own != bindings[0][0] and own not in vars(module):
        spec = replace(spec, name=f"{module_label(module.__name__)}.{bindings[0][0]}")
    return spec


def _wraps(value: Any, func: Any) -> bool:
    """`value` is `func`, or reaches it through `__wrapped__`."""
    for _ in range(20):
        if value is func:
            return True
        value = getattr(value, "__wrapped__", None)
        if value is None:
            return False
    return False


_ADOPTED: set[int] = set()  # timeloop instances already adopted during this load
_executed: list[str] = []  # modules of the jobs path executed during this load, in order


def _timeloop_specs(value: object, module_name: str) -> list[JobSpec]:
    """Adapt a `timeloop.Timeloop` instance's jobs (once, for the first module holding it)."""
    try:
        from timeloop import Timeloop
    except ImportError:  # pragma: no cover - timeloop is a pinned dependency
        return []
    if not isinstance(value, Timeloop) or id(value) in _ADOPTED:
        return []
    _ADOPTED.add(id(value))
    specs: list[JobSpec] = []
    seen: dict[str, int] = {}
    for tl_job in value.jobs:
        func = tl_job.execute
        base = f"{module_label(module_name)}.{func.__name__}"
        seen[base] = seen.get(base, 0) + 1
        # timeloop runs a function added twice twice: so do we, as two jobs.
        name = base if seen[base] == 1 else f"{base}.{seen[base]}"
        spec = make_spec(
            func,
            name=name,
            module=module_name,
            interval=tl_job.interval,
            args=tuple(tl_job.args),
            kwargs=dict(tl_job.kwargs),
        )
        specs.append(spec)
    return specs


def _keep_previous(previous: dict[str, JobSpec], result: LoadResult) -> None:
    broken = {p.module for p in result.problems if p.module}
    for name, spec in previous.items():
        if spec.module in broken and name not in result.specs:
            result.specs[name] = spec
            message = f"job {name} keeps its previous definition until its module loads again"
            result.warnings.append(LoadProblem(name, message, module=spec.module))


# -- the namespace and the import hook -------------------------------------------------


class _JobLoader(importlib.machinery.SourceFileLoader):
    """Imports a module of the jobs path; jobs declared meanwhile are its own."""

    def exec_module(self, module: ModuleType) -> None:
        log.info("importing job module %s (%s)", module.__name__, self.path, extra={"action": "import"})
        for hook in on_import:
            hook(self.path)
        _executed.append(module.__name__)
        with registry.executing(module.__name__):
            super().exec_module(module)


class _JobFinder(importlib.abc.MetaPathFinder):
    """Finds modules as usual, and marks those whose file is in the jobs path."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if (
            spec is None
            or spec.origin is None
            or not isinstance(spec.loader, importlib.machinery.SourceFileLoader)
        ):
            return None
        if not Path(spec.origin).resolve().is_relative_to(self.root):
            return None
        if fullname.split(".", 1)[0] != ROOT:
            # A helper imported by bare name is the same module as under the namespace.
            spec.loader = _AliasLoader(f"{ROOT}.{fullname}")
            return spec
        spec.loader = _JobLoader(fullname, spec.origin)
        return spec


class _AliasLoader(importlib.abc.Loader):
    """`import _helpers` from a job module gives `scheduler_jobs._helpers`, imported once."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        return None


@contextlib.contextmanager
def _namespace(path: Path) -> Iterator[None]:
    """A fresh `scheduler_jobs` package over `path`; modules of an earlier load are forgotten."""
    prefix = str(path) + "/"
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        ours = name == ROOT or name.startswith(MODULE_PREFIX)
        if ours or (str(file).startswith(prefix) and name.split(".", 1)[0] != "scheduler"):
            del sys.modules[name]
    registry.forget(ROOT)
    _ADOPTED.clear()
    _executed.clear()
    package = ModuleType(ROOT, "Job modules, loaded by scheduler.jobs.discovery.")
    package.__path__ = [str(path)]
    package.__package__ = ROOT
    sys.modules[ROOT] = package
    if str(path) not in sys.path:
        sys.path.append(str(path))  # last: a job module never shadows an installed one
    finder = _JobFinder(path)
    sys.meta_path.insert(0, finder)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


@contextlib.contextmanager
def _timeloop_quiet() -> Iterator[None]:
    """`Timeloop.start` and `stop` do nothing while job modules are imported."""
    try:
        from timeloop import Timeloop
    except ImportError:  # pragma: no cover - timeloop is a pinned dependency
        yield
        return
    saved = Timeloop.start, Timeloop.stop
    Timeloop.start = Timeloop.stop = _do_nothing
    try:
        yield
    finally:
        Timeloop.start, Timeloop.stop = saved


def _do_nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


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
