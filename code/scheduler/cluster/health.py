"""Liveness of this instance: is the database answering, is the dispatcher looping.

Written by the loops, read by /healthz, /metrics and the watchdog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.clock import Clock

log = logging.getLogger(__name__)
PREFIX = "database unavailable: "


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    database_up: bool
    database_down_for: float
    loop_age: float
    reason: str


class Health:
    """Database state with one log line per transition, not one per failure."""

    def __init__(self, clock: Clock, loop_stall: float = 10.0) -> None:
        self.clock = clock
        self.loop_stall = loop_stall
        self._lock = threading.Lock()
        self._db_up = True
        self._down_since: float | None = None
        self._reason = ""
        self.recovered_at: float | None = None
        self.loop_mono = clock.monotonic()
        self._on_recovered: list[Callable[[], None]] = []
        self._caught_up = threading.Event()
        self._beat_mono: float | None = None

    def when_recovered(self, callback: Callable[[], None]) -> None:
        """Call `callback` each time the database answers again, to end backoffs early."""
        self._on_recovered.append(callback)

    def database(self, ok: bool, reason: str = "") -> None:
        with self._lock:
            if ok == self._db_up:
                return
            self._db_up = ok
            if ok:
                down = self.clock.monotonic() - (self._down_since or self.clock.monotonic())
                self._down_since, self._reason = None, ""
                self.recovered_at = self.clock.monotonic()
                log.warning("database is back after %.1fs", down)
            else:
                # StoreUnavailable's text already says so: keep the reason without the prefix.
                self._down_since, self._reason = self.clock.monotonic(), reason.removeprefix(PREFIX)
                log.error("database unavailable, backing off: %s", reason)
        if ok:
            for callback in self._on_recovered:
                callback()

    def loop_alive(self) -> None:
        self.loop_mono = self.clock.monotonic()

    def mark_caught_up(self) -> None:
        """The dispatcher decided the slots missed while the daemon was down (start-up catch-up)."""
        if not self._caught_up.is_set():
            self._caught_up.set()
            log.info("start-up catch-up decided the missed slots")

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def heartbeat_written(self) -> None:
        """This instance's heartbeat row was just renewed."""
        self._beat_mono = self.clock.monotonic()

    def heartbeat_age(self) -> float | None:
        """Seconds since this instance last renewed its heartbeat row; None if it never did."""
        beat = self._beat_mono
        return None if beat is None else self.clock.monotonic() - beat

    @property
    def database_up(self) -> bool:
        with self._lock:
            return self._db_up

    def report(self) -> HealthReport:
        now = self.clock.monotonic()
        with self._lock:
            down_for = now - self._down_since if self._down_since is not None else 0.0
            db_up, reason = self._db_up, self._reason
        loop_age = now - self.loop_mono
        if not db_up:
            return HealthReport(False, False, down_for, loop_age, f"{PREFIX}{reason}")
        if loop_age > self.loop_stall:
            return HealthReport(False, True, 0.0, loop_age, f"dispatcher loop stalled for {loop_age:.0f}s")
        return HealthReport(True, True, 0.0, loop_age, "ok")
