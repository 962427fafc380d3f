"""Shared test support: fakes of external services, real daemons in a sandbox, polling.

- `fakeslack`: a fake Slack HTTP server (the `fake_slack` fixture is registered in tests/conftest.py).
- `tcpproxy`: a TCP proxy that can cut a connection to the database.
- `sandbox`: real `control.py` daemons in a private folder, database reads.
- `supervisord`: the supervisord template rendered and parsed as supervisord reads it.
- `polling`: `wait_until(predicate, timeout)`.
- `required`: `missing(test, why)`: skip loudly, or fail under CI=true.
- `ports`: `free_port()`, a port on 127.0.0.1 nothing listens on.
- `outbox`: `notices(store)`, every outbox row as a test reads it.
- `watchdog`: the settings, caught-up Health, job definitions and pass the FakeClock watchdog tests share.
- `wsgi`: `call(app, method, path, ...)`: one request to a WSGI app in-process.

Test modules import from here, never from one another.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
