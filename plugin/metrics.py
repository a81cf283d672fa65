"""Prometheus metrics of the device plugin (served on an opt-in address)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from gfd.metrics import setup_gauge


class PluginMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.device_health = Gauge("nvidia_device_plugin_device_healthy", "1 if the device is advertised healthy",
                                   ["resource", "device"], registry=r)
        self.allocations = Counter("nvidia_device_plugin_allocations", "Devices handed to containers",
                                   ["resource"], registry=r)
        self.allocate_errors = Counter("nvidia_device_plugin_allocate_errors", "Refused Allocate requests",
                                       ["resource"], registry=r)
        self.registrations = Counter("nvidia_device_plugin_registrations",
                                     "Registrations with the kubelet, by reason", ["resource", "reason"],
                                     registry=r)
        self.setup_check = setup_gauge(r, "nvidia_device_plugin")
