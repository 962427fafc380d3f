"""Ports on 127.0.0.1 for the servers a test starts, or for a connection that must be refused."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now: the OS picked it for a socket that is closed again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
