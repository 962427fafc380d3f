"""The HTTP server: waitress in a thread of the daemon, with limits that keep /healthz answering."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from scheduler.config import is_loopback
from scheduler.errors import ConfigError
from scheduler.operator.http import MAX_BODY

log = logging.getLogger(__name__)

# waitress limits. An idle or half-sent connection costs a socket, not a thread (waitress
# hands a request to a thread only once it is complete), so /healthz keeps answering while
# hundreds of such connections sit open: there is room for them (CONNECTION_LIMIT, polled with
# poll(), not select() and its 1024-descriptor cap) and they are dropped after CHANNEL_TIMEOUT
# seconds without a byte. A body is refused on its Content-Length before any of it is read.
SERVER_LIMITS = {
    "connection_limit": 1000,
    "channel_timeout": 10,
    "cleanup_interval": 2,
    "asyncore_use_poll": True,
    "backlog": 1024,
    "max_request_header_size": 32 * 1024,
    "max_request_body_size": MAX_BODY + 1,  # waitress refuses >= this; the app allows MAX_BODY
    "inbuf_overflow": MAX_BODY + 1,
    "outbuf_overflow": 1024 * 1024,
}


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
                **SERVER_LIMITS,
            )
        except OSError as exc:
            raise ConfigError(
                f"SCHEDULER_HTTP_PORT: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        except ValueError:  # waitress: "Invalid host/port specified."
            raise ConfigError(f"SCHEDULER_HTTP_HOST: cannot listen on {host!r} port {port}") from None
        self.host, self.port = self._server.effective_host, int(self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        log.info("serving the API, dashboard and metrics on %s", self.url, extra={"action": "http"})
        if not is_loopback(str(self.host)):  # config refuses this unless a token or public reads are set
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
