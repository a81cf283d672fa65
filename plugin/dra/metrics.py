"""Prometheus metrics of the DRA driver (served on --metrics-address / NVIDIA's --http-endpoint)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "nvidia_dra_plugin"
# A prepare from the claim cache takes about a millisecond; one that must read the claim, tens.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class DraMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.calls = Counter(f"{PREFIX}_requests", "NodePrepareResources / NodeUnprepareResources calls from the "
                             "kubelet", ["method"], registry=r)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds", "Time to answer a kubelet call (every claim "
                                 "of it)", ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.claims = Counter(f"{PREFIX}_claims", "Claims prepared and unprepared, by result (ok or error)",
                              ["operation", "result"], registry=r)
        self.slice_writes = Counter(f"{PREFIX}_resourceslice_writes", "ResourceSlices written, by verb (create, "
                                    "update, delete)", ["verb"], registry=r)
        self.api_requests = Counter(f"{PREFIX}_api_requests", "Kubernetes API requests by verb and status code",
                                    ["verb", "code"], registry=r)
        self.claim_cache_misses = Counter(f"{PREFIX}_claim_reads", "Claims read with a GET because the cache did "
                                          "not have them as the kubelet named them", registry=r)
        self.tainted = Gauge(f"{PREFIX}_tainted_devices", "Devices published with a NoSchedule taint", registry=r)

    def api_request(self, verb: str, code: str) -> None:
        """The Kubernetes client's count callback (gfd.kube.client.Count)."""
        self.api_requests.labels(verb=verb, code=code).inc()
