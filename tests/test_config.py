"""Settings: layering (defaults < file < environment < flags), validation, redaction."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from scheduler.config import Settings, load, redact_url
from scheduler.errors import ConfigError

SECRET = "hunter2-s3cr3t"
PG_WITH_PASSWORD = f"postgresql://sched:{SECRET}@db.internal:5432/jobs"


def toml(tmp_path: Path, text: str, name: str = "scheduler.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    message = str(info.value)
    assert "\n" not in message, "a config error is one line"
    return message


# -- layers -----------------------------------------------------------------------


def test_defaults_apply_when_nothing_is_set() -> None:
    settings = load(env={}, flags={})
    assert settings == Settings()
    assert settings.pool_size == 8
    assert settings.heartbeat == timedelta(seconds=2)
    assert settings.lease_ttl == timedelta(seconds=10)
    assert settings.is_sqlite


def test_file_overrides_defaults(tmp_path: Path) -> None:
    file = toml(tmp_path, '[scheduler]\npool_size = 3\ngrace_period = "1m"\nhttp_enabled = true\n')
    settings = load(env={}, config_file=file)
    assert settings.pool_size == 3
    assert settings.grace_period == timedelta(minutes=1)
    assert settings.http_enabled is True


def test_file_without_a_section_is_read_at_top_level(tmp_path: Path) -> None:
    file = toml(tmp_path, "pool_size = 4\nheartbeat = 1.5\nlease_ttl = 5\n")
    settings = load(env={}, config_file=file)
    assert settings.pool_size == 4
    assert settings.heartbeat == timedelta(seconds=1.5)
    assert settings.lease_ttl == timedelta(seconds=5)


def test_environment_overrides_file(tmp_path: Path) -> None:
    file = toml(tmp_path, "[scheduler]\npool_size = 3\nlog_level = 'DEBUG'\n")
    settings = load(env={"SCHEDULER_POOL_SIZE": "5"}, config_file=file)
    assert settings.pool_size == 5
    assert settings.log_level == "DEBUG"  # the file still supplies what env does not


def test_flags_override_environment_and_file(tmp_path: Path) -> None:
    file = toml(tmp_path, "[scheduler]\npool_size = 3\ncatchup_limit = 7\n")
    env = {"SCHEDULER_POOL_SIZE": "5", "SCHEDULER_CATCHUP_LIMIT": "9"}
    settings = load(env=env, flags={"pool_size": 6, "catchup_limit": None}, config_file=file)
    assert settings.pool_size == 6
    assert settings.catchup_limit == 9  # a flag left unset (None) does not override


def test_config_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    file = toml(tmp_path, "[scheduler]\nslack_channel = '#ops'\n")
    settings = load(env={"SCHEDULER_CONFIG": str(file)})
    assert settings.slack_channel == "#ops"


def test_durations_accept_units_and_plain_seconds() -> None:
    env = {
        "SCHEDULER_HEARTBEAT": "500ms",
        "SCHEDULER_LEASE_TTL": "2s",
        "SCHEDULER_GRACE_PERIOD": "5m",
        "SCHEDULER_RETENTION": "7d",
        "SCHEDULER_SETTLE_TIME": "1.5",
        "SCHEDULER_DB_ALERT_AFTER": "2h",
    }
    settings = load(env=env)
    assert settings.heartbeat == timedelta(milliseconds=500)
    assert settings.lease_ttl == timedelta(seconds=2)
    assert settings.grace_period == timedelta(minutes=5)
    assert settings.retention == timedelta(days=7)
    assert settings.settle_time == timedelta(seconds=1.5)
    assert settings.db_alert_after == timedelta(hours=2)


@pytest.mark.parametrize("text", ["1", "true", "YES", "on"])
def test_true_booleans(text: str) -> None:
    assert load(env={"SCHEDULER_HTTP_ENABLED": text}).http_enabled is True


@pytest.mark.parametrize("text", ["0", "false", "No", "off", ""])
def test_false_booleans(text: str) -> None:
    assert load(env={"SCHEDULER_HTTP_ENABLED": text}).http_enabled is False


def test_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load(env={"SCHEDULER_JOBS_PATH": "myjobs", "SCHEDULER_PIDFILE": "~/sched.pid"})
    assert settings.jobs_path == tmp_path / "myjobs"
    assert settings.pidfile.is_absolute() and "~" not in str(settings.pidfile)


def test_postgres_scheme_is_accepted() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg2://u@h/db"):
        settings = load(env={"SCHEDULER_DATABASE_URL": url})
        assert settings.database_url == url and not settings.is_sqlite


# -- invalid values name the setting ---------------------------------------------------


INVALID_ENV = [
    pytest.param(
        {"SCHEDULER_DATABASE_URL": "mysql://u@h/db"},
        "SCHEDULER_DATABASE_URL: unsupported scheme 'mysql'",
        id="mysql-scheme",
    ),
    pytest.param(
        {"SCHEDULER_POOL_SIZE": "-2"}, "SCHEDULER_POOL_SIZE: must be at least 1", id="negative-pool"
    ),
    pytest.param({"SCHEDULER_POOL_SIZE": "0"}, "SCHEDULER_POOL_SIZE: must be at least 1", id="zero-pool"),
    pytest.param(
        {"SCHEDULER_POOL_SIZE": "many"}, "SCHEDULER_POOL_SIZE: not a whole number", id="pool-not-int"
    ),
    pytest.param(
        {"SCHEDULER_HEARTBEAT": "5s", "SCHEDULER_LEASE_TTL": "14s"},
        "SCHEDULER_LEASE_TTL: must be at least 3 x heartbeat (15s)",
        id="lease-under-3-heartbeats",
    ),
    pytest.param({"SCHEDULER_HEARTBEAT": "0s"}, "SCHEDULER_HEARTBEAT: must be positive", id="zero-heartbeat"),
    pytest.param({"SCHEDULER_GRACE_PERIOD": "soon"}, "SCHEDULER_GRACE_PERIOD: not a duration", id="bad-dur"),
    pytest.param({"SCHEDULER_RETENTION": "-1d"}, "SCHEDULER_RETENTION: not a duration", id="negative-dur"),
    pytest.param({"SCHEDULER_RETENTION": "3 weeks"}, "SCHEDULER_RETENTION: not a duration", id="bad-unit"),
    pytest.param({"SCHEDULER_HTTP_ENABLED": "maybe"}, "SCHEDULER_HTTP_ENABLED: not a boolean", id="bad-bool"),
    pytest.param({"SCHEDULER_HTTP_PORT": "70000"}, "SCHEDULER_HTTP_PORT: must be 1-65535", id="bad-port"),
    pytest.param({"SCHEDULER_LOG_LEVEL": "LOUD"}, "SCHEDULER_LOG_LEVEL: must be DEBUG", id="bad-level"),
    pytest.param(
        {"SCHEDULER_MAX_LOG_BYTES": "10"}, "SCHEDULER_MAX_LOG_BYTES: must be at least", id="log-bytes"
    ),
    pytest.param(
        {"SCHEDULER_CATCHUP_LIMIT": "0"}, "SCHEDULER_CATCHUP_LIMIT: must be at least 1", id="catchup"
    ),
    pytest.param(
        {"SCHEDULER_SLACK_WEBHOOK_URL": "https://hooks.example/x", "SCHEDULER_SLACK_TOKEN": "xoxb-1"},
        "SCHEDULER_SLACK_TOKEN: set either",
        id="both-slack-credentials",
    ),
]


@pytest.mark.parametrize(("env", "message"), INVALID_ENV)
def test_invalid_environment_value_is_one_error_naming_the_setting(env: dict[str, str], message: str) -> None:
    assert message in error_of(env=env)


def test_invalid_flag_is_named_as_the_flag() -> None:
    message = error_of(env={}, flags={"grace_period": "forever"})
    assert message.startswith("--grace-period: not a duration")


def test_negative_pool_size_from_a_flag_is_rejected() -> None:
    assert "POOL_SIZE: must be at least 1" in error_of(env={}, flags={"pool_size": -1})


def test_invalid_file_value_names_the_file_and_key(tmp_path: Path) -> None:
    file = toml(tmp_path, "[scheduler]\nhttp_enabled = 'perhaps'\n")
    message = error_of(env={}, config_file=file)
    assert message.startswith(f"{file}: http_enabled: not a boolean")


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    file = toml(tmp_path, "[scheduler]\npool_sise = 3\n")
    assert error_of(env={}, config_file=file) == f"{file}: unknown setting 'pool_sise'"


def test_invalid_toml_is_rejected_naming_the_file(tmp_path: Path) -> None:
    file = toml(tmp_path, "[scheduler\npool_size = 3\n")
    assert error_of(env={}, config_file=file).startswith(f"{file}: invalid TOML")


def test_missing_config_file_is_rejected_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "absent.toml"
    assert error_of(env={}, config_file=file).startswith(f"{file}: cannot read config file")


def test_lease_invariant_holds_at_exactly_three_heartbeats() -> None:
    settings = load(env={"SCHEDULER_HEARTBEAT": "4s", "SCHEDULER_LEASE_TTL": "12s"})
    assert settings.lease_ttl == 3 * settings.heartbeat


# -- secrets ------------------------------------------------------------------------


def test_database_password_never_shows_in_repr() -> None:
    settings = load(env={"SCHEDULER_DATABASE_URL": PG_WITH_PASSWORD})
    assert settings.database_url == PG_WITH_PASSWORD
    text = repr(settings)
    assert SECRET not in text
    assert "postgresql://sched:***@db.internal:5432/jobs" in text
    assert SECRET not in str(settings)


def test_tokens_never_show_in_repr() -> None:
    env = {"SCHEDULER_API_TOKEN": "api-" + SECRET, "SCHEDULER_SLACK_TOKEN": "xoxb-" + SECRET}
    text = repr(load(env=env))
    assert SECRET not in text
    assert "api_token='***'" in text and "slack_token='***'" in text


def test_database_password_never_shows_in_errors() -> None:
    url = f"mysql://sched:{SECRET}@db.internal/jobs"
    message = error_of(env={"SCHEDULER_DATABASE_URL": url, "SCHEDULER_API_TOKEN": SECRET})
    assert SECRET not in message
    message = error_of(env={"SCHEDULER_DATABASE_URL": PG_WITH_PASSWORD, "SCHEDULER_POOL_SIZE": "x"})
    assert SECRET not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (PG_WITH_PASSWORD, "postgresql://sched:***@db.internal:5432/jobs"),
        ("postgresql://sched:p%40ss@h/db", "postgresql://sched:***@h/db"),
        ("postgresql://sched:p@ss@h/db", "postgresql://sched:***@h/db"),
        ("postgresql://sched@h/db", "postgresql://sched@h/db"),
        ("sqlite:////var/lib/scheduler.db", "sqlite:////var/lib/scheduler.db"),
        ("postgresql://:only-password@h/db", "postgresql://:***@h/db"),
        # SQLAlchemy connects with these raw characters in the password: hide it all the same.
        ("postgresql://sched:pa/ss@h/db", "postgresql://sched:***@h/db"),
        ("postgresql://sched:pa?ss@h:5432/db", "postgresql://sched:***@h:5432/db"),
        ("postgresql://sched:pa#ss@h/db?sslmode=require", "postgresql://sched:***@h/db?sslmode=require"),
        ("postgresql+psycopg2://sched:pw@[::1]:5432/db", "postgresql+psycopg2://sched:***@[::1]:5432/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        # libpq reads these query parameters as credentials, keys percent-decoded.
        ("postgresql://sched@h/db?password=S3cretPW", "postgresql://sched@h/db?password=***"),
        (
            "postgresql://h/db?sslmode=require&sslpassword=k&passfile=/p&pass%77ord=x",
            "postgresql://h/db?sslmode=require&sslpassword=***&passfile=***&pass%77ord=***",
        ),
        # Parsers disagree where a raw '@' ends the userinfo: hide every reading's password.
        ("postgresql://u:a@b/c@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pw@h/db?password=p@ss", "postgresql://u:***"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_database_url_that_is_not_a_url_is_rejected_without_echoing_it() -> None:
    message = error_of(env={"SCHEDULER_DATABASE_URL": f"host=db password={SECRET} dbname=jobs"})
    assert message == "SCHEDULER_DATABASE_URL: not a URL (use sqlite:///path or postgresql://user@host/db)"


# -- types, ranges and the shape of the file --------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("pool_size = 2.7", "pool_size: must be a whole number, got float 2.7"),
        ("http_port = true", "http_port: must be a whole number, got bool True"),
        ("http_enabled = 1", "http_enabled: must be true or false, got int 1"),
        ("grace_period = false", "grace_period: must be a duration, got bool False"),
        ("http_host = 8080", "http_host: must be a string, got int 8080"),
        ("jobs_path = ['a']", "jobs_path: must be a string, got list ['a']"),
    ],
)
def test_file_value_of_the_wrong_type_is_rejected_not_coerced(
    tmp_path: Path, line: str, message: str
) -> None:
    file = toml(tmp_path, f"[scheduler]\n{line}\n")
    assert error_of(env={}, config_file=file) == f"{file}: {message}"


def test_file_with_top_level_keys_beside_a_scheduler_table_is_rejected(tmp_path: Path) -> None:
    file = toml(tmp_path, "pool_size = 'not even valid'\n[scheduler]\npool_size = 3\n")
    assert error_of(env={}, config_file=file) == (
        f"{file}: top-level settings beside a [scheduler] table: pool_size"
        " (put every setting under [scheduler], or use no table)"
    )


def test_file_whose_scheduler_key_is_not_a_table_is_rejected(tmp_path: Path) -> None:
    file = toml(tmp_path, "scheduler = 3\n")
    assert (
        error_of(env={}, config_file=file) == f"{file}: scheduler: must be a table ([scheduler]), not a value"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCHEDULER_POOL_SIZE": "9" * 5000}, "SCHEDULER_POOL_SIZE: not a whole number"),
        ({"SCHEDULER_POOL_SIZE": "100000"}, "SCHEDULER_POOL_SIZE: must be at most 1024, got 100000"),
        ({"SCHEDULER_CATCHUP_LIMIT": "1e9"}, "SCHEDULER_CATCHUP_LIMIT: not a whole number: '1e9'"),
        ({"SCHEDULER_LOG_BACKUPS": "-1"}, "SCHEDULER_LOG_BACKUPS: must not be negative"),
        ({"SCHEDULER_LOG_MAX_BYTES": "10"}, "SCHEDULER_LOG_MAX_BYTES: must be at least 1024"),
        ({"SCHEDULER_RETENTION": "99999999999999999999d"}, "SCHEDULER_RETENTION: not a duration up to 3650d"),
        ({"SCHEDULER_GRACE_PERIOD": "4000d"}, "SCHEDULER_GRACE_PERIOD: not a duration up to 3650d"),
        ({"SCHEDULER_HTTP_PORT": "99999999999999999999999"}, "SCHEDULER_HTTP_PORT: not a whole number"),
    ],
)
def test_overflowing_or_malformed_numbers_are_one_error_naming_the_setting(
    env: dict[str, str], message: str
) -> None:
    assert error_of(env=env).startswith(message)


@pytest.mark.parametrize("value", ["inf", "nan", "1e400"])
def test_infinite_or_nan_durations_in_a_file_are_rejected(tmp_path: Path, value: str) -> None:
    file = toml(tmp_path, f"[scheduler]\nretention = {value}\n")
    assert error_of(env={}, config_file=file).startswith(f"{file}: retention: not a duration up to 3650d")


# -- the HTTP address ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["256.1.1.1", "1.2.3", "bad host", "-x.example", "a" * 300])
def test_http_host_that_is_not_an_address_or_host_name_is_rejected_naming_the_setting(host: str) -> None:
    env = {"SCHEDULER_HTTP_ENABLED": "true", "SCHEDULER_HTTP_HOST": host, "SCHEDULER_API_TOKEN": "t"}
    assert error_of(env=env).startswith("SCHEDULER_HTTP_HOST: not an IP address or host name")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "sched.example.org"])
def test_non_loopback_http_host_without_a_token_is_refused(host: str) -> None:
    env = {"SCHEDULER_HTTP_ENABLED": "true", "SCHEDULER_HTTP_HOST": host}
    assert error_of(env=env).startswith(
        f"SCHEDULER_HTTP_HOST: {host} is not loopback and no SCHEDULER_API_TOKEN"
    )


def test_non_loopback_http_host_is_served_with_a_token_or_with_public_reads_said_explicitly() -> None:
    base = {"SCHEDULER_HTTP_ENABLED": "true", "SCHEDULER_HTTP_HOST": "0.0.0.0"}
    assert load(env={**base, "SCHEDULER_API_TOKEN": "t"}).http_host == "0.0.0.0"
    assert load(env={**base, "SCHEDULER_HTTP_PUBLIC_READS": "true"}).http_public_reads
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert load(env={**base, "SCHEDULER_HTTP_HOST": host}).http_host == host


def test_database_url_of_the_wrong_type_in_a_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    file = toml(tmp_path, f"[scheduler]\ndatabase_url = ['postgresql://u:{SECRET}@h/db']\n")
    assert error_of(env={}, config_file=file) == f"{file}: database_url: must be a string"
