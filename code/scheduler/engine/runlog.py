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
import time
from typing import TextIO

_local = threading.local()


class FastFormatter(logging.Formatter):
    """A Formatter whose date text is computed once per second instead of once per record.

    Safe to share between threads: the second and its text are swapped as one tuple."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._date = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        date = self._date
        if date[0] != second:
            date = self._date = (second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second)))
        return f"{date[1]},{int(record.msecs):03d}"


_FORMAT = FastFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def line(level: str, logger: str, message: str) -> str:
    """`message` as a run's log shows a record of `logger` logged now (the CaptureHandler's format),
    for lines the runner writes into a run's log itself."""
    now = time.time()
    second = int(now)
    date = _FORMAT._date
    if date[0] != second:
        date = _FORMAT._date = (second, time.strftime("%Y-%m-%d %H:%M:%S", _FORMAT.converter(second)))
    return f"{date[1]},{int((now - second) * 1000):03d} {level} {logger}: {message}\n"


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
