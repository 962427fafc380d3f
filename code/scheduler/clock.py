"""Time, injected.

Slots are computed from the wall clock (`now`), waiting uses the monotonic
clock (`Event.wait`). Nothing else in the package reads the time directly, so
tests drive every time-dependent decision with `FakeClock`.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, tz-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes back."""
        ...

    def wait(self, seconds: float, event: threading.Event) -> bool:
        """Wait up to `seconds` or until `event` is set; True if it was set."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float, event: threading.Event) -> bool:
        return event.wait(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to.

    `wait` does not sleep: it advances the clock by the requested time (or
    returns at once if the event is set), so loops driven by it run at full
    speed and deterministically.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs a tz-aware start")
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, delta: timedelta | float) -> datetime:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += max(0.0, seconds)
            return self._now

    def set(self, instant: datetime) -> None:
        """Step the wall clock (as NTP would); the monotonic clock stays put."""
        with self._lock:
            self._now = instant.astimezone(UTC)

    def wait(self, seconds: float, event: threading.Event) -> bool:
        if event.is_set():
            return True
        self.advance(max(0.0, seconds))
        return event.is_set()
