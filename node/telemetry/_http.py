"""The node's HTTP endpoint for Prometheus and for probes: ``GET /metrics`` and
``GET /healthz`` on ``metrics.listen``, served by an asyncio server the node owns.

Not prometheus-client's ``start_http_server``: it serves from a thread of its own,
and the collector reads the node's live tables (process records, pools, counts),
which only the event loop's thread may read safely. Here a scrape runs on the loop
like everything else, and stopping the server is one awaited step of the shutdown.

Bounded against what an open port invites: at most :data:`MAX_CONNECTIONS` requests at
once (more are refused at once), a request head of at most 8 KiB read within
:data:`REQUEST_TIMEOUT` seconds, one request per connection, ``GET``/``HEAD`` only.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable

from ._collector import NodeMetrics

log = logging.getLogger("moonwire.telemetry")

MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 5.0
MAX_HEAD = 8192

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class MetricsUnavailable(Exception):
    """The metrics address could not be listened on (taken, not an address of this host)."""


class MetricsServer:
    """``/metrics`` (the node's :class:`NodeMetrics`) and ``/healthz`` (200 when
    ``healthy()``, else 503) on ``host:port``."""

    def __init__(self, metrics: NodeMetrics, host: str, port: int, healthy: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.host, self.port = host, port
        self.healthy = healthy
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.refused = 0
        """Connections closed at once: :data:`MAX_CONNECTIONS` were being served."""

    @property
    def address(self) -> str:
        """``host:port`` as bound (the port the system chose, given 0)."""
        if self._server is None or not self._server.sockets:
            return f"{self.host}:{self.port}"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        """Listen.

        Raises:
            MetricsUnavailable: the address is taken or cannot be bound, naming it.
        """
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        except OSError as err:
            why = "the address is already in use (another node or program listens there)" \
                if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
            raise MetricsUnavailable(f"metrics: cannot listen on {self.host}:{self.port}: {why}; set metrics.listen "
                                     "(--metrics HOST:PORT) to a free address, or unset it") from err
        log.info("metrics on http://%s/metrics", self.address)

    async def stop(self) -> None:
        """Stop listening, end the requests being served, and wait for them."""
        if self._server is not None:
            self._server.close()
        handlers, self._handlers = self._handlers, set()
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio runs this in a task of its own per connection; the task is kept here,
        # so that stop() cancels and awaits it (asyncio's server does not, before 3.12).
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self._handlers.add(task)
        try:
            await self._respond(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:  # noqa: BLE001 - one request's failure is logged, never the node's
            log.exception("metrics: serving a request failed")
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return await _send(writer, 408, b"request head not received in time\n")
        except asyncio.LimitOverrunError:
            return await _send(writer, 431, b"request head too large\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return await _send(writer, 400, b"malformed request line\n")
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return await _send(writer, 405, b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.partition("?")[0]
        if path == "/metrics":
            body, content_type = self.metrics.exposition(headers.get("accept", ""))
            return await _send(writer, 200, body, content_type=content_type, head=method == "HEAD")
        if path == "/healthz":
            ok = self.healthy()
            return await _send(writer, 200 if ok else 503, b"ok\n" if ok else b"not ready\n", head=method == "HEAD")
        return await _send(writer, 404, b"not found: try /metrics or /healthz\n", head=method == "HEAD")


async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, *,
                content_type: str = "text/plain; charset=utf-8", head: bool = False, extra: str = "") -> None:
    writer.write((f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n").encode("latin-1"))
    if not head:
        writer.write(body)
    await writer.drain()
