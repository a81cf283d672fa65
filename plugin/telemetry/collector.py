"""Samples every GPU and MIG device on its own interval and keeps the last result for scrapes, which
only read it: a scrape never reaches NVML or the kubelet."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import structlog
from prometheus_client.core import Metric

from gfd.discovery import nvml, telemetry
from gfd.discovery.errors import DiscoveryError, GpuLost, WatchError
from gfd.discovery.events import EventWatcher
from gfd.httpserver import Health
from gfd.model import DeviceModel, Gpu, LostGpu
from plugin.telemetry.exposition import render
from plugin.telemetry.podresources import Holder, PodResourcesError, dra_device_uuids, holders
from plugin.telemetry.snapshot import MAX_HOLDERS, Collection, DeviceSample, families

log = structlog.get_logger("plugin.telemetry")
MAX_EVENTS = 1000  # NVML events taken per collection: a storm of them cannot hold a collection up


class TelemetryCollector:
    def __init__(self, model: Callable[[], DeviceModel | None], interval_s: float, pod_resources_socket: str,
                 hostname: str, xids: bool = False) -> None:
        """`model`: the device model to sample (read again each time by the standalone exporter).
        `xids`: an XID source feeds `record_xid` (the plugin's health stream); without one the collector takes
        XIDs from NVML events itself at each collection (the standalone exporter). `run` is a thread of the
        program's lifecycle."""
        self.model, self.interval_s = model, interval_s
        self.socket, self.hostname = pod_resources_socket, hostname
        self.xids: dict[str, int] = {}
        self.watch_xids = not xids
        self._events: tuple[frozenset[str], EventWatcher] | None = None  # (GPU UUIDs, their watcher)
        self.sampler = telemetry.Sampler()
        self.snapshot: list[Metric] = []
        self.exposition = b""  # the snapshot rendered once per collection: what a scrape sends
        self.collections = 0
        self._reported: set[tuple[str, str, str]] = set()  # (UUID, metric, what) logged once
        self._pod_error: str | None = None

    def record_xid(self, gpu_uuid: str, xid: int) -> None:
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
        if self.watch_xids:
            self._take_xids(model.gpus)
        devices: list[DeviceSample] = []
        lost = []
        for gpu in model.gpus:
            try:
                handle = nvml.gpu_handle(gpu.index)
                found = [DeviceSample(gpu, None, self.sampler.sample(gpu.uuid, handle))]
                for mig in gpu.mig_devices:
                    found.append(DeviceSample(gpu, mig, self.sampler.sample(
                        mig.uuid, telemetry.mig_handle(handle, mig.index), mig=True)))
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
                self._once_each(uuid, d.sample.unsupported, "unsupported",
                                "metrics not supported by this device; left out")
                for error in sorted(set(d.sample.errors.values())):
                    self._once_each(uuid, [n for n, e in d.sample.errors.items() if e == error], error,
                                    "metric query failed; left out", error=error)
        self.sampler.keep({d.mig.uuid if d.mig else d.gpu.uuid for d in devices})
        self.snapshot = families(Collection(devices, lost + list(model.lost_gpus), self.hostname,
                                            model.driver_version, self._holders(model), dict(self.xids)))
        self.exposition = render(self.snapshot)
        self.collections += 1

    def render(self) -> bytes:
        return self.exposition

    def healthy(self) -> Health:
        return Health(True, "ok") if self.collections else Health(False, "no collection yet")

    def _holders(self, model: DeviceModel) -> dict[str, list[Holder]]:
        try:
            found = holders(self.socket, dra_devices=dra_device_uuids(model))
        except PodResourcesError as e:
            if str(e) != self._pod_error:
                log.warning("no pod attribution: the kubelet's PodResources API did not answer", error=str(e))
                self._pod_error = str(e)
            return {}
        if self._pod_error is not None:
            log.info("pod attribution back", socket=self.socket)
            self._pod_error = None
        for uuid, held in found.items():
            if len(held) > MAX_HOLDERS:
                self._once(uuid, "holders", "capped", "more containers hold the device than get their own series",
                           holders=str(len(held)), series=str(MAX_HOLDERS))
        return found

    def _take_xids(self, gpus: tuple[Gpu, ...]) -> None:
        """The XIDs NVML reported since the last collection (without waiting), on a watcher for these GPUs."""
        uuids = frozenset(g.uuid for g in gpus)
        if self._events is not None and self._events[0] != uuids:
            self._events[1].close()
            self._events = None
        try:
            if self._events is None:
                self._events = (uuids, EventWatcher(gpus))
            for _ in range(MAX_EVENTS):
                event = self._events[1].wait(0)
                if event is None:
                    break
                self.record_xid(event.gpu_uuid, event.xid)
        except WatchError as e:
            self._once("", "XID", "watch", "no XID events; DCGM_FI_DEV_XID_ERRORS stays at the last one seen",
                       error=str(e))
            if self._events is not None:
                self._events[1].close()
            self._events = None

    def _once_each(self, uuid: str, metrics: Iterable[str], what: str, message: str, **fields: str) -> None:
        """One line for the metrics of a device not reported yet for `what`, whatever their number."""
        new = sorted(m for m in metrics if (uuid, m, what) not in self._reported)
        if new:
            self._reported.update((uuid, m, what) for m in new)
            log.warning(message, device=uuid, metrics=",".join(new), **fields)

    def _once(self, uuid: str, metric: str, what: str, message: str, **fields: str) -> None:
        if (uuid, metric, what) not in self._reported:
            self._reported.add((uuid, metric, what))
            log.warning(message, device=uuid, metric=metric, **fields)


def _lost(gpu: Gpu, call: str) -> LostGpu:
    return LostGpu(gpu.index, gpu.uuid, call, gpu.pci_bus_id, gpu.minor_number)
