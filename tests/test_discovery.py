"""Job modules as people write them: every way of declaring a job is found, or named in an error.

Each test below is one row of "what the module does": the job is registered
when `job(...)` is called, so none of them vanishes.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from scheduler.jobs.discovery import load_jobs

HEAD = "from datetime import timedelta\nfrom scheduler import job\n"


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def test_jobs_made_in_a_loop_and_kept_in_a_list_are_all_found(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tables.py",
        HEAD
        + """
def make(table):
    def run():
        return table
    return run

JOBS = [job(interval=timedelta(minutes=5), name=f"sync.{t}")(make(t)) for t in ("users", "orders", "items")]
""",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["sync.items", "sync.orders", "sync.users"]
    assert result.specs["sync.orders"].func() == "orders"
    assert result.modules["scheduler_jobs.tables"] == ["sync.users", "sync.orders", "sync.items"]


def test_jobs_of_a_loop_without_names_clash_with_an_error_that_says_to_name_them(tmp_path: Path) -> None:
    write(
        tmp_path,
        "unnamed.py",
        HEAD
        + "for t in ('a', 'b'):\n    @job(interval=timedelta(minutes=5))\n    def sync():\n        pass\n",
    )
    result = load_jobs(tmp_path)
    assert list(result.specs) == ["unnamed.sync"]
    (problem,) = result.problems
    assert problem.where.endswith("unnamed.py")
    assert "'unnamed.sync' is declared twice: give each declaration its own name=" in problem.message


def test_a_loop_that_rebinds_one_name_keeps_every_job(tmp_path: Path) -> None:
    write(
        tmp_path,
        "rebind.py",
        HEAD
        + """
for table in ("a", "b", "c"):
    @job(interval=timedelta(minutes=1), name=f"rebind.{table}")
    def sync(table=table):
        return table
""",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["rebind.a", "rebind.b", "rebind.c"]
    assert result.specs["rebind.a"].func() == "a"


def test_one_function_decorated_twice_gives_two_jobs(tmp_path: Path) -> None:
    write(
        tmp_path,
        "twice.py",
        HEAD
        + """
@job(interval=timedelta(minutes=1), name="twice.often")
@job(cron="0 6 * * *", name="twice.daily")
def report():
    pass
""",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert result.specs["twice.often"].interval == timedelta(minutes=1)
    assert result.specs["twice.daily"].cron == "0 6 * * *"
    assert result.specs["twice.often"].func is result.specs["twice.daily"].func


def test_a_decorated_function_imported_from_a_helper_module_is_a_job_of_the_helper(tmp_path: Path) -> None:
    write(tmp_path, "_shared.py", HEAD + "@job(interval=timedelta(minutes=2))\ndef cleanup():\n    pass\n")
    write(tmp_path, "user.py", "from _shared import cleanup\n")
    write(tmp_path, "other.py", "from scheduler_jobs._shared import cleanup\n")
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["_shared.cleanup"]
    assert result.specs["_shared.cleanup"].interval == timedelta(minutes=2)


def test_partials_with_and_without_name_are_jobs(tmp_path: Path) -> None:
    write(
        tmp_path,
        "parts.py",
        HEAD
        + """
import functools

def export(table):
    return table

job(interval=timedelta(minutes=1), name="parts.users")(functools.partial(export, "users"))
job(interval=timedelta(minutes=1))(functools.partial(export, "orders"))
""",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["parts.export", "parts.users"]
    assert result.specs["parts.users"].func() == "users"
    assert result.specs["parts.export"].func() == "orders"


def test_static_methods_and_bound_methods_are_jobs(tmp_path: Path) -> None:
    write(
        tmp_path,
        "methods.py",
        HEAD
        + """
class Reports:
    @staticmethod
    @job(interval=timedelta(minutes=1))
    def nightly():
        return "static"

    @job(interval=timedelta(minutes=2))
    @staticmethod
    def hourly():
        return "static outer"

class Sync:
    def __init__(self, table):
        self.table = table

    def run(self):
        return self.table

for table in ("a", "b"):
    job(interval=timedelta(minutes=3), name=f"methods.sync.{table}")(Sync(table).run)
""",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == [
        "methods.Reports.hourly",
        "methods.Reports.nightly",
        "methods.sync.a",
        "methods.sync.b",
    ]
    assert result.specs["methods.Reports.nightly"].func() == "static"
    assert result.specs["methods.Reports.hourly"].func() == "static outer"
    assert result.specs["methods.sync.b"].func() == "b"
    assert result.specs["methods.sync.b"].wants_ctx is False


def test_a_decorator_without_wraps_under_job_is_a_job_named_after_the_function(tmp_path: Path) -> None:
    write(
        tmp_path,
        "nowraps.py",
        HEAD
        + """
CALLS = []

def logged(func):
    def wrapper():
        CALLS.append("logged")
        return func()
    return wrapper

@job(interval=timedelta(minutes=1))
@logged
def refresh():
    return "refreshed"
""",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert list(result.specs) == ["nowraps.refresh"]
    assert result.specs["nowraps.refresh"].func() == "refreshed"


def test_a_wraps_decorator_over_job_is_the_callable_that_runs(tmp_path: Path) -> None:
    write(
        tmp_path,
        "outer.py",
        HEAD
        + """
import functools

CALLS = []

def audited(func):
    @functools.wraps(func)
    def wrapper(*args):
        CALLS.append("audited")
        return func(*args)
    return wrapper

@audited
@job(interval=timedelta(minutes=1))
def refresh():
    return "refreshed"
""",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    spec = result.specs["outer.refresh"]
    assert spec.func() == "refreshed"
    assert sys.modules["scheduler_jobs.outer"].CALLS == ["audited"]


def test_an_alias_is_the_same_job_not_a_duplicate(tmp_path: Path) -> None:
    write(
        tmp_path,
        "alias.py",
        HEAD + "@job(cron='0 2 * * *')\ndef nightly():\n    pass\n\nnightly_alias = nightly\n",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert list(result.specs) == ["alias.nightly"]


def test_modules_in_sub_folders_load_as_packages(tmp_path: Path) -> None:
    write(
        tmp_path, "billing/invoices.py", HEAD + "@job(interval=timedelta(hours=1))\ndef send():\n    pass\n"
    )
    write(tmp_path, "billing/_rates.py", "RATE = 3\n")
    write(
        tmp_path,
        "billing/eu/vat.py",
        HEAD + "from .._rates import RATE\n@job(interval=timedelta(minutes=RATE))\ndef file():\n    pass\n",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["billing.eu.vat.file", "billing.invoices.send"]
    assert result.specs["billing.eu.vat.file"].interval == timedelta(minutes=3)
    assert result.specs["billing.invoices.send"].module == "scheduler_jobs.billing.invoices"


def test_two_lambdas_with_names_are_two_jobs_and_one_without_a_name_is_an_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        "lambdas.py",
        HEAD
        + "job(interval=timedelta(minutes=1), name='lambdas.one')(lambda: 1)\n"
        + "job(interval=timedelta(minutes=1), name='lambdas.two')(lambda: 2)\n",
    )
    write(tmp_path, "nameless.py", HEAD + "job(interval=timedelta(minutes=1))(lambda: 3)\n")
    result = load_jobs(tmp_path)
    assert sorted(result.specs) == ["lambdas.one", "lambdas.two"]
    assert result.specs["lambdas.two"].func() == 2
    (problem,) = result.problems
    assert (
        problem.where.endswith("nameless.py")
        and "a lambda has no name of its own: give @job a name=" in problem.message
    )


def test_a_callable_object_is_a_job(tmp_path: Path) -> None:
    write(
        tmp_path,
        "objects.py",
        HEAD
        + "class Export:\n    def __call__(self):\n        return 'exported'\n\n"
        + "job(interval=timedelta(minutes=1), name='objects.export')(Export())\n",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert result.specs["objects.export"].func() == "exported"


# -- timeloop -------------------------------------------------------------------------


def test_a_timeloop_module_ending_in_start_block_true_loads_without_hanging(tmp_path: Path) -> None:
    write(
        tmp_path,
        "blocking.py",
        """
        from datetime import timedelta
        from timeloop import Timeloop

        tl = Timeloop()

        @tl.job(interval=timedelta(seconds=2))
        def sample():
            pass

        if __name__ != "__main__":
            tl.start(block=True)
            tl.stop()
        """,
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert list(result.specs) == ["blocking.sample"]
    from timeloop import Timeloop

    assert Timeloop.start.__name__ == "start"  # restored after loading


def test_the_same_function_added_to_a_timeloop_twice_gives_two_jobs(tmp_path: Path) -> None:
    write(
        tmp_path,
        "twice_tl.py",
        """
        from datetime import timedelta
        from timeloop import Timeloop

        tl = Timeloop()

        def sample():
            pass

        tl.job(interval=timedelta(seconds=2))(sample)
        tl.job(interval=timedelta(seconds=30))(sample)
        """,
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["twice_tl.sample", "twice_tl.sample.2"]
    assert result.specs["twice_tl.sample.2"].interval == timedelta(seconds=30)


# -- the namespace ----------------------------------------------------------------------


def test_a_job_module_named_like_the_standard_library_shadows_nothing(tmp_path: Path) -> None:
    write(tmp_path, "statistics.py", HEAD + "@job(interval=timedelta(minutes=1))\ndef stats():\n    pass\n")
    write(
        tmp_path,
        "uses_stats.py",
        HEAD + "import statistics\nMEAN = statistics.mean([1, 2, 3])\n"
        "@job(interval=timedelta(minutes=1))\ndef mean():\n    return MEAN\n",
    )
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert sorted(result.specs) == ["statistics.stats", "uses_stats.mean"]
    assert result.specs["uses_stats.mean"].func() == 2
    import statistics

    assert statistics.mean([2, 4]) == 3
    assert sys.path.index(str(tmp_path.resolve())) > 0


def test_a_module_that_declares_nothing_is_a_warning(tmp_path: Path) -> None:
    write(tmp_path, "empty.py", "VALUE = 1\n")
    write(tmp_path, "_helper.py", "VALUE = 2\n")
    result = load_jobs(tmp_path)
    assert result.problems == []
    assert [str(w) for w in result.warnings] == [f"{tmp_path.resolve() / 'empty.py'}: declares no job"]


def test_each_module_is_logged_as_it_is_imported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "first.py", HEAD + "@job(interval=timedelta(minutes=1))\ndef one():\n    pass\n")
    write(tmp_path, "sub/second.py", "VALUE = 1\n")
    with caplog.at_level(logging.INFO, logger="scheduler.jobs.discovery"):
        load_jobs(tmp_path)
    imported = [r.getMessage() for r in caplog.records if r.getMessage().startswith("importing job module")]
    assert imported == [
        f"importing job module scheduler_jobs.first ({tmp_path.resolve() / 'first.py'})",
        f"importing job module scheduler_jobs.sub.second ({tmp_path.resolve() / 'sub' / 'second.py'})",
    ]


def test_on_reload_a_module_that_fails_now_keeps_its_previous_jobs(tmp_path: Path) -> None:
    path = write(
        tmp_path, "billing/invoices.py", HEAD + "@job(interval=timedelta(hours=1))\ndef send():\n    pass\n"
    )
    write(tmp_path, "other.py", HEAD + "@job(interval=timedelta(hours=1))\ndef keep():\n    pass\n")
    first = load_jobs(tmp_path)
    path.write_text("def oops(:\n")
    second = load_jobs(tmp_path, previous=first.specs)
    assert sorted(second.specs) == ["billing.invoices.send", "other.keep"]
    assert second.specs["billing.invoices.send"] is first.specs["billing.invoices.send"]
    assert len(second.problems) == 1
    (kept,) = second.warnings
    assert kept.where == "billing.invoices.send"
    assert kept.message.endswith("keeps its previous definition until its module loads again")
    assert sorted(load_jobs(tmp_path).specs) == ["other.keep"]  # a fresh start has no previous jobs
