"""Settings: defaults < TOML file < `SCHEDULER_*` environment < command-line flags.

Every value is validated at start; an invalid one raises ConfigError whose
message names the setting, e.g.
`SCHEDULER_DATABASE_URL: unsupported scheme 'mysql'`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from scheduler.errors import ConfigError
from scheduler.redact import redact_url

__all__ = ["ENV_PREFIX", "REPO_ROOT", "Settings", "load", "redact_url"]

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "SCHEDULER_"
# Never shown: masked in repr, and a bad value is reported without the value.
SECRET_SETTINGS = ("api_token", "slack_token", "slack_webhook_url")


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
    claim_ahead: timedelta = timedelta(seconds=2)  # slots claimed this long before they are due
    instance_name: str = socket.gethostname()
    http_enabled: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_public_reads: bool = False  # needed to serve a non-loopback address without an API token
    api_token: str = ""
    metrics_per_job_histograms: bool = False
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
    default_isolation: str = "thread"
    crash_loop_after: int = 5
    crash_loop_pause_after: int = 10
    crash_loop_max_backoff: timedelta = timedelta(hours=1)

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["database_url"] = redact_url(self.database_url)
        for secret in SECRET_SETTINGS:
            shown[secret] = "***" if shown[secret] else ""
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file; None for PostgreSQL or an in-memory database."""
        return sqlite_file(self.database_url)


def sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL; None for another scheme or `:memory:`."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1].split("?", 1)[0]  # a query string is not part of the path
    return Path(path) if path and path != ":memory:" else None


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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    section = data
    if "scheduler" in data:
        section = data["scheduler"]
        if not isinstance(section, dict):
            raise ConfigError(f"{file}: scheduler: must be a table ([scheduler]), not a value")
        stray = sorted(k for k in data if k != "scheduler")
        if stray:
            # Keys above [scheduler] would be silently ignored: refuse the mix.
            raise ConfigError(
                f"{file}: top-level settings beside a [scheduler] table: {', '.join(stray)}"
                " (put every setting under [scheduler], or use no table)"
            )
    known = {f.name for f in fields(Settings)}
    out = {}
    for key, raw in section.items():
        if key not in known:
            raise ConfigError(f"{file}: unknown setting {key!r}")
        out[key] = (f"{file}: {key}", raw)
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


# Upper bounds of the numbers (_check has the lower ones): refused rather than overflowing later.
_INT_MAX = {
    "log_max_bytes": 2**40,
    "log_backups": 1000,
    "pool_size": 1024,
    "max_log_bytes": 2**30,
    "catchup_limit": 1_000_000,
}
MAX_DURATION = timedelta(days=3650)


def _convert(name: str, source: str, raw: Any) -> Any:
    default = getattr(Settings(), name)
    try:
        _check_type(default, raw)
        if isinstance(default, bool):
            return _to_bool(raw)
        if isinstance(default, int):
            return _to_int(name, raw)
        if isinstance(default, timedelta):
            return _to_duration(raw)
        if isinstance(default, Path):
            return Path(str(raw)).expanduser().absolute()
        return str(raw)
    except (ValueError, OverflowError) as exc:
        raise ConfigError(f"{source}: {_safe(name, str(exc))}") from None


def _check_type(default: Any, raw: Any) -> None:
    """A file's value must have the setting's type: 2.7 is not a pool size, true not a port."""
    if isinstance(raw, str):
        return
    if isinstance(default, bool):
        ok = isinstance(raw, bool)
    elif isinstance(default, int):
        ok = isinstance(raw, int) and not isinstance(raw, bool)
    elif isinstance(default, timedelta):
        ok = isinstance(raw, int | float) and not isinstance(raw, bool)
    else:
        ok = False
    if not ok:
        want = {bool: "true or false", int: "a whole number", timedelta: "a duration"}.get(
            type(default), "a string"
        )
        raise ValueError(f"must be {want}, got {type(raw).__name__} {raw!r}")


def _to_int(name: str, raw: Any) -> int:
    text = str(raw).strip()
    if not re.fullmatch(r"[+-]?\d{1,19}", text):
        raise ValueError(f"not a whole number: {text[:40]!r}")
    value = int(text)
    if value > _INT_MAX.get(name, 2**63 - 1):
        raise ValueError(f"must be at most {_INT_MAX[name]}, got {value}")
    return value


def _to_duration(raw: Any) -> timedelta:
    if isinstance(raw, int | float):
        seconds = float(raw)
    else:
        match = _DURATION.match(str(raw))
        if not match:
            raise ValueError(f"not a duration: {str(raw)[:40]!r} (use e.g. 30s, 5m, 2h, 7d)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not -MAX_DURATION.total_seconds() <= seconds <= MAX_DURATION.total_seconds():  # also NaN, inf
        raise ValueError(f"not a duration up to {MAX_DURATION.days}d: {raw!r}")
    return timedelta(seconds=seconds)


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
    """The error text without the value of a setting that may hold a secret."""
    if name in SECRET_SETTINGS:
        return "invalid value"
    if name == "database_url":  # "must be a string, got list [...]": drop what follows
        return message.split(", got ", 1)[0]
    return message


def _check(s: Settings) -> None:
    def fail(name: str, message: str) -> None:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}: {message}")

    scheme = s.database_url.split(":", 1)[0].split("+", 1)[0]
    if "://" not in s.database_url or not re.fullmatch(r"[A-Za-z][\w.-]{0,30}", scheme):
        # Not a URL (perhaps a 'host=... password=...' string): echo none of it.
        fail("database_url", "not a URL (use sqlite:///path or postgresql://user@host/db)")
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
    if s.claim_ahead < timedelta(0):
        fail("claim_ahead", "must not be negative")
    # A lease must survive two missed heartbeats, or a busy instance loses its runs.
    if s.lease_ttl < 3 * s.heartbeat:
        fail("lease_ttl", f"must be at least 3 x heartbeat ({3 * s.heartbeat.total_seconds():g}s)")
    if not 0 < s.http_port < 65536:
        fail("http_port", f"must be 1-65535, got {s.http_port}")
    if s.http_enabled:
        _check_http(s, fail)
    if s.log_backups < 0:
        fail("log_backups", f"must not be negative, got {s.log_backups}")
    if s.log_max_bytes < 1024:
        fail("log_max_bytes", "must be at least 1024")
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
    for name in ("crash_loop_after", "crash_loop_pause_after"):
        if getattr(s, name) < 0:
            fail(name, f"must be 0 (off) or more, got {getattr(s, name)}")
    if s.crash_loop_max_backoff <= timedelta(0):
        fail("crash_loop_max_backoff", "must be positive")
    if s.default_isolation not in ("thread", "process"):
        fail("default_isolation", f"must be 'thread' or 'process', got {s.default_isolation!r}")
    if s.slack_webhook_url and s.slack_token:
        fail(
            "slack_token",
            "set either SCHEDULER_SLACK_WEBHOOK_URL or SCHEDULER_SLACK_TOKEN, not both",
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_http(s: Settings, fail: Callable[[str, str], None]) -> None:
    host = s.http_host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # Not an address: a host name, letters digits dots and dashes, not all digits and dots.
        if not _HOSTNAME.fullmatch(host) or re.fullmatch(r"[\d.]+", host):
            fail("http_host", f"not an IP address or host name: {s.http_host[:60]!r}")
    # Reads (jobs, runs, their logs) need no token: a non-loopback address must be meant.
    if not is_loopback(host) and not s.api_token and not s.http_public_reads:
        fail(
            "http_host",
            f"{s.http_host} is not loopback and no SCHEDULER_API_TOKEN is set; set a token, or"
            " SCHEDULER_HTTP_PUBLIC_READS=true to serve reads to anyone who can reach it",
        )


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
