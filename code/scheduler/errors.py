"""The exception hierarchy.

Permanent errors (a bad setting, a broken job definition) are kept apart from
transient ones (the database is away for a moment), because callers treat
them differently: the first ends a command, the second is retried.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SchedulerError):
    """A setting is invalid; the message names the setting."""


class JobDefinitionError(SchedulerError):
    """A job module or a job declaration is invalid; the message names it."""


class StoreError(SchedulerError):
    """A permanent problem with the database (schema too new, bad URL)."""


class StoreUnavailable(SchedulerError):
    """The database did not answer or refused for a transient reason."""


class NotFoundError(SchedulerError):
    """A named job or run does not exist."""


class RefusedError(SchedulerError):
    """The action is valid but cannot be done in the job's current state (HTTP 409)."""


class AlreadyRunningError(SchedulerError):
    """Another daemon already holds the pidfile or the SQLite database."""


def first_line(error: BaseException | None) -> str:
    """The first line of an error's text (a driver's message may go on with detail lines)."""
    text = str(error or "").strip().splitlines()
    return text[0] if text else type(error).__name__
