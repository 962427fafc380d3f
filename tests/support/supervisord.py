"""The supervisord template as supervisord reads it: rendered with plain Jinja2 and this
repository's filters, then parsed by supervisord's own option parser.
"""

from __future__ import annotations

import getpass
import importlib.util
import sys
from pathlib import Path
from typing import Any

import jinja2
from supervisor.options import ProcessConfig, ServerOptions

from tests.support import REPO

ANSIBLE = REPO / "ansible"
TEMPLATE = ANSIBLE / "templates" / "supervisord.conf.j2"


def _load_filters() -> Any:
    # Loaded by path: the folder is named like the installed `ansible` package.
    spec = importlib.util.spec_from_file_location(
        "supervisor_filters", ANSIBLE / "filter_plugins" / "supervisor.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


filters = _load_filters()


def template_variables(root: Path, **overrides: Any) -> dict[str, Any]:
    """Every variable the template reads, pointing into `root`; `overrides` win."""
    values: dict[str, Any] = {
        "scheduler_program": "scheduler",
        "scheduler_numprocs": 1,
        "scheduler_user": getpass.getuser(),
        "scheduler_app_dir": str(REPO),
        "scheduler_venv": str(Path(sys.executable).parent.parent),
        "scheduler_database_url": f"sqlite:///{root / 'scheduler.db'}",
        "scheduler_jobs_path": str(root / "jobs"),
        "scheduler_log_dir": str(root / "logs"),
        "scheduler_state_dir": str(root / "var"),
        "scheduler_instance_name": "node1",
        "scheduler_grace_period_seconds": 30,
        "scheduler_stop_margin_seconds": 15,
        "scheduler_autostart": True,
        "scheduler_startsecs": 5,
        "scheduler_startretries": 3,
        "scheduler_http_enabled": False,
        "scheduler_http_host": "127.0.0.1",
        "scheduler_http_port": 8080,
        "scheduler_http_port_prefix": "81",
        "scheduler_supervisor_log_maxbytes": "10MB",
        "scheduler_supervisor_log_backups": 5,
        "scheduler_extra_env": {},
    }
    values.update(overrides)
    return values


def render_program(variables: dict[str, Any]) -> str:
    """The template rendered as Ansible's template module does (trim_blocks), undefined names fail."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(filters.FilterModule().filters())
    return env.get_template(TEMPLATE.name).render(**variables)


def supervisord_conf(root: Path, program: Path, *, socket: Path | None = None) -> Path:
    """A minimal supervisord.conf in `root` that includes the rendered `program` file."""
    lines = [
        "[supervisord]",
        f"logfile={root / 'supervisord.log'}",
        f"pidfile={root / 'supervisord.pid'}",
        f"childlogdir={root}",
        "nodaemon=true",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
    ]
    if socket is not None:
        lines += [
            "[unix_http_server]",
            f"file={socket}",
            "chmod=0700",
            "[supervisorctl]",
            f"serverurl=unix://{socket}",
        ]
    lines += ["[include]", f"files = {program}"]
    conf = root / "supervisord.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def parse_program(root: Path, text: str) -> list[ProcessConfig]:
    """The processes supervisord's own parser reads from the rendered program `text`."""
    program = root / "scheduler.conf"
    program.write_text(text)
    (root / "logs").mkdir(exist_ok=True)
    options = ServerOptions()
    options.realize(args=["-c", str(supervisord_conf(root, program))])
    return [p for group in options.process_group_configs for p in group.process_configs]
