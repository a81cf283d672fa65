"""Prometheus metrics and /healthz on one opt-in address (daemon mode only)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app


def setup_gauge(registry: CollectorRegistry, prefix: str) -> Gauge:
    """The verdicts of the set-up checks a daemon runs at start (gfd.doctor.startup)."""
    return Gauge(f"{prefix}_setup_check", "1 for the verdict of each set-up check at start (see `doctor`)",
                 ["check", "verdict"], registry=registry)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycles = Counter("gfd_cycles", "Labelling cycles by result", ["result"], registry=r)
        self.cycle_duration = Histogram("gfd_cycle_duration_seconds", "Duration of a labelling cycle",
                                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
                                        registry=r)
        self.last_success = Gauge("gfd_last_success_timestamp_seconds",
                                  "Unix time of the last cycle that produced and published labels", registry=r)
        self.nvml_up = Gauge("gfd_nvml_up", "1 while NVML is initialised", registry=r)
        self.gpus_lost = Gauge("gfd_gpus_lost", "GPUs that answered NVML_ERROR_GPU_IS_LOST in the last read",
                               registry=r)
        self.nvml_errors = Counter("gfd_nvml_errors", "Failed NVML queries by function and error",
                                   ["call", "error"], registry=r)
        self.cycle_exceptions = Counter("gfd_cycle_exceptions", "Passes ended by an unexpected exception, by type",
                                        ["type"], registry=r)
        self.reload_failures = Counter("gfd_reload_failures", "Reloads (SIGHUP) that kept the old config",
                                       registry=r)
        self.labels = Gauge("gfd_labels", "Labels in the last published set", registry=r)
        self.writes = Counter("gfd_output_writes", "Label sets written, by output", ["output"], registry=r)
        self.write_errors = Counter("gfd_output_errors", "Failed label writes, by output", ["output"], registry=r)
        self.writes_skipped = Counter("gfd_output_writes_skipped", "Cycles whose labels had not changed",
                                      registry=r)
        self.api_requests = Counter("gfd_api_requests", "Kubernetes API requests by verb and status code",
                                    ["verb", "code"], registry=r)
        self.setup_check = setup_gauge(r, "gfd")


class _QuietHandler(WSGIRequestHandler):
    timeout = 5.0  # a client that sends nothing is dropped instead of holding a thread

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log."""


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per connection, so a slow or idle client never blocks /healthz or /metrics."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _prepared(render: Callable[[], bytes]) -> Callable[..., Any]:
    def app(_environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    return app


class AddressError(ValueError):
    """A --metrics-address that cannot be served; the message is one line with the accepted forms."""


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


def serve(metrics: CollectorRegistry | Callable[[], bytes], address: str,
          healthy: Callable[[], tuple[bool, str]]) -> WSGIServer:
    """Serve /metrics plus /healthz from daemon threads; AddressError when the address cannot be served.
    `metrics`: a registry, rendered per scrape, or what returns an exposition already rendered (GPU
    telemetry renders once per collection, so a scrape only copies bytes)."""
    metrics_app = make_wsgi_app(metrics) if isinstance(metrics, CollectorRegistry) else _prepared(metrics)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO")
        if path == "/healthz":
            ok, reason = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [reason.encode() + b"\n"]
        if path in ("/metrics", "/"):
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    host, port = parse_address(address)
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(host or "0.0.0.0", port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as e:
        raise AddressError(f"cannot serve metrics on {address!r}: {e.strerror or e}") from None
    # A short poll keeps shutdown (SIGTERM) well under a second.
    threading.Thread(target=server.serve_forever, args=(0.05,), name="metrics", daemon=True).start()
    return server
