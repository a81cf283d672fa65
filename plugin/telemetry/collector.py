"""Samples every GPU and MIG device on its own interval and keeps the last result for scrapes, which
only read it: a scrape never reaches NVML or the kubelet. With the DRA driver's checkpoint directory, each
collection also reads its shares and the processes on the shared devices (plugin/telemetry/shares.py)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client.core import Metric

from gfd.discovery import nvml, telemetry
from gfd.discovery.errors import DiscoveryError, GpuLost, WatchError
from gfd.discovery.events import EventWatcher
from gfd.httpserver import Health
from gfd.model import DeviceModel, Gpu, LostGpu
from plugin.api.podresources_pb2 import ListPodResourcesResponse
from plugin.telemetry.cgroups import CgroupOwner, read_owner
from plugin.telemetry.exposition import render
from plugin.telemetry.podresources import Holder, PodResourcesError, claim_holders, dra_device_uuids, holders, list_pods
from plugin.telemetry.shares import DeviceShares, share_uses
from plugin.telemetry.snapshot import MAX_HOLDERS, Collection, DeviceSample, families

if TYPE_CHECKING:
    from plugin.dra.shares import Share

log = structlog.get_logger("plugin.telemetry")
MAX_EVENTS = 1000  # NVML events taken per collection: a storm of them cannot hold a collection up
# Processes per shared device whose pod is looked up (their /proc/<pid>/cgroup read), the largest users of memory
# first; the rest count as no share's. Far above what a device serves under MPS (48 clients since Volta), and a
# bound on the files one collection reads.
MAX_PROCESSES = 256


class TelemetryCollector:
    def __init__(self, model: Callable[[], DeviceModel | None], interval_s: float, pod_resources_socket: str,
                 hostname: str, xids: bool = False, checkpoint_dir: str = "", proc_root: str = "/proc") -> None:
        """`model`: the device model to sample (read again each time by the standalone exporter).
        `xids`: an XID source feeds `record_xid` (the plugin's health stream); without one the collector takes
        XIDs from NVML events itself at each collection (the standalone exporter). `checkpoint_dir`: the DRA
        driver's directory (its checkpoint names the node's shares; "" reports none); `proc_root`: where the host's
        processes are seen. `run` is a thread of the program's lifecycle."""
        self.model, self.interval_s = model, interval_s
        self.socket, self.hostname = pod_resources_socket, hostname
        self.shares = CheckpointShares(checkpoint_dir, self._once)
        self.proc_root = proc_root
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
        handles: dict[str, Any] = {}  # device UUID -> its NVML handle, for the process queries
        lost = []
        for gpu in model.gpus:
            try:
                handle = handles[gpu.uuid] = nvml.gpu_handle(gpu.index)
                found = [DeviceSample(gpu, None, self.sampler.sample(gpu.uuid, handle))]
                for mig in gpu.mig_devices:
                    handles[mig.uuid] = telemetry.mig_handle(handle, mig.index)
                    found.append(DeviceSample(gpu, mig, self.sampler.sample(mig.uuid, handles[mig.uuid], mig=True)))
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
        pods = self._pod_resources()
        self.snapshot = families(Collection(devices, lost + list(model.lost_gpus), self.hostname, model.driver_version,
                                            self._holders(model, pods), dict(self.xids), self._shares(handles, pods)))
        self.exposition = render(self.snapshot)
        self.collections += 1

    def render(self) -> bytes:
        return self.exposition

    def healthy(self) -> Health:
        return Health(True, "ok") if self.collections else Health(False, "no collection yet")

    def _pod_resources(self) -> ListPodResourcesResponse | None:
        try:
            found = list_pods(self.socket)
        except PodResourcesError as e:
            if str(e) != self._pod_error:
                log.warning("no pod attribution: the kubelet's PodResources API did not answer", error=str(e))
                self._pod_error = str(e)
            return None
        if self._pod_error is not None:
            log.info("pod attribution back", socket=self.socket)
            self._pod_error = None
        return found

    def _holders(self, model: DeviceModel, pods: ListPodResourcesResponse | None) -> dict[str, list[Holder]]:
        if pods is None:
            return {}
        found = holders(pods, dra_devices=dra_device_uuids(model))
        for uuid, held in found.items():
            if len(held) > MAX_HOLDERS:
                self._once(uuid, "holders", "capped", "more containers hold the device than get their own series",
                           holders=str(len(held)), series=str(MAX_HOLDERS))
        return found

    def _shares(self, handles: dict[str, Any], pods: ListPodResourcesResponse | None) -> dict[str, DeviceShares]:
        """The shares of the devices sampled this time, with their processes and the pods those run in."""
        shares = [s for s in self.shares.read() if s.limits.uuid in handles]
        if not shares:
            return {}
        processes: dict[str, list[telemetry.GpuProcess] | None] = {}
        owners: dict[int, CgroupOwner | None] = {}
        for uuid in sorted({s.limits.uuid for s in shares}):
            try:
                listed = processes[uuid] = telemetry.running_processes(handles[uuid])
            except DiscoveryError as e:
                self._once(uuid, "processes", "error", "processes not read; the device's shares show no use",
                           error=e.error or str(e))
                processes[uuid] = None
                continue
            if listed is None:
                self._once(uuid, "processes", "unsupported", "no process query on this device; its shares show no use")
                continue
            largest = sorted(listed, key=lambda p: -(p.used_bytes or 0))[:MAX_PROCESSES]
            if len(listed) > MAX_PROCESSES:
                self._once(uuid, "processes", "capped", "more processes on the device than are attributed to pods",
                           processes=str(len(listed)), attributed=str(MAX_PROCESSES))
            owners.update((p.pid, read_owner(self.proc_root, p.pid)) for p in largest)
        return share_uses(shares, claim_holders(pods) if pods is not None else {}, processes, owners)

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


class CheckpointShares:
    """The shares in the DRA driver's checkpoint (plugin/dra/checkpoint.py, written by another process), read again
    only when the file changed. `report(uuid, what, kind, message, **fields)` is told of an unreadable one once."""

    def __init__(self, directory: str, report: Callable[..., None]) -> None:
        self.directory, self.report = directory, report
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime) of the file read last
        self._shares: list[Share] = []

    def read(self) -> list[Share]:
        if not self.directory:
            return []
        # Imported here: the checkpoint's share records parse quantities with the kubernetes client, ~210 ms of
        # imports (python -X importtime) that only an exporter beside the DRA driver needs.
        from plugin.dra.checkpoint import FILE_NAME, read_prepared
        from plugin.dra.shares import node_shares

        try:
            st = os.stat(os.path.join(self.directory, FILE_NAME))
        except OSError:
            self._seen, self._shares = None, []
            return []
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen != self._seen:
            self._seen = seen
            try:
                self._shares = node_shares(read_prepared(self.directory).values())
            except ValueError as e:
                self.report(self.directory, "checkpoint", str(e), "DRA checkpoint unreadable; no shares reported",
                            error=str(e))
                self._shares = []
        return self._shares


def _lost(gpu: Gpu, call: str) -> LostGpu:
    return LostGpu(gpu.index, gpu.uuid, call, gpu.pci_bus_id, gpu.minor_number)
