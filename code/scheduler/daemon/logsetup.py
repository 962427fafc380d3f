"""Logging: a rotated `logs/info.log`, optionally stderr, and per-run capture."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from scheduler import writable
from scheduler.engine import runlog

FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"


def configure(log_dir: Path, level: str, max_bytes: int, backups: int, *, stderr: bool) -> Path:
    """Send logs to `log_dir/info.log` (rotated) and, in the foreground, to stderr."""
    writable.make(log_dir, "SCHEDULER_LOG_DIR")  # ConfigError naming the folder, not a traceback
    path = log_dir / "info.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, runlog.CaptureHandler):
            root.removeHandler(handler)
    file_handler = QuietRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)
    if stderr:
        stream = logging.StreamHandler(sys.__stderr__)
        stream.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(stream)
    set_level(level)
    for noisy in ("sqlalchemy", "alembic", "urllib3", "waitress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    runlog.install()
    return path


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


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
