"""GFD's Prometheus metrics (served with /healthz by gfd.httpserver, daemon mode only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
