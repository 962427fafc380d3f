"""Logging: a rotated `logs/info.log`, optionally stderr, and per-run capture.

Records are written by one writer thread, not by the thread that logs them: the
root logger's only output handler is a QueueHandler, so a pool thread logging
"run N started" pays for building the record and a queue append, never for a
handler lock, formatting, a file write or a rollover check. The writer takes
what is queued in batches and flushes each file once per batch, so
`tail -f logs/info.log` still shows every run as it happens.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from pathlib import Path

from scheduler import writable
from scheduler.engine import runlog
from scheduler.engine.runlog import FastFormatter

FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"
BATCH = 1000

_listener: BatchListener | None = None


class QuietRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A log file that, when it cannot be written (a full disk), says so in one line.

    logging's default prints a "--- Logging error ---" traceback per record to
    sys.stderr, which, on a job's thread, is captured into that run's log: every run
    would fill with them. Instead: one line on the process's real stderr when writing
    starts failing, one when it works again, nothing per record.
    """

    failing = False

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.failing and not self._last_failed:
            self.failing = False
            _say(f"scheduler: logging to {self.baseFilename} works again")
        self._last_failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        self._last_failed = True
        if self.failing:
            return
        self.failing = True
        error = sys.exc_info()[1]
        reason = getattr(error, "strerror", None) or error
        _say(f"scheduler: cannot write {self.baseFilename}: {reason}; log lines are dropped until it can")

    _last_failed = False


def _say(line: str) -> None:
    """One line on the real stderr (not the per-run capture); ignored if that fails too."""
    try:
        stream = sys.__stderr__
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()
    except (OSError, ValueError):
        pass


class LazyFlushFileHandler(QuietRotatingFileHandler):
    """The rotated file, flushed by the writer once per batch, its size checked without formatting
    twice. A write that fails (a full disk) is reported as QuietRotatingFileHandler does."""

    def emit(self, record: logging.LogRecord) -> None:
        # Buffered: whether the disk took it is known at flush_batch, which reports either way.
        logging.handlers.RotatingFileHandler.emit(self, record)

    def flush(self) -> None:  # StreamHandler.emit flushes after every record: the writer does it per batch
        pass

    def flush_batch(self) -> None:
        try:
            logging.StreamHandler.flush(self)
        except Exception:
            self.handleError(_FLUSH)
            return
        if self.failing:
            self.failing = False
            _say(f"scheduler: logging to {self.baseFilename} works again")

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        # The stdlib formats the record a second time and stats the file on every record.
        # Rolling once the file has reached maxBytes (overshooting by at most one record) is enough.
        if self.stream is None or self.maxBytes <= 0:
            return False
        return bool(self.stream.tell() >= self.maxBytes)


_FLUSH = logging.makeLogRecord({"msg": "flushing the log file"})


class PreparedQueueHandler(logging.handlers.QueueHandler):
    """Puts the record itself on the queue, with its message merged and any traceback as text.

    The stdlib QueueHandler formats the whole line on the calling thread; this leaves
    the formatting (time stamp, level, thread name) to the writer.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args, record.exc_info = message, None, None
        return record

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the queue is thread-safe, and eight pool threads logging at once
        # would otherwise queue up on it.
        if not self.filter(record):
            return False
        self.emit(record)
        return True


class BatchListener(logging.handlers.QueueListener):
    """QueueListener that handles what is queued in batches and flushes each file once per batch."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord], *handlers: logging.Handler) -> None:
        super().__init__(records, *handlers, respect_handler_level=True)
        self.records = records

    def _monitor(self) -> None:
        q = self.records
        while True:
            batch = [q.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = False
            for record in batch:
                if record is self._sentinel:  # type: ignore[attr-defined]
                    stop = True
                    continue
                self.handle(record)
            for handler in self.handlers:
                try:
                    if isinstance(handler, LazyFlushFileHandler):
                        handler.flush_batch()
                    else:
                        handler.flush()
                except Exception:  # noqa: S110 (a closed or broken stderr: the writer thread must go on)
                    pass
            if stop:
                return


def configure(log_dir: Path, level: str, max_bytes: int, backups: int, *, stderr: bool) -> Path:
    """Send logs to `log_dir/info.log` (rotated) and, in the foreground, to stderr."""
    global _listener
    writable.make(log_dir, "SCHEDULER_LOG_DIR")  # ConfigError naming the folder, not a traceback
    path = log_dir / "info.log"
    stop_writer()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, runlog.CaptureHandler):
            root.removeHandler(handler)
    file_handler = LazyFlushFileHandler(path, maxBytes=max_bytes, backupCount=backups)
    file_handler.setFormatter(FastFormatter(FORMAT))
    handlers: list[logging.Handler] = [file_handler]
    if stderr:
        stream = logging.StreamHandler(sys.__stderr__)
        stream.setFormatter(FastFormatter(FORMAT))
        handlers.append(stream)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = BatchListener(records, *handlers)
    _listener.start()
    root.addHandler(PreparedQueueHandler(records))
    # Nothing we format uses the caller's file and line or the process: finding the caller walks
    # the stack on every record.
    logging._srcfile = None  # the documented way to skip findCaller
    logging.logProcesses = logging.logMultiprocessing = False
    set_level(level)
    for noisy in ("sqlalchemy", "alembic", "urllib3", "waitress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    runlog.install()
    return path


def stop_writer() -> None:
    """Write what is queued and stop the writer thread (at exit; before reconfiguring)."""
    global _listener
    if _listener is not None:
        listener, _listener = _listener, None
        listener.stop()
        for handler in listener.handlers:
            handler.close()


atexit.register(stop_writer)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
