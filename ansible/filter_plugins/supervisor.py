"""Jinja filters that write values into a supervisord program section safely.

supervisord reads its files with configparser, where " ;" or " #" anywhere on
a line starts a comment; it expands "%(name)s" in values, so a literal "%"
must be doubled; and it splits `environment=` with shlex in non-POSIX mode:
there are no backslash escapes, quotes only group, and every quote character
at either end of a value is stripped. So a value is wrapped in whichever quote
it does not contain, and a value these rules cannot carry is rejected with an
error that names the key, never the value (it may be a password or a token).

Plain Jinja2 (the system test) and Ansible (as a filter plugin) both load this
file; it imports nothing from Ansible.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INLINE_COMMENT = re.compile(r"\s[;#]")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SupervisorValueError(ValueError):
    """A value that supervisord would read back differently."""


def supervisor_escape(value: Any, name: str = "value", expansions: int = 1) -> str:
    """`value` as supervisord text: each "%" doubled for each time supervisord expands the option.

    supervisord expands most options once, but `stdout_logfile` and
    `stderr_logfile` twice. Raises SupervisorValueError naming `name`.
    """
    text = str(value)
    _check_line(text, name)
    escaped = text.replace("%", "%" * 2**expansions)
    # supervisord replaces "%(here)s" before it expands anything, escaped or not.
    if "%(here)s" in escaped:
        raise SupervisorValueError(
            f"supervisor {name}: contains '(here)s' after a '%', which supervisord rewrites"
        )
    return escaped


def supervisor_bool(value: Any, name: str = "value") -> str:
    """true/false for supervisord; accepts booleans and INI-inventory strings like 'no'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text in _TRUE:
        return "true"
    if text in _FALSE:
        return "false"
    raise SupervisorValueError(f"supervisor {name}: not a boolean: {value!r}")


def supervisor_environment(
    pairs: Mapping[str, Any] | Iterable[tuple[str, Any]], raw: Iterable[str] = ()
) -> str:
    """KEY="value",... for `environment=`.

    `pairs` is a mapping or a list of (key, value). Values are escaped, except
    for the keys in `raw`, whose values already use supervisord's "%(...)s"
    expansions (their other parts must be passed through `supervisor_escape`).
    None values are left out. Raises SupervisorValueError naming the key.
    """
    items: Iterable[tuple[str, Any]] = pairs.items() if isinstance(pairs, Mapping) else pairs
    keep_raw = set(raw)
    out = []
    for key, value in items:
        if value is None:
            continue
        if not isinstance(key, str) or not _KEY.match(key):
            raise SupervisorValueError(f"supervisor environment: invalid variable name {key!r}")
        text = str(value) if key in keep_raw else supervisor_escape(value, f"environment {key}")
        _check_line(text, f"environment {key}")
        out.append(f"{key}={_quote(text, key)}")
    return ",".join(out)


def _check_line(text: str, name: str) -> None:
    if any(c in text for c in "\r\n\0"):
        raise SupervisorValueError(f"supervisor {name}: contains a line break or NUL")
    if _INLINE_COMMENT.search(text):
        raise SupervisorValueError(
            f"supervisor {name}: contains a space before ';' or '#', which supervisord reads as a comment"
        )


def _quote(text: str, key: str) -> str:
    if text and (text[0] in "'\"" or text[-1] in "'\""):
        raise SupervisorValueError(
            f"supervisor environment {key}: starts or ends with a quote, which supervisord strips"
        )
    if '"' not in text:
        return f'"{text}"'
    if "'" not in text:
        return f"'{text}'"
    raise SupervisorValueError(
        f"supervisor environment {key}: contains both ' and \" quotes, which supervisord cannot read"
    )


class FilterModule:
    """Ansible's entry point for filter plugins."""

    def filters(self) -> dict[str, Any]:
        return {
            "supervisor_escape": supervisor_escape,
            "supervisor_bool": supervisor_bool,
            "supervisor_environment": supervisor_environment,
        }
