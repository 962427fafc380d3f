"""Tests that need something outside Python (PostgreSQL, chromium, Ansible) skip loudly without it,
except under CI=true, where every test must run and a missing requirement fails."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(test: str, message: str) -> NoReturn:
    """A `test` ("PostgreSQL test") cannot run, `message` says why: skip it, naming both, or fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: every {test} must run)")
    pytest.skip(f"SKIPPING {test.upper()}: {message}")
