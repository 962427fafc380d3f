"""Imported by the forkserver only: the job modules, loaded once for every process run.

The daemon names the jobs folder in SCHEDULER_ISOLATION_PRELOAD before it
starts the forkserver. A child finds its job here; a module changed on disk
since (a SIGHUP reload) is imported again in that child.
"""

from __future__ import annotations

import os
from pathlib import Path

from scheduler.errors import JobDefinitionError
from scheduler.jobs.discovery import load_jobs
from scheduler.jobs.registry import JobSpec

_specs: dict[str, JobSpec] = {}
_mtimes: dict[str, float] = {}


def _load(path: Path) -> dict[str, JobSpec]:
    specs = load_jobs(path).specs
    for file in path.rglob("*.py"):  # sub-folders load as packages
        _mtimes[str(file)] = _mtime(file)
    return specs


def _mtime(file: Path) -> float:
    try:
        return file.stat().st_mtime
    except OSError:
        return -1.0


def find(name: str, module_file: Path, jobs_path: Path) -> JobSpec:
    """The spec of job `name`, from the preloaded modules unless its file changed.

    Raises JobDefinitionError if the job is not (or no longer) in its module.
    """
    spec = _specs.get(name)
    if spec is None or _mtimes.get(str(module_file)) != _mtime(module_file):
        _specs.update(_load(jobs_path))
        spec = _specs.get(name)
    if spec is None:
        raise JobDefinitionError(f"job {name!r} is not defined in {jobs_path} any more")
    return spec


_preload = os.environ.get("SCHEDULER_ISOLATION_PRELOAD")
if _preload:
    _specs.update(_load(Path(_preload)))
