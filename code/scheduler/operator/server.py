"""The HTTP server: waitress in a thread of the daemon, serving the WSGI app of `http.Api`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from scheduler.errors import ConfigError

log = logging.getLogger(__name__)


class HttpServer:
    """waitress in a thread of the daemon; `port=0` picks a free port (tests)."""

    def __init__(self, app: Callable[..., Any], host: str, port: int, threads: int = 4) -> None:
        import waitress

        try:
            self._server = waitress.create_server(
                app,
                host=host,
                port=port,
                threads=threads,
                ident="scheduler",
                clear_untrusted_proxy_headers=True,
            )
        except OSError as exc:
            raise ConfigError(
                f"SCHEDULER_HTTP_PORT: cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
        self.host, self.port = self._server.effective_host, int(self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        log.info("serving the API, dashboard and metrics on %s", self.url, extra={"action": "http"})
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("HTTP reads (jobs, runs, logs) need no token and %s is not loopback", self.host)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (up to `timeout`), end the thread."""
        from waitress import wasyncore

        server = self._server
        if self._thread.is_alive():
            # Close the sockets from the loop's own thread, so it never polls a closed descriptor.
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
            self._thread.join(timeout)
        else:
            wasyncore.close_all(server._map)
        server.task_dispatcher.shutdown(timeout=timeout)
