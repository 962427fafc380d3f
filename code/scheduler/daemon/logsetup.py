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
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
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


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
