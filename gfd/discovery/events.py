"""NVML XID events and cheap per-GPU probes, for the device plugin's health checks."""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass
from typing import Any

import pynvml

from gfd.discovery.errors import WatchError
from gfd.discovery.nvml import NVMLError, error_name, translated
from gfd.model import Gpu

XID_CRITICAL = pynvml.nvmlEventTypeXidCriticalError
ALL_INSTANCES = 0xFFFFFFFF


@dataclass(frozen=True)
class XidEvent:
    gpu_uuid: str
    xid: int
    gi_id: int = ALL_INSTANCES
    ci_id: int = ALL_INSTANCES


class EventWatcher:
    """Registers XID critical-error events for the given GPUs and waits for them."""

    def __init__(self, gpus: tuple[Gpu, ...]) -> None:
        self.unsupported: list[str] = []  # too old for events: stays healthy (upstream warns)
        self.failed: dict[str, str] = {}  # registration failed: the device is unhealthy
        try:
            self._set = pynvml.nvmlEventSetCreate()
        except NVMLError as e:
            raise translated(e, "nvmlEventSetCreate", "error creating the NVML event set", WatchError) from e
        self._uuids: dict[int, str] = {}
        for gpu in gpus:
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(gpu.index)
                supported = pynvml.nvmlDeviceGetSupportedEventTypes(handle)
                pynvml.nvmlDeviceRegisterEvents(handle, XID_CRITICAL & supported, self._set)
            except pynvml.NVMLError_NotSupported:
                self.unsupported.append(gpu.uuid)
                continue
            except NVMLError as e:
                self.failed[gpu.uuid] = error_name(e)
                continue
            self._uuids[_address(handle)] = gpu.uuid

    def wait(self, timeout_ms: int) -> XidEvent | None:
        """The next XID event, or None after the timeout (or for a non-XID event)."""
        try:
            data = pynvml.nvmlEventSetWait_v2(self._set, timeout_ms)
        except pynvml.NVMLError_Timeout:
            return None
        except NVMLError as e:
            raise translated(e, "nvmlEventSetWait_v2", "error waiting for NVML events", WatchError) from e
        if data.eventType != XID_CRITICAL:
            return None
        uuid = self._uuids.get(_address(data.device), "")
        return XidEvent(uuid, int(data.eventData), int(data.gpuInstanceId), int(data.computeInstanceId))

    def close(self) -> None:
        with contextlib.suppress(NVMLError):  # the library may already be gone
            pynvml.nvmlEventSetFree(self._set)


def probe(gpu: Gpu) -> str | None:
    """A cheap liveness query of one GPU: None when it answers, else the NVML error name."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(gpu.index)
        if pynvml.nvmlDeviceGetUUID(handle) != gpu.uuid:
            return "ERROR_GPU_NOT_FOUND"
    except NVMLError as e:
        return error_name(e)
    return None


def probe_fully(index: int, host_root: str) -> str | None:
    """Read one GPU with every query discovery makes: None when all answer, else what failed. For a GPU
    that was lost before it could be read, where answering the cheap probe is not enough."""
    from gfd.discovery.errors import DiscoveryError, GpuLost
    from gfd.discovery.nvml import NvmlReader
    from gfd.discovery.sysfs import PciFacts

    try:
        NvmlReader().read_one(index, PciFacts(host_root))
    except GpuLost as e:
        return f"ERROR_GPU_IS_LOST in {e.call}"
    except DiscoveryError as e:
        return str(e)
    return None


def _address(handle: Any) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0
