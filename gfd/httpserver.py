"""The one HTTP server behind every endpoint our programs serve (GFD's and the plugin's /metrics and
/healthz, GPU telemetry, the standalone exporter), with bounds a hostile or broken client cannot get around:

- a request's head is at most `max_header_bytes` (431 beyond, however it arrives);
- deadlines, not per-read timeouts that one byte a second resets: a request's head must arrive within
  `header_deadline_s` of the connection being ready for it (Go's ReadHeaderTimeout), and the request be
  read and answered within `request_deadline_s`;
- at most `max_connections` at once, all on one event-loop thread: no thread per client. At the cap the
  connection that has waited longest for its request head is closed to make room, so clients that hold
  connections without sending a request cannot keep a scrape or a probe out; when every connection is
  being answered, new ones wait in a listen backlog of `BACKLOG`;
- route handlers on a pool of `ROUTE_WORKERS` threads of the scope, so a slow one stalls no other
  connection; one that misses the deadline gets its client a 503;
- HEAD answered without a body, GET and HEAD only (405), HTTP/1.0 and 1.1 only: a request line without a
  version (HTTP/0.9) gets 400 as soon as it ends and any other version 505, each with a status line;
- one debug log line per bad client, never a traceback.

Why h11 with asyncio rather than waitress (both evaluated, waitress 3.0.2): waitress bounds headers,
connections and threads, but its channel_timeout is an idle timeout (a client sending one header byte a
second was still connected after 12 s with channel_timeout=3), it answered HTTP/0.9 and HTTP/9.9 requests
200, and it sent a body for HEAD; each would have been more code around it. h11 (python-hyper's HTTP/1.1
state machine) parses and enforces the protocol (framing, HEAD, keep-alive, the header cap with 431,
malformed request lines with 400); what is ours is the I/O loop below: the deadlines (asyncio.timeout),
the exact header cap, the connection cap and the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
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
# Go's ReadHeaderTimeout: a scraper's or a probe's head (a few hundred bytes) comes in one packet.
HEADER_DEADLINE_S = 5.0
REQUEST_DEADLINE_S = 10.0  # Prometheus' default scrape timeout; a kubelet probe's default is 1 s
MAX_CONNECTIONS = 128
BACKLOG = 128
# Route handlers run here, off the event loop: a slow one (a health check waiting on a lock) holds one
# worker, not every connection. Each answer is rendered in milliseconds; a few workers serve many scrapers.
ROUTE_WORKERS = 4
_READ_BYTES = 16 << 10
_EVICTED = "evicted"


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
    from `start(scope)` on one thread of that scope running an asyncio loop, until the scope stops; route
    handlers run on a small pool of that scope."""

    def __init__(self, address: str, *, max_connections: int = MAX_CONNECTIONS,
                 max_header_bytes: int = MAX_HEADER_BYTES, header_deadline_s: float = HEADER_DEADLINE_S,
                 request_deadline_s: float = REQUEST_DEADLINE_S, backlog: int = BACKLOG) -> None:
        self.address = address
        self.max_connections, self.max_header_bytes = max_connections, max_header_bytes
        self.header_deadline_s, self.request_deadline_s, self.backlog = header_deadline_s, request_deadline_s, backlog
        self.routes: dict[str, Handler] = {}
        self._sock = _bind(address)
        self._wake_loop: Callable[[], None] | None = None
        self._ready = threading.Event()
        self._pool: Executor | None = None
        # Each open connection, and since when it has been waiting for a request head (None: answering one).
        self._connections: dict[asyncio.Task[None], float | None] = {}
        self._changed: asyncio.Event | None = None  # a connection ended or began waiting for a head

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
        self._pool = scope.executor(f"http {self.address} routes", ROUTE_WORKERS)
        scope.start_thread(f"http {self.address}", functools.partial(self._run, scope.stopping), wake=self._wake)
        self._ready.wait(5)

    def _wake(self) -> None:
        wake = self._wake_loop
        if wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                wake()

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self, stopping: threading.Event) -> None:
        try:
            asyncio.run(self._serve(stopping))
        finally:
            self._ready.set()

    async def _serve(self, stopping: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet)
        woken = asyncio.Event()
        self._changed = asyncio.Event()

        def wake() -> None:  # from the stopping thread
            loop.call_soon_threadsafe(woken.set)

        self._wake_loop = wake
        self._sock.listen(self.backlog)
        self._sock.setblocking(False)
        accepting = asyncio.create_task(self._accept())
        self._ready.set()
        if not stopping.is_set():  # (a stop before `_wake_loop` was set found no loop to wake)
            await woken.wait()
        accepting.cancel()
        for task in [accepting, *self._connections]:
            task.cancel()
        await asyncio.gather(accepting, *self._connections, return_exceptions=True)

    async def _accept(self) -> None:
        """Accept while there is room: a free place, or a connection still waiting for its request head,
        which gives its place to the new one (the oldest such). With neither (every connection is being
        answered) new ones wait in the listen backlog: clients that open connections and send nothing, or
        a head byte by byte, can never keep a scrape or a probe out."""
        loop = asyncio.get_running_loop()
        while True:
            await self._room()
            sock, _ = await loop.sock_accept(self._sock)
            await self._room()
            if len(self._connections) >= self.max_connections:
                self._evict()
            reader, writer = await asyncio.open_connection(sock=sock, limit=_READ_BYTES)
            task = asyncio.create_task(self._connection(reader, writer))
            self._connections[task] = time.monotonic()

    async def _room(self) -> None:
        assert self._changed is not None
        while len(self._connections) >= self.max_connections and not self._waiting():
            self._changed.clear()
            await self._changed.wait()

    def _waiting(self) -> list[asyncio.Task[None]]:
        return [task for task, since in self._connections.items() if since is not None]

    def _evict(self) -> None:
        oldest = min(self._waiting(), key=lambda task: self._connections[task] or 0.0)
        del self._connections[oldest]
        oldest.cancel(_EVICTED)

    def _mark(self, task: asyncio.Task[None], waiting: bool) -> None:
        if task in self._connections:
            self._connections[task] = time.monotonic() if waiting else None
            if waiting and self._changed is not None:
                self._changed.set()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peer(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        problem = ""
        try:
            problem = await self._exchanges(task, peer, conn, reader, writer)
        except h11.RemoteProtocolError as e:
            problem = f"malformed request: {e}"
            await _refuse(conn, writer, e.error_status_hint, str(e))
        except (ConnectionError, OSError, h11.LocalProtocolError) as e:
            problem = f"connection lost: {type(e).__name__}"
        except asyncio.CancelledError as e:
            if e.args != (_EVICTED,):
                raise  # the server is stopping
            problem = f"closed to make room for a new connection (at the {self.max_connections}-connection cap, " \
                      "the one waiting longest for its request head gives way)"
        finally:
            self._connections.pop(task, None)
            if self._changed is not None:
                self._changed.set()
            await _close(writer)
        if problem:
            log.debug("bad HTTP client", peer=peer, problem=problem)

    async def _exchanges(self, task: asyncio.Task[None], peer: str, conn: h11.Connection,
                         reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Requests on one connection (keep-alive): each head within the header deadline, each request
        read and answered within the whole-request deadline. "" when the connection ended normally, else
        what the client did wrong."""
        while True:
            self._mark(task, waiting=True)
            phase = "head"
            try:
                async with asyncio.timeout(self.request_deadline_s):
                    async with asyncio.timeout(self.header_deadline_s):
                        event = await _next_request(conn, reader, self.max_header_bytes)
                    if event is None:
                        return ""
                    self._mark(task, waiting=False)
                    phase = "route"
                    response, problem = await self._answer(event)
                    if problem:
                        log.debug("bad HTTP client", peer=peer, problem=problem)
                    phase = "answer"
                    await _send(conn, writer, event.method == b"HEAD", response)
            except TimeoutError:
                return self._late(conn, phase) if phase != "route" else await self._route_late(conn, writer)
            if conn.their_state is h11.SEND_BODY and not isinstance(conn.next_event(), h11.EndOfMessage):
                return ""  # a request body: never read, the connection is closed instead
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return ""  # HTTP/1.0 or `Connection: close`
            conn.start_next_cycle()

    def _late(self, conn: h11.Connection, phase: str) -> str:
        if phase == "answer":
            return f"answer not read within {self.request_deadline_s:g} s"
        if conn.trailing_data[0] or conn.their_state is not h11.IDLE:
            return f"request head not complete within {min(self.header_deadline_s, self.request_deadline_s):g} s"
        return "idle"

    async def _route_late(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> str:
        """A route that has not answered within the deadline (a health check stuck on a lock): its client
        gets 503 now; the handler's thread finishes on its own (or is named as hung at the stop)."""
        log.warning("HTTP route did not answer within the deadline", address=self.address,
                    deadline_s=self.request_deadline_s)
        await _refuse(conn, writer, 503, f"no answer within {self.request_deadline_s:g} s")
        return ""

    async def _answer(self, event: h11.Request) -> tuple[Response, str]:
        """The response, and what the client did wrong ("" when nothing)."""
        if event.http_version not in (b"1.0", b"1.1"):
            version = event.http_version.decode("ascii", "replace")
            return Response(505, b"HTTP version not supported: use HTTP/1.1\n", headers=(("Connection", "close"),)), \
                f"HTTP version {version} not supported"
        method = event.method.decode("ascii", "replace")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed: GET or HEAD\n", headers=(("Allow", "GET, HEAD"),)), \
                f"method {method[:20]} not allowed"
        target = urlsplit(event.target.decode("ascii", "replace"))
        request = Request(method, target.path, parse_qs(target.query),
                          {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers})
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _route, self.routes.get(target.path, _not_found), request), ""


def _route(handler: Handler, request: Request) -> Response:
    """One route's answer, on the pool: a bug in a route (a health check, a collector) is a 500 and its
    traceback logged."""
    try:
        return handler(request)
    except Exception:
        log.exception("HTTP route failed", path=request.path)
        return Response(500, b"internal error: see the program's log\n")


async def _refuse(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, why: str) -> None:
    """A status line and a one-line reason for a request we refuse (as long as we may still answer)."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    with contextlib.suppress(ConnectionError, OSError, TimeoutError, h11.LocalProtocolError):
        async with asyncio.timeout(1.0):
            await _send(conn, writer, False, Response(status, why.encode("ascii", "replace")[:200] + b"\n",
                                                      headers=(("Connection", "close"),)))


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


async def _next_request(conn: h11.Connection, reader: asyncio.StreamReader, cap: int) -> h11.Request | None:
    """The next request's head (None when the client closed). Reads never take the buffered head past
    `cap` (h11 checks its cap only while a head is incomplete: a whole head arriving in one read would
    pass it); a first line that is not `METHOD TARGET HTTP/x.y` is refused as soon as it ends (HTTP/0.9
    sends no headers and waits)."""
    start = conn.trailing_data[0]  # what the client pipelined after the previous request
    buffered = len(start)
    line: bytearray | None = bytearray(start)  # the head so far, until its first line has been checked
    ended = b"\n" in start
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if line is not None and ended:
                _check_request_line(bytes(line.split(b"\n", 1)[0]))
                line = None
            if buffered >= cap:
                raise h11.RemoteProtocolError(f"request head larger than {cap} bytes", error_status_hint=431)
            data = await reader.read(min(_READ_BYTES, cap - buffered))  # b"": the client closed
            buffered += len(data)
            if line is not None:
                line += data
                ended = b"\n" in data
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            return event
        elif isinstance(event, h11.ConnectionClosed):
            return None


_REQUEST_LINE = re.compile(rb"\S+ \S+ HTTP/[0-9]\.[0-9]")


def _check_request_line(line: bytes) -> None:
    if not _REQUEST_LINE.fullmatch(line.removesuffix(b"\r")):
        raise h11.RemoteProtocolError("request line is not 'METHOD TARGET HTTP/1.1' (an HTTP/0.9 request?)",
                                      error_status_hint=400)


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
