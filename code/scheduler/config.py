"""Settings: defaults < TOML file < `SCHEDULER_*` environment < command-line flags.

Every value is validated at start; an invalid one raises ConfigError whose
message names the setting, e.g.
`SCHEDULER_DATABASE_URL: unsupported scheme 'mysql'`.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from scheduler.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "SCHEDULER_"


@dataclass(frozen=True)
class Settings:
    database_url: str = f"sqlite:///{REPO_ROOT / 'var' / 'scheduler.db'}"
    jobs_path: Path = REPO_ROOT / "code" / "jobs"
    pidfile: Path = Path("/tmp/scheduler.pid")
    log_dir: Path = REPO_ROOT / "logs"
    state_dir: Path = REPO_ROOT / "var"
    log_level: str = "INFO"
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    pool_size: int = 8
    grace_period: timedelta = timedelta(seconds=30)
    heartbeat: timedelta = timedelta(seconds=2)
    lease_ttl: timedelta = timedelta(seconds=10)
    settle_time: timedelta = timedelta(seconds=5)
    retention: timedelta = timedelta(days=30)
    max_log_bytes: int = 64 * 1024
    catchup_limit: int = 100
    instance_name: str = socket.gethostname()
    http_enabled: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    api_token: str = ""
    slack_webhook_url: str = ""
    slack_token: str = ""
    slack_channel: str = "#dev-notify"
    slack_base_url: str = ""
    watchdog_interval: timedelta = timedelta(seconds=15)
    db_alert_after: timedelta = timedelta(seconds=60)
    realert_after: timedelta = timedelta(0)
    alert_group_after: int = 5  # this many jobs late in one pass give one grouped incident
    skip_alert_after: int = 3  # skipped slots in a row that make a "skipping" incident
    alert_update_every: timedelta = timedelta(minutes=5)  # most often an incident's text is updated

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["database_url"] = redact_url(self.database_url)
        for secret in ("api_token", "slack_token", "slack_webhook_url"):
            shown[secret] = "***" if shown[secret] else ""
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def redact_url(url: str) -> str:
    """Hide the password of a database URL: postgresql://u:***@host/db.

    Split by hand at the last '@', not with urlsplit: SQLAlchemy accepts a password
    with a raw '/', '?' or '#', where urlsplit would end the host early and miss it.
    """
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def load(
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build Settings from the layers. Raises ConfigError naming the setting."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file = config_file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
    if file is not None:
        values.update(_read_file(file))
    known = {f.name for f in fields(Settings)}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in known:
            values[name] = (key, raw)
    for name, raw in (flags or {}).items():
        if raw is not None:
            values[name] = (f"--{name.replace('_', '-')}", raw)
    settings = Settings()
    for name, (source, raw) in values.items():
        settings = replace(settings, **{name: _convert(name, source, raw)})
    _check(settings)
    return settings


def _read_file(file: Path) -> dict[str, tuple[str, Any]]:
    try:
        data = tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    section = data.get("scheduler", data)
    known = {f.name for f in fields(Settings)}
    out = {}
    for key, raw in section.items():
        if key not in known:
            raise ConfigError(f"{file}: unknown setting {key!r}")
        out[key] = (f"{file}: {key}", raw)
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _convert(name: str, source: str, raw: Any) -> Any:
    default = getattr(Settings(), name)
    try:
        if isinstance(default, bool):
            return _to_bool(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, timedelta):
            if isinstance(raw, int | float):
                return timedelta(seconds=raw)
            match = _DURATION.match(str(raw))
            if not match:
                raise ValueError(f"not a duration: {raw!r} (use e.g. 30s, 5m, 2h, 7d)")
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        if isinstance(default, Path):
            return Path(str(raw)).expanduser().absolute()
        return str(raw)
    except ValueError as exc:
        raise ConfigError(f"{source}: {_safe(name, str(exc))}") from None


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _safe(name: str, message: str) -> str:
    return "invalid value" if name in ("api_token", "slack_token", "slack_webhook_url") else message


def _check(s: Settings) -> None:
    def fail(name: str, message: str) -> None:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}: {message}")

    scheme = s.database_url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgres"):
        fail("database_url", f"unsupported scheme {scheme!r} (use sqlite:/// or postgresql://)")
    if s.pool_size < 1:
        fail("pool_size", f"must be at least 1, got {s.pool_size}")
    for name in ("heartbeat", "lease_ttl", "watchdog_interval"):
        if getattr(s, name) <= timedelta(0):
            fail(name, "must be positive")
    for name in ("grace_period", "settle_time", "retention", "db_alert_after", "realert_after"):
        if getattr(s, name) < timedelta(0):
            fail(name, "must not be negative")
    # A lease must survive two missed heartbeats, or a busy instance loses its runs.
    if s.lease_ttl < 3 * s.heartbeat:
        fail("lease_ttl", f"must be at least 3 x heartbeat ({3 * s.heartbeat.total_seconds():g}s)")
    if not 0 < s.http_port < 65536:
        fail("http_port", f"must be 1-65535, got {s.http_port}")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail("log_level", f"must be DEBUG, INFO, WARNING or ERROR, got {s.log_level!r}")
    if s.max_log_bytes < 1024:
        fail("max_log_bytes", "must be at least 1024")
    if s.catchup_limit < 1:
        fail("catchup_limit", "must be at least 1")
    for name in ("alert_group_after", "skip_alert_after"):
        if not 1 <= getattr(s, name) <= 100_000:
            fail(name, f"must be 1-100000, got {getattr(s, name)}")
    if s.alert_update_every < timedelta(0):
        fail("alert_update_every", "must not be negative")
    if s.slack_webhook_url and s.slack_token:
        fail(
            "slack_token",
            "set either SCHEDULER_SLACK_WEBHOOK_URL or SCHEDULER_SLACK_TOKEN, not both",
        )
