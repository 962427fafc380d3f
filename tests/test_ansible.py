"""The deployment files: the supervisord template as supervisord reads it, and the Ansible playbook.

The template is rendered with plain Jinja2 and this repository's filters, then
parsed by supervisord's own option parser, so every check is about what
supervisord would run. Ansible renders it too, and the playbook must pass
`ansible-playbook --syntax-check`; without ansible-playbook those tests skip
loudly, except under CI=true, where they fail.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from supervisor.datatypes import RestartUnconditionally

from tests.support import REPO
from tests.support.required import missing
from tests.support.supervisord import (
    ANSIBLE,
    TEMPLATE,
    filters,
    parse_program,
    render_program,
    template_variables,
)

# -- the environment= value ---------------------------------------------------

# Each value reaches the process unchanged through supervisord's parsing.
AWKWARD_VALUES = {
    "comma": "a,b,c",
    "double_quote_inside": 'say "hi" twice',
    "single_quote_inside": "it's",
    "percent": "100%",
    "percent_expansion_lookalike": "%(program_name)s",
    "url_encoded_password": "postgresql://app:p%40ss%2Cword@db.internal:5432/app",
    "hash_and_semicolon_without_space": "#channel;x",
    "equals": "a=b==c",
    "spaces": "  padded value  ",
    "empty": "",
    "unicode": "café ✓",
}


@pytest.mark.parametrize("case", sorted(AWKWARD_VALUES))
def test_environment_value_reaches_the_process_unchanged(tmp_path: Path, case: str) -> None:
    value = AWKWARD_VALUES[case]
    text = render_program(template_variables(tmp_path, scheduler_extra_env={"SCHEDULER_X": value}))
    (process,) = parse_program(tmp_path, text)
    assert process.environment["SCHEDULER_X"] == value


# Values supervisord cannot carry: rejected at render time, naming the key but not the value.
UNREADABLE_VALUES = {
    "both_quote_kinds": 'it\'s "quoted"',
    "leading_quote": '"secret',
    "trailing_quote": "secret'",
    "newline": "sec\nret",
    "inline_comment_semicolon": "secret ;rest",
    "inline_comment_hash": "secret #rest",
}


@pytest.mark.parametrize("case", sorted(UNREADABLE_VALUES))
def test_unreadable_environment_value_is_rejected_naming_the_key_only(tmp_path: Path, case: str) -> None:
    value = UNREADABLE_VALUES[case]
    with pytest.raises(filters.SupervisorValueError) as caught:
        render_program(template_variables(tmp_path, scheduler_slack_token=value))
    message = str(caught.value)
    assert "SCHEDULER_SLACK_TOKEN" in message
    assert "secret" not in message and value not in message


def test_invalid_environment_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(filters.SupervisorValueError, match="invalid variable name 'BAD-NAME'"):
        render_program(template_variables(tmp_path, scheduler_extra_env={"BAD-NAME": "x"}))


# -- the program section ------------------------------------------------------


def test_single_process_program_runs_control_py_in_the_foreground(tmp_path: Path) -> None:
    variables = template_variables(
        tmp_path, scheduler_grace_period_seconds=45, scheduler_stop_margin_seconds=20
    )
    (process,) = parse_program(tmp_path, render_program(variables))
    assert process.name == "scheduler"
    assert process.command == f"{variables['scheduler_venv']}/bin/python {REPO}/code/scheduler/control.py run"
    assert process.directory == str(REPO)
    assert process.uid is not None  # user= was given
    assert process.stopsignal == 15 and process.stopwaitsecs == 45 + 20
    assert process.stopasgroup and process.killasgroup
    assert process.autostart and process.autorestart is RestartUnconditionally and process.exitcodes == [0]
    assert process.startsecs == 5 and process.startretries == 3
    assert process.stdout_logfile == str(tmp_path / "logs" / "scheduler.stdout.log")
    assert process.stderr_logfile == str(tmp_path / "logs" / "scheduler.stderr.log")
    assert process.environment == {
        "SCHEDULER_DATABASE_URL": variables["scheduler_database_url"],
        "SCHEDULER_JOBS_PATH": str(tmp_path / "jobs"),
        "SCHEDULER_GRACE_PERIOD": "45s",
        "SCHEDULER_PIDFILE": str(tmp_path / "var" / "scheduler.pid"),
        "SCHEDULER_STATE_DIR": str(tmp_path / "var"),
        "SCHEDULER_INSTANCE_NAME": "node1",
        "SCHEDULER_LOG_DIR": str(tmp_path / "logs"),
    }


def test_numprocs_gives_each_process_its_own_pidfile_instance_log_dir_and_port(tmp_path: Path) -> None:
    variables = template_variables(
        tmp_path, scheduler_numprocs=3, scheduler_http_enabled="yes", scheduler_http_port_prefix="91"
    )
    processes = parse_program(tmp_path, render_program(variables))
    assert [p.name for p in processes] == ["scheduler_00", "scheduler_01", "scheduler_02"]
    for num, process in enumerate(processes):
        env = process.environment
        assert env["SCHEDULER_PIDFILE"] == str(tmp_path / "var" / f"scheduler_{num:02d}.pid")
        assert env["SCHEDULER_INSTANCE_NAME"] == f"node1-{num:02d}"
        # One rotated info.log per process: two writers rotating one file would clobber each other.
        assert env["SCHEDULER_LOG_DIR"] == str(tmp_path / "logs" / f"scheduler_{num:02d}")
        assert env["SCHEDULER_HTTP_ENABLED"] == "true" and env["SCHEDULER_HTTP_PORT"] == f"91{num:02d}"
        assert process.stderr_logfile == str(tmp_path / "logs" / f"scheduler_{num:02d}.stderr.log")


def test_single_process_http_uses_the_configured_port(tmp_path: Path) -> None:
    variables = template_variables(tmp_path, scheduler_http_enabled=True, scheduler_http_port=8125)
    (process,) = parse_program(tmp_path, render_program(variables))
    assert process.environment["SCHEDULER_HTTP_PORT"] == "8125"
    assert process.environment["SCHEDULER_HTTP_HOST"] == "127.0.0.1"


def test_slack_and_api_settings_are_written_only_when_set(tmp_path: Path) -> None:
    unset = template_variables(tmp_path, scheduler_slack_token="", scheduler_slack_channel="")
    (process,) = parse_program(tmp_path, render_program(unset))
    assert not [k for k in process.environment if "SLACK" in k or "TOKEN" in k]

    secrets = {
        "scheduler_api_token": "api,tok%en",
        "scheduler_slack_webhook_url": "https://hooks.example/T0/B0/xyz",
        "scheduler_slack_channel": "#ops, night",
    }
    (process,) = parse_program(tmp_path, render_program(template_variables(tmp_path, **secrets)))
    assert process.environment["SCHEDULER_API_TOKEN"] == "api,tok%en"
    assert process.environment["SCHEDULER_SLACK_WEBHOOK_URL"] == "https://hooks.example/T0/B0/xyz"
    assert process.environment["SCHEDULER_SLACK_CHANNEL"] == "#ops, night"


@pytest.mark.parametrize(
    ("given", "expected"), [("no", False), ("False", False), ("yes", True), (True, True)]
)
def test_autostart_reads_inventory_strings(tmp_path: Path, given: Any, expected: bool) -> None:
    (process,) = parse_program(
        tmp_path, render_program(template_variables(tmp_path, scheduler_autostart=given))
    )
    assert process.autostart is expected


def test_percent_in_paths_is_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "100%"
    variables = template_variables(
        tmp_path, scheduler_log_dir=str(odd / "logs"), scheduler_state_dir=str(odd)
    )
    (odd / "logs").mkdir(parents=True)
    (process,) = parse_program(tmp_path, render_program(variables))
    assert process.stdout_logfile == str(odd / "logs" / "scheduler.stdout.log")
    assert process.environment["SCHEDULER_PIDFILE"] == str(odd / "scheduler.pid")


# -- Ansible -----------------------------------------------------------------


def ansible_tool(name: str) -> str:
    """Path of an Ansible command; skips loudly without it, fails under CI=true."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        missing("Ansible test", f"{name} not installed (pip install -r requirements-dev.txt)")
    return found


def ansible_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    return env


def test_playbook_passes_ansible_syntax_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            ansible_tool("ansible-playbook"),
            "--syntax-check",
            "-i",
            str(ANSIBLE / "inventory.example.ini"),
            str(ANSIBLE / "playbook.yml"),
        ],
        cwd=REPO,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "playbook: " in result.stdout


def test_ansible_renders_the_role_defaults_and_the_same_program_as_jinja(tmp_path: Path) -> None:
    """Ansible's own templating: with the role defaults alone, and with the variables the tests use."""
    variables = template_variables(
        tmp_path,
        scheduler_numprocs=2,
        scheduler_slack_channel='#ops, "night" shift',
        scheduler_api_token="a%b,c",
    )
    template = {"src": str(TEMPLATE)}
    playbook = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(ANSIBLE / "roles" / "scheduler" / "defaults" / "main.yml")],
            "vars": {"scheduler_database_url": "postgresql://app:p%40ss@db/app"},
            "tasks": [
                {"ansible.builtin.template": {**template, "dest": str(tmp_path / "defaults.conf")}},
                {
                    "ansible.builtin.template": {**template, "dest": str(tmp_path / "custom.conf")},
                    "vars": variables,
                },
            ],
        }
    ]
    (tmp_path / "render.yml").write_text(json.dumps(playbook))  # JSON is YAML
    env = ansible_env(tmp_path) | {"ANSIBLE_FILTER_PLUGINS": str(ANSIBLE / "filter_plugins")}
    result = subprocess.run(
        [
            ansible_tool("ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(tmp_path / "render.yml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    defaults = (tmp_path / "defaults.conf").read_text()
    assert "\nuser=scheduler\n" in defaults and "/opt/scheduler/" in defaults
    # supervisord resolves the user and checks the log folder while parsing: use ones that exist here.
    app = tmp_path / "opt"
    (app / "logs").mkdir(parents=True)
    defaults = defaults.replace("\nuser=scheduler\n", f"\nuser={getpass.getuser()}\n")
    (process,) = parse_program(tmp_path, defaults.replace("/opt/scheduler", str(app)))
    assert process.name == "scheduler" and process.directory == str(app)
    assert process.command == f"{app}/.venv/bin/python {app}/code/scheduler/control.py run"
    assert process.stopwaitsecs == 30 + 15 and process.autostart
    assert process.environment == {
        "SCHEDULER_DATABASE_URL": "postgresql://app:p%40ss@db/app",
        "SCHEDULER_JOBS_PATH": f"{app}/code/jobs",
        "SCHEDULER_GRACE_PERIOD": "30s",
        "SCHEDULER_PIDFILE": f"{app}/var/scheduler.pid",
        "SCHEDULER_STATE_DIR": f"{app}/var",
        "SCHEDULER_INSTANCE_NAME": "localhost",
        "SCHEDULER_LOG_DIR": f"{app}/logs",
    }

    def body(text: str) -> list[str]:
        return text.splitlines()[1:]  # the first line is the "managed by" comment

    assert body((tmp_path / "custom.conf").read_text()) == body(render_program(variables))
