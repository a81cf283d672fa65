"""The one HTTP server behind every endpoint our programs serve (GFD's and the plugin's /metrics and
/healthz, GPU telemetry, the standalone exporter), with bounds a hostile or broken client cannot get around:

- a request's head is at most `max_header_bytes` (431 beyond);
- a whole-request deadline: a request must arrive and its answer be sent within `request_deadline_s` of the
  connection being ready for it (not a per-read timeout that one byte a second resets);
- at most `max_connections` at once (503 beyond), all on one event-loop thread: no thread per client;
- a listen backlog of `BACKLOG`, so a burst of scrapers queues in the kernel instead of being refused;
- HEAD answered without a body, GET and HEAD only (405), HTTP/1.0 and 1.1 only: a request line without a
  version (HTTP/0.9) gets 400 and any other version 505, each with a status line;
- one debug log line per bad client, never a traceback.

Why h11 with asyncio rather than waitress (both evaluated, waitress 3.0.2): waitress bounds headers,
connections and threads, but its channel_timeout is an idle timeout (a client sending one header byte a
second was still connected after 12 s with channel_timeout=3), it answered HTTP/0.9 and HTTP/9.9 requests
200, and it sent a body for HEAD; each would have been more code around it. h11 (python-hyper's HTTP/1.1
state machine) parses and enforces the protocol (framing, HEAD, keep-alive, the header cap with 431,
malformed request lines with 400); what is ours is the I/O loop below: the deadline (asyncio.timeout),
the connection cap and the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

import h11
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from gfd.lifecycle import Scope

log = structlog.get_logger("gfd.http")

MAX_HEADER_BYTES = 32 << 10  # Go's net/http allows 1 MB; a scraper or a probe sends a few hundred bytes
REQUEST_DEADLINE_S = 10.0  # Prometheus' default scrape timeout; a kubelet probe's default is 1 s
MAX_CONNECTIONS = 128
BACKLOG = 128
_READ_BYTES = 16 << 10


class AddressError(ValueError):
    """An address that cannot be served; the message is one line with the accepted forms."""


ACCEPTED = "':PORT' (every interface), 'HOST:PORT', '[IPv6]:PORT'"


def parse_address(address: str) -> tuple[str, int]:
    """`:9102` (all interfaces, as Go's net/http), `127.0.0.1:9102`, `localhost:9102`, `[::1]:9102`."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AddressError(f"invalid metrics address {address!r}: expected a port 0-65535 (accepted: {ACCEPTED})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"invalid metrics address {address!r}: an IPv6 host needs brackets "
                           f"(accepted: {ACCEPTED})")
    return host, int(port)


@dataclass(frozen=True)
class Request:
    method: str  # GET or HEAD: the server answers anything else itself
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Response]


class Health(NamedTuple):
    """What a program's health check answers: /healthz is 200 with `reason` when `ok`, else 503."""

    ok: bool
    reason: str


HealthCheck = Callable[[], Health]


def health_handler(check: HealthCheck) -> Handler:
    def handle(_request: Request) -> Response:
        ok, reason = check()
        return Response(200 if ok else 503, reason.encode() + b"\n")

    return handle


def metrics_handler(metrics: CollectorRegistry | Callable[[], bytes]) -> Handler:
    """A registry, rendered per scrape in the format the scraper asks for (OpenMetrics or text, gzip when
    accepted, `name[]` filters: client_python's own negotiation), or what returns an exposition already
    rendered in the text format (GPU telemetry renders once per collection, so a scrape only copies bytes)."""
    if not isinstance(metrics, CollectorRegistry):
        render = metrics
        return lambda _request: Response(200, render(), CONTENT_TYPE_LATEST)
    registry = metrics

    def handle(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        names = request.query.get("name[]")
        body = encoder(registry.restricted_registry(names) if names else registry)
        if gzip_accepted(request.headers.get("accept-encoding", "")):
            return Response(200, gzip.compress(body), content_type, (("Content-Encoding", "gzip"),))
        return Response(200, body, content_type)

    return handle


def _not_found(_request: Request) -> Response:
    return Response(404, b"not found: try /metrics or /healthz\n")


class HttpServer:
    """One listening address and its routes. Binds at construction (AddressError when it cannot), serves
    from `start(scope)` on one thread of that scope running an asyncio loop, until the scope stops."""

    def __init__(self, address: str, *, max_connections: int = MAX_CONNECTIONS,
                 max_header_bytes: int = MAX_HEADER_BYTES, request_deadline_s: float = REQUEST_DEADLINE_S,
                 backlog: int = BACKLOG) -> None:
        self.address = address
        self.max_connections, self.max_header_bytes = max_connections, max_header_bytes
        self.request_deadline_s, self.backlog = request_deadline_s, backlog
        self.routes: dict[str, Handler] = {}
        self._sock = _bind(address)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stop_requested = False
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def bound(self) -> tuple[str, int]:
        """The host and port actually bound (the port chosen when the address asked for port 0)."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def start(self, scope: Scope) -> None:
        """Serve on a thread of `scope`; when it stops, the server stops listening and closes every
        connection (a scrape being answered is cut)."""
        scope.callback(f"http {self.address} socket", self._sock.close)  # after the thread has ended
        scope.start_thread(f"http {self.address}", self._run, wake=self._stop)
        self._ready.wait(5)

    def _stop(self) -> None:
        self._stop_requested = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stopping.set)

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_quiet)
        server = await asyncio.start_server(self._connection, sock=self._sock, backlog=self.backlog)
        self._ready.set()
        if self._stop_requested:  # stopped before the loop ran
            self._stopping.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peer(writer)
        if len(self._connections) >= self.max_connections:
            log.debug("bad HTTP client", peer=peer, problem=f"over {self.max_connections} connections")
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await _close(writer)
            return
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        problem = ""
        try:
            problem = await self._exchanges(conn, reader, writer)
        except TimeoutError:
            partial = bool(conn.trailing_data[0]) or conn.their_state is not h11.IDLE
            problem = f"request not complete within {self.request_deadline_s:g} s" if partial else "idle"
        except h11.RemoteProtocolError as e:
            problem = f"malformed request: {e}"
            await self._refuse(conn, writer, e.error_status_hint, str(e))
        except (ConnectionError, OSError, h11.LocalProtocolError) as e:
            problem = f"connection lost: {type(e).__name__}"
        finally:
            self._connections.discard(task)
            await _close(writer)
        if problem:
            log.debug("bad HTTP client", peer=peer, problem=problem)

    async def _exchanges(self, conn: h11.Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> str:
        """Requests on one connection (keep-alive), each within the deadline; "" when the client closed."""
        while True:
            async with asyncio.timeout(self.request_deadline_s):
                event = await _next_request(conn, reader)
                if event is None:
                    return ""
                await _send(conn, writer, event.method == b"HEAD", self._answer(event))
            if conn.their_state is h11.SEND_BODY and not isinstance(conn.next_event(), h11.EndOfMessage):
                return ""  # a request body: never read, the connection is closed instead
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return ""  # HTTP/1.0 or `Connection: close`
            conn.start_next_cycle()

    def _answer(self, event: h11.Request) -> Response:
        if event.http_version not in (b"1.0", b"1.1"):
            return Response(505, b"HTTP version not supported: use HTTP/1.1\n", headers=(("Connection", "close"),))
        method = event.method.decode("ascii", "replace")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed: GET or HEAD\n", headers=(("Allow", "GET, HEAD"),))
        target = urlsplit(event.target.decode("ascii", "replace"))
        request = Request(method, target.path, parse_qs(target.query),
                          {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers})
        try:
            return self.routes.get(target.path, _not_found)(request)
        except Exception:  # a bug in a route (a health check, a collector): 500, and its traceback logged
            log.exception("HTTP route failed", path=target.path)
            return Response(500, b"internal error: see the program's log\n")

    async def _refuse(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, why: str) -> None:
        """A status line and a one-line reason for a request h11 refused (as long as we may still answer)."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(ConnectionError, OSError, TimeoutError, h11.LocalProtocolError):
            async with asyncio.timeout(1.0):
                await _send(conn, writer, False, Response(status, why.encode("ascii", "replace")[:200] + b"\n"))


def serve(scope: Scope, address: str, metrics: CollectorRegistry | Callable[[], bytes],
          healthy: HealthCheck) -> HttpServer:
    """A program's endpoint, served on a thread of `scope`: /metrics (and /) and /healthz. AddressError
    (one line) when the address cannot be served."""
    server = HttpServer(address)
    server.route("/metrics", metrics_handler(metrics))
    server.route("/", server.routes["/metrics"])
    server.route("/healthz", health_handler(healthy))
    server.start(scope)
    return server


def _bind(address: str) -> socket.socket:
    host, port = parse_address(address)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or "0.0.0.0", port))
    except OSError as e:
        sock.close()
        # strerror or, for a name that does not resolve, the resolver's message: one line either way
        raise AddressError(f"cannot serve metrics on {address!r}: {e.strerror or e}") from e
    return sock


async def _next_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ_BYTES))  # b"": the client closed
        elif isinstance(event, h11.Request):
            return event
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, head: bool, response: Response) -> None:
    headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
               *response.headers]
    data = conn.send(h11.Response(status_code=response.status, headers=headers,
                                  reason=HTTPStatus(response.status).phrase)) or b""
    if response.body and not head:  # HEAD: the same headers, no body (h11 holds us to it)
        data += conn.send(h11.Data(data=response.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    writer.write(data)
    await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


def _quiet(_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """What asyncio would print to stderr with a traceback (a client gone mid-write): one debug line."""
    log.debug("HTTP server event", message=str(context.get("message")),
              error=repr(context.get("exception")) if context.get("exception") else None)
