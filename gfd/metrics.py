"""Prometheus metrics and /healthz on one opt-in address (daemon mode only)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app


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
        self.labels = Gauge("gfd_labels", "Labels in the last published set", registry=r)
        self.writes = Counter("gfd_output_writes", "Label sets written, by output", ["output"], registry=r)
        self.write_errors = Counter("gfd_output_errors", "Failed label writes, by output", ["output"], registry=r)
        self.writes_skipped = Counter("gfd_output_writes_skipped", "Cycles whose labels had not changed",
                                      registry=r)
        self.api_requests = Counter("gfd_api_requests", "Kubernetes API requests by verb and status code",
                                    ["verb", "code"], registry=r)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log."""


def serve(registry: CollectorRegistry, address: str, healthy: Callable[[], tuple[bool, str]]) -> WSGIServer:
    """Serve /metrics (and any other path) plus /healthz from a daemon thread; returns the server."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == "/healthz":
            ok, reason = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [reason.encode() + b"\n"]
        return metrics_app(environ, start_response)

    host, _, port = address.rpartition(":")
    server = make_server(host or "0.0.0.0", int(port), app, handler_class=_QuietHandler)
    # A short poll keeps shutdown (SIGTERM) well under a second.
    threading.Thread(target=server.serve_forever, args=(0.05,), name="metrics", daemon=True).start()
    return server
