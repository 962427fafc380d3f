"""Capture what a job logs or prints, per run, into a bounded buffer.

A job runs on a pool thread. While it runs, that thread is bound to the run's
`LogBuffer`: every logging record emitted on the thread (whatever the logger)
and everything printed to stdout/stderr lands in the buffer, which is stored
on the run row when the run ends.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

_local = threading.local()
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class LogBuffer:
    """Text bounded to `limit` bytes; later text is dropped and `truncated` set."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._size = 0
        self.truncated = False
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            room = self.limit - self._size
            data = text.encode("utf-8", "replace")
            if len(data) > room:
                data = data[: max(0, room)]
                self.truncated = True
            if data:
                self._parts.append(data.decode("utf-8", "ignore"))
                self._size += len(data)

    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)


def bind(buffer: LogBuffer | None) -> None:
    """Route this thread's log records and prints to `buffer` (None unbinds)."""
    _local.buffer = buffer


def current() -> LogBuffer | None:
    return getattr(_local, "buffer", None)


class CaptureHandler(logging.Handler):
    """Root-logger handler: copies records of bound threads into their buffer."""

    def handle(self, record: logging.LogRecord) -> bool:
        # Most records come from threads with no run bound: no handler lock for those
        # (and none needed for the others: each buffer has its own).
        if current() is None or not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        buffer = current()
        if buffer is not None:
            try:
                buffer.write(_FORMAT.format(record) + "\n")
            except Exception:
                self.handleError(record)


class RoutingStream:
    """Stand-in for sys.stdout/stderr: a bound thread's writes also go to its buffer."""

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        buffer = current()
        if buffer is not None:
            buffer.write(text)
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


_installed = False


def install() -> None:
    """Install the capture handler and stream routing once per process."""
    global _installed
    if _installed:
        return
    logging.getLogger().addHandler(CaptureHandler())
    sys.stdout = RoutingStream(sys.stdout)
    sys.stderr = RoutingStream(sys.stderr)
    _installed = True
