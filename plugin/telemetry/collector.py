"""Samples every GPU and MIG device on its own interval and keeps the last result for scrapes, which
only read it: a scrape never reaches NVML or the kubelet."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from gfd.discovery import nvml, telemetry
from gfd.discovery.errors import DiscoveryError, GpuLost
from gfd.httpserver import Health
from gfd.model import DeviceModel, Gpu, LostGpu
from plugin.telemetry.podresources import Holder, PodResourcesError, holders
from plugin.telemetry.snapshot import Collection, DeviceSample, families

log = structlog.get_logger("plugin.telemetry")


class TelemetryCollector:
    def __init__(self, model: Callable[[], DeviceModel | None], interval_s: float, pod_resources_socket: str,
                 hostname: str, xids: bool = False) -> None:
        """`model`: the device model to sample (read again each time by the standalone exporter).
        `xids`: an XID source feeds `record_xid` (the plugin's health stream). `run` is a thread of the
        program's lifecycle."""
        self.model, self.interval_s = model, interval_s
        self.socket, self.hostname = pod_resources_socket, hostname
        self.xids: dict[str, int] | None = {} if xids else None
        self.snapshot: list[Metric] = []
        self.exposition = b""  # the snapshot rendered once per collection: what a scrape sends
        self.collections = 0
        self._reported: set[tuple[str, str, str]] = set()  # (UUID, metric, what) logged once
        self._pod_error: str | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> list[Metric]:
        """The last collection's metric families (rendered into `exposition` once per collection)."""
        return self.snapshot

    def record_xid(self, gpu_uuid: str, xid: int) -> None:
        if self.xids is not None:
            self.xids[gpu_uuid] = xid

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            started = time.monotonic()
            try:
                self.collect_once()
            except Exception:  # a bug must not end telemetry: the last snapshot stays, the next try comes
                log.exception("telemetry collection failed")
            stopping.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def collect_once(self) -> None:
        model = self.model()
        if model is None:
            return
        devices: list[DeviceSample] = []
        lost = []
        for gpu in model.gpus:
            try:
                handle = nvml.gpu_handle(gpu.index)
                found = [DeviceSample(gpu, None, telemetry.sample(handle))]
                for mig in gpu.mig_devices:
                    found.append(DeviceSample(gpu, mig, telemetry.sample(telemetry.mig_handle(handle, mig.index),
                                                                         mig=True)))
            except GpuLost as e:
                lost.append(_lost(gpu, e.call))
                continue
            except DiscoveryError as e:
                self._once(gpu.uuid, "handle", "error", "GPU not sampled", error=e.error)
                lost.append(_lost(gpu, "nvmlDeviceGetHandleByIndex"))
                continue
            devices += found
            for d in found:
                uuid = d.mig.uuid if d.mig else gpu.uuid
                for name in d.sample.unsupported:
                    self._once(uuid, name, "unsupported", "metric not supported by this device; left out")
                for name, error in d.sample.errors.items():
                    self._once(uuid, name, error, "metric query failed; left out", error=error)
        self.snapshot = families(Collection(devices, lost + list(model.lost_gpus), self.hostname,
                                            model.driver_version, self._holders(),
                                            None if self.xids is None else dict(self.xids)))
        self.exposition = generate_latest(self.registry)
        self.collections += 1

    def render(self) -> bytes:
        return self.exposition

    def healthy(self) -> Health:
        return Health(True, "ok") if self.collections else Health(False, "no collection yet")

    def _holders(self) -> dict[str, list[Holder]]:
        try:
            found = holders(self.socket)
        except PodResourcesError as e:
            if str(e) != self._pod_error:
                log.warning("no pod attribution: the kubelet's PodResources API did not answer", error=str(e))
                self._pod_error = str(e)
            return {}
        if self._pod_error is not None:
            log.info("pod attribution back", socket=self.socket)
            self._pod_error = None
        return found

    def _once(self, uuid: str, metric: str, what: str, message: str, **fields: str) -> None:
        if (uuid, metric, what) not in self._reported:
            self._reported.add((uuid, metric, what))
            log.warning(message, device=uuid, metric=metric, **fields)


def _lost(gpu: Gpu, call: str) -> LostGpu:
    return LostGpu(gpu.index, gpu.uuid, call, gpu.pci_bus_id, gpu.minor_number)
