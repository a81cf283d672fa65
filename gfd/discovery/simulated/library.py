"""A stand-in for pynvml's loaded `libnvidia-ml.so.1`: NVML's C entry points as ctypes callbacks.

pynvml looks every function up with getattr() on its library object and calls it with ctypes
arguments (buffers, byref() pointers, opaque handles). Each attribute here is a CFUNCTYPE with the
C signature, so pynvml's own marshalling, struct layouts and error mapping all run for real; a
missing attribute is NVML_ERROR_FUNCTION_NOT_FOUND, exactly like an old driver's missing symbol.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from ctypes import CFUNCTYPE, c_int, c_uint, c_uint64, c_void_p
from typing import Any

import pynvml
import structlog

from gfd.discovery.simulated.profiles import SimGpu, SimMig, SimNode, SimProcess

log = structlog.get_logger("gfd.simulated")

SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NOT_FOUND = 6
INSUFFICIENT_SIZE = 7
TIMEOUT = 10
GPU_IS_LOST = 15
UNKNOWN = 999
XID_CRITICAL = 0x8
ARGUMENT_VERSION_MISMATCH = 25
FI_DEV_MEMORY_TEMP = 82  # nvml.h NVML_FI_DEV_MEMORY_TEMP
VALUE_TYPE_UNSIGNED_INT = 1  # nvml.h NVML_VALUE_TYPE_UNSIGNED_INT
VALUE_TYPE_UNSIGNED_LONG_LONG = 3  # nvml.h NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
# nvml.h: NVLink data KiB sent / received since boot; scopeId is a link, or UINT_MAX for all links summed.
FI_DEV_NVLINK_THROUGHPUT_DATA = {138: "tx", 139: "rx"}
NVLINK_DEVICE_TYPE_GPU, NVLINK_DEVICE_TYPE_SWITCH = 0, 2  # nvml.h nvmlIntNvLinkDeviceType_t
VIRTUALIZATION_MODE_VGPU = 2  # nvml.h NVML_GPU_VIRTUALIZATION_MODE_VGPU: a vGPU inside a virtual machine
GRID_LICENSE_FEATURE_CODE_VGPU = 1  # nvml.h NVML_GRID_LICENSE_FEATURE_CODE_VGPU
HOPPER = 9  # nvml.h NVML_DEVICE_ARCH_HOPPER: GPM needs Hopper or newer (nvmlGpmQueryDeviceSupport)
# nvml.h nvmlGpmMetricId_t -> the simulated reading (a % over the window, or KiB/s turned into MiB/s).
GPM_METRICS = {1: ("gr_engine_active", 1), 5: ("tensor_active", 1), 10: ("dram_active", 1),
               20: ("pcie_tx_kib_per_s", 1 / 1024), 21: ("pcie_rx_kib_per_s", 1 / 1024)}
ALL_INSTANCES = 0xFFFFFFFF  # also a process's gpuInstanceId/computeInstanceId when MIG is off (nvml.h)
VOLTA = 5  # nvml.h NVML_DEVICE_ARCH_VOLTA: the MPS process query is "for Volta or newer fully supported devices"
GPU_INSTANCE_PROFILE_COUNT = 0x12  # nvml.h NVML_GPU_INSTANCE_PROFILE_COUNT
COMPUTE_INSTANCE_PROFILE_COUNT = 0x9

_P = c_void_p  # every pointer or handle argument


class _Value(ctypes.Union):  # nvmlValue_t
    _fields_ = [("dVal", ctypes.c_double), ("uiVal", c_uint), ("ulVal", ctypes.c_ulong),
                ("ullVal", ctypes.c_ulonglong), ("sllVal", ctypes.c_longlong)]


class _Struct:
    """C layouts of the structs we fill (nvml.h), independent of pynvml's own definitions. The versioned
    structs added later (memory v2, GPM, licensable features) use pynvml's, which carry the version field."""

    class Memory(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    class Utilization(ctypes.Structure):  # nvmlUtilization_t
        _fields_ = [("gpu", c_uint), ("memory", c_uint)]

    class FieldValue(ctypes.Structure):  # nvmlFieldValue_t
        _fields_ = [("fieldId", c_uint), ("scopeId", c_uint), ("timestamp", ctypes.c_longlong),
                    ("latencyUsec", ctypes.c_longlong), ("valueType", c_uint), ("nvmlReturn", c_uint),
                    ("value", _Value)]

    class PciInfo(ctypes.Structure):
        _fields_ = [("busIdLegacy", ctypes.c_char * 16), ("domain", c_uint), ("bus", c_uint), ("device", c_uint),
                    ("pciDeviceId", c_uint), ("pciSubSystemId", c_uint), ("busId", ctypes.c_char * 32)]

    class Attributes(ctypes.Structure):
        _fields_ = [("multiprocessorCount", c_uint), ("sharedCopyEngineCount", c_uint),
                    ("sharedDecoderCount", c_uint), ("sharedEncoderCount", c_uint), ("sharedJpegCount", c_uint),
                    ("sharedOfaCount", c_uint), ("gpuInstanceSliceCount", c_uint),
                    ("computeInstanceSliceCount", c_uint), ("memorySizeMB", ctypes.c_ulonglong)]

    class GpuInstanceInfo(ctypes.Structure):  # nvmlGpuInstanceInfo_t
        _fields_ = [("device", c_void_p), ("id", c_uint), ("profileId", c_uint),
                    ("placementStart", c_uint), ("placementSize", c_uint)]  # nvmlGpuInstancePlacement_t, inline

    class GpuInstanceProfileInfo(ctypes.Structure):  # nvmlGpuInstanceProfileInfo_t (v1)
        _fields_ = [("id", c_uint), ("isP2pSupported", c_uint), ("sliceCount", c_uint), ("instanceCount", c_uint),
                    ("multiprocessorCount", c_uint), ("copyEngineCount", c_uint), ("decoderCount", c_uint),
                    ("encoderCount", c_uint), ("jpegCount", c_uint), ("ofaCount", c_uint),
                    ("memorySizeMB", ctypes.c_ulonglong)]

    class ComputeInstanceProfileInfo(ctypes.Structure):  # nvmlComputeInstanceProfileInfo_t (v1)
        _fields_ = [("id", c_uint), ("sliceCount", c_uint), ("instanceCount", c_uint),
                    ("multiprocessorCount", c_uint), ("sharedCopyEngineCount", c_uint),
                    ("sharedDecoderCount", c_uint), ("sharedEncoderCount", c_uint), ("sharedJpegCount", c_uint),
                    ("sharedOfaCount", c_uint)]

    class ComputeInstanceInfo(ctypes.Structure):
        _fields_ = [("device", c_void_p), ("gpuInstance", c_void_p), ("id", c_uint), ("profileId", c_uint)]

    class EventData(ctypes.Structure):
        _fields_ = [("device", c_void_p), ("eventType", ctypes.c_ulonglong), ("eventData", ctypes.c_ulonglong),
                    ("gpuInstanceId", c_uint), ("computeInstanceId", c_uint)]

    class ProcessInfo(ctypes.Structure):  # nvmlProcessInfo_v2_t; _v3 of the process queries returns the same
        _fields_ = [("pid", c_uint), ("usedGpuMemory", ctypes.c_ulonglong), ("gpuInstanceId", c_uint),
                    ("computeInstanceId", c_uint)]

    class FabricInfoV2(ctypes.Structure):
        _fields_ = [("version", c_uint), ("clusterUuid", ctypes.c_uint8 * 16), ("status", c_int),
                    ("cliqueId", ctypes.c_uint32), ("state", ctypes.c_uint8), ("healthMask", ctypes.c_uint32)]


def _write_str(buf: int, size: int, text: str) -> int:
    data = text.encode("utf-8")
    if len(data) + 1 > size:
        return INSUFFICIENT_SIZE
    ctypes.memmove(buf, data + b"\0", len(data) + 1)
    return SUCCESS


def _write_uint(ptr: int, value: int) -> int:
    c_uint.from_address(ptr).value = value
    return SUCCESS


def _write_int(ptr: int, value: int) -> int:
    c_int.from_address(ptr).value = value
    return SUCCESS


def _write_ptr(ptr: int, value: int) -> int:
    c_void_p.from_address(ptr).value = value
    return SUCCESS


class SimulatedLibrary:
    """Serves a SimNode through NVML's C ABI. Counts calls per function (for benchmarks)."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._initialised = 0
        self._handles: dict[int, Any] = {}
        self._ids: dict[tuple[Any, ...], int] = {}
        self._functions: dict[str, Any] = {}
        self._events: deque[tuple[SimGpu, int, int, int]] = deque()
        self._event_ready = threading.Condition()
        self._registered: set[int] = set()  # id() of GPUs whose XID events are registered
        self._events_read = 0  # how far the node's events file has been read
        # Counters that add up a rate: (id() of a GPU, reading) -> (last query, total so far)
        self._totals: dict[tuple[int, str], tuple[float, float]] = {}
        for name, argtypes, impl in self._entry_points():
            self._functions[name] = CFUNCTYPE(c_int, *argtypes)(self._wrap(name, impl))

    def inject_xid(self, gpu_index: int, xid: int, gi_id: int = ALL_INSTANCES, ci_id: int = ALL_INSTANCES) -> None:
        """An XID critical error on a GPU, delivered to event sets that registered it."""
        with self._event_ready:
            self._events.append((self.node.gpus[gpu_index], xid, gi_id, ci_id))
            self._event_ready.notify_all()

    def _read_events_file(self) -> None:
        """Lines appended to the node's events file since the last wait, as XIDs; a malformed line is skipped."""
        try:
            with open(self.node.events_file, "rb") as f:
                f.seek(self._events_read)
                data = f.read(1 << 16)
        except OSError:
            return
        complete = data[:data.rfind(b"\n") + 1]
        self._events_read += len(complete)
        for line in complete.decode("ascii", "replace").splitlines():
            numbers = [int(w) for w in line.split() if w.isdigit()]
            if len(numbers) in (2, 4) and numbers[0] < len(self.node.gpus):
                self.inject_xid(*numbers)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_functions"][name]
        except KeyError:
            # from None: attribute lookup's own answer; the dict's KeyError would read as a bug here
            raise AttributeError(name) from None

    # -- handles: opaque non-zero integers that map back to simulation objects ---------------------
    def _handle(self, obj: Any) -> int:
        key = obj.key if isinstance(obj, _Ref) else (id(obj),)
        if key not in self._ids:
            value = 0x1000 * (len(self._ids) + 1)
            self._ids[key] = value
            self._handles[value] = obj
        return self._ids[key]

    def _wrap(self, name: str, impl: Callable[..., int]) -> Callable[..., int]:
        if name == "nvmlEventSetWait_v2":
            # Blocks for up to its timeout: it must not hold the lock every other call needs.
            def wait(*args: Any) -> int:
                with self._lock:
                    self.calls[name] += 1
                    if not self._initialised:
                        return UNINITIALIZED
                return impl(*args)

            return wait

        def call(*args: Any) -> int:
            with self._lock:
                self.calls[name] += 1
                if name not in ("nvmlInitWithFlags", "nvmlInit_v2") and not self._initialised:
                    return UNINITIALIZED
                target = self._handles.get(args[0]) if args and isinstance(args[0], int) else None
                if name == "nvmlDeviceGetHandleByIndex_v2" and args[0] < len(self.node.gpus):
                    target = self.node.gpus[args[0]]  # takes an index, not a handle
                gpu = target if isinstance(target, SimGpu) else getattr(target, "gpu", None)
                for fault in self.node.faults if self.node.faults else ():
                    if fault.call == name and (fault.gpu is None or (gpu is not None and gpu.minor == fault.gpu)):
                        return fault.error
                if gpu is not None and gpu.lost:
                    return GPU_IS_LOST
                try:
                    return impl(*args)
                except Exception:  # a simulator bug: fail this call loudly instead of returning garbage
                    log.exception("simulated NVML call failed", call=name)
                    return UNKNOWN

        return call

    def _gpu(self, handle: int) -> SimGpu | None:
        obj = self._handles.get(handle)
        return obj if isinstance(obj, SimGpu) else None

    def _entry_points(self) -> list[tuple[str, tuple[Any, ...], Callable[..., int]]]:
        return [
            ("nvmlInitWithFlags", (c_uint,), self._init),
            ("nvmlInit_v2", (), self._init),
            ("nvmlShutdown", (), self._shutdown),
            ("nvmlSystemGetDriverVersion", (_P, c_uint),
             lambda buf, size: _write_str(buf, size, self.node.driver_version)),
            ("nvmlSystemGetCudaDriverVersion", (_P,), lambda p: _write_int(p, self.node.cuda_driver_version)),
            ("nvmlSystemGetCudaDriverVersion_v2", (_P,), lambda p: _write_int(p, self.node.cuda_driver_version)),
            ("nvmlDeviceGetCount_v2", (_P,), lambda p: _write_uint(p, len(self.node.gpus))),
            ("nvmlDeviceGetHandleByIndex_v2", (c_uint, _P), self._handle_by_index),
            ("nvmlDeviceGetName", (_P, _P, c_uint), self._device(lambda g, buf, size: _write_str(buf, size, g.name))),
            ("nvmlDeviceGetUUID", (_P, _P, c_uint), self._any_device(
                lambda d, buf, size: _write_str(buf, size, d.uuid))),
            ("nvmlDeviceGetMemoryInfo", (_P, _P), self._any_device(self._memory)),
            ("nvmlDeviceGetMemoryInfo_v2", (_P, _P), self._any_device(self._memory_v2)),
            ("nvmlDeviceGetCudaComputeCapability", (_P, _P, _P), self._device(self._compute)),
            ("nvmlDeviceGetMigMode", (_P, _P, _P), self._device(self._mig_mode)),
            ("nvmlDeviceGetPciInfo_v3", (_P, _P), self._device(self._pci)),
            ("nvmlDeviceGetArchitecture", (_P, _P), self._device(lambda g, p: _write_uint(p, g.architecture))),
            ("nvmlDeviceGetBrand", (_P, _P), self._device(lambda g, p: _write_uint(p, g.brand))),
            ("nvmlDeviceGetMinorNumber", (_P, _P), self._device(lambda g, p: _write_uint(p, g.minor))),
            ("nvmlDeviceGetVirtualizationMode", (_P, _P),
             self._device(lambda g, p: _write_uint(p, g.virtualization_mode))),
            ("nvmlDeviceGetMaxMigDeviceCount", (_P, _P), self._device(self._max_mig)),
            ("nvmlDeviceGetMigDeviceHandleByIndex", (_P, c_uint, _P), self._device(self._mig_handle)),
            ("nvmlDeviceGetAttributes_v2", (_P, _P), self._mig_device(self._attributes)),
            ("nvmlDeviceGetGpuInstanceId", (_P, _P), self._mig_device(lambda m, p: _write_uint(p, m.mig.gi_id))),
            ("nvmlDeviceGetComputeInstanceId", (_P, _P), self._mig_device(lambda m, p: _write_uint(p, m.mig.ci_id))),
            ("nvmlDeviceGetGpuInstanceById", (_P, c_uint, _P), self._device(self._gpu_instance)),
            ("nvmlGpuInstanceGetInfo", (_P, _P), self._instance(self._gi_info)),
            ("nvmlDeviceGetGpuInstanceProfileInfo", (_P, c_uint, _P), self._device(self._gi_profile_info)),
            ("nvmlGpuInstanceGetComputeInstanceProfileInfo", (_P, c_uint, c_uint, _P),
             self._instance(self._ci_profile_info)),
            ("nvmlGpuInstanceGetComputeInstanceById", (_P, c_uint, _P), self._instance(self._compute_instance)),
            ("nvmlComputeInstanceGetInfo_v2", (_P, _P), self._instance(self._ci_info)),
            ("nvmlDeviceGetGpuFabricInfoV", (_P, _P), self._device(self._fabric)),
            ("nvmlDeviceGetTopologyCommonAncestor", (_P, _P, _P), self._device(self._common_ancestor)),
            ("nvmlDeviceGetNvLinkState", (_P, c_uint, _P), self._device(self._nvlink_state)),
            ("nvmlDeviceGetNvLinkRemotePciInfo_v2", (_P, c_uint, _P), self._device(self._nvlink_remote)),
            ("nvmlDeviceGetNvLinkRemoteDeviceType", (_P, c_uint, _P), self._device(self._nvlink_remote_type)),
            ("nvmlDeviceGetComputeMode", (_P, _P), self._device(lambda g, p: _write_uint(p, g.compute_mode))),
            # Running processes: the _v2 and _v3 symbols take the same struct (nvmlProcessInfo_v2_t).
            *((f"nvmlDeviceGet{query}RunningProcesses{version}", (_P, _P, _P), self._processes(mps))
              for query, mps in (("Compute", False), ("MPSCompute", True)) for version in ("_v2", "_v3")),
            # Telemetry (gfd.discovery.simulated.telemetry): readings that change with time.
            ("nvmlDeviceGetUtilizationRates", (_P, _P), self._device(self._utilization)),
            ("nvmlDeviceGetEncoderUtilization", (_P, _P, _P), self._device(
                lambda g, util, period: _write_uint(util, self._read(g, "enc_util")) or _write_uint(period, 167_000))),
            ("nvmlDeviceGetDecoderUtilization", (_P, _P, _P), self._device(
                lambda g, util, period: _write_uint(util, self._read(g, "dec_util")) or _write_uint(period, 167_000))),
            ("nvmlDeviceGetTemperature", (_P, c_uint, _P), self._device(
                lambda g, sensor, p: _write_uint(p, self._read(g, "gpu_temp")) if sensor == 0 else INVALID_ARGUMENT)),
            ("nvmlDeviceGetFieldValues", (_P, ctypes.c_int, _P), self._device(self._field_values)),
            ("nvmlDeviceGetPowerUsage", (_P, _P), self._device(
                lambda g, p: _write_uint(p, self._read(g, "power_w") * 1000))),
            ("nvmlDeviceGetTotalEnergyConsumption", (_P, _P), self._device(self._energy)),
            ("nvmlDeviceGetClockInfo", (_P, c_uint, _P), self._device(self._clock)),
            ("nvmlDeviceGetPcieReplayCounter", (_P, _P), self._device(
                lambda g, p: _write_uint(p, self._read(g, "pcie_replay")))),
            ("nvmlDeviceGetTotalEccErrors", (_P, c_uint, c_uint, _P), self._device(self._ecc)),
            ("nvmlDeviceGetRemappedRows", (_P, _P, _P, _P, _P), self._device(self._remapped_rows)),
            ("nvmlDeviceGetPcieThroughput", (_P, c_uint, _P), self._device(self._pcie_throughput)),
            ("nvmlDeviceGetGridLicensableFeatures_v4", (_P, _P), self._device(self._licensable_features)),
            ("nvmlGpmQueryDeviceSupport", (_P, _P), self._device(self._gpm_support)),
            ("nvmlGpmSampleAlloc", (_P,), self._gpm_alloc),
            ("nvmlGpmSampleFree", (_P,), self._gpm_free),
            ("nvmlGpmSampleGet", (_P, _P), self._device(self._gpm_sample)),
            ("nvmlGpmMetricsGet", (_P,), self._gpm_metrics),
            ("nvmlDeviceSetComputeMode", (_P, c_uint), self._device(self._set_compute_mode)),
            ("nvmlEventSetCreate", (_P,), lambda out: _write_ptr(out, self._handle(self._registered))),
            ("nvmlEventSetFree", (_P,), lambda _set: SUCCESS),
            ("nvmlDeviceGetSupportedEventTypes", (_P, _P), self._device(self._supported_events)),
            ("nvmlDeviceRegisterEvents", (_P, ctypes.c_ulonglong, _P), self._device(self._register_events)),
            ("nvmlEventSetWait_v2", (_P, _P, c_uint), self._event_wait),
        ]

    # -- adapters from a raw handle to the simulated object ---------------------------------------
    def _device(self, fn: Callable[..., int]) -> Callable[..., int]:
        def impl(handle: int, *args: Any) -> int:
            gpu = self._gpu(handle)
            return INVALID_ARGUMENT if gpu is None else fn(gpu, *args)
        return impl

    def _mig_device(self, fn: Callable[..., int]) -> Callable[..., int]:
        def impl(handle: int, *args: Any) -> int:
            obj = self._handles.get(handle)
            return fn(obj, *args) if isinstance(obj, _MigRef) else INVALID_ARGUMENT
        return impl

    def _any_device(self, fn: Callable[..., int]) -> Callable[..., int]:
        def impl(handle: int, *args: Any) -> int:
            obj = self._handles.get(handle)
            if isinstance(obj, SimGpu):
                return fn(obj, *args)
            if isinstance(obj, _MigRef):
                return fn(obj.mig, *args)
            return INVALID_ARGUMENT
        return impl

    def _instance(self, fn: Callable[..., int]) -> Callable[..., int]:
        def impl(handle: int, *args: Any) -> int:
            obj = self._handles.get(handle)
            return fn(obj, *args) if isinstance(obj, _InstanceRef) else INVALID_ARGUMENT
        return impl

    # -- entry point bodies ------------------------------------------------------------------------
    def _init(self, *_flags: int) -> int:
        self._initialised += 1
        return SUCCESS

    def _shutdown(self) -> int:
        self._initialised = max(0, self._initialised - 1)
        return SUCCESS

    def _handle_by_index(self, index: int, out: int) -> int:
        if index >= len(self.node.gpus):
            return INVALID_ARGUMENT
        gpu = self.node.gpus[index]
        return GPU_IS_LOST if gpu.lost else _write_ptr(out, self._handle(gpu))

    def _memory(self, device: SimGpu | SimMig, ptr: int) -> int:
        """nvml.h nvmlMemory_t: `used` is the sum of reserved and allocated memory."""
        total, reserved, allocated = self._framebuffer(device)
        mem = _Struct.Memory.from_address(ptr)
        mem.total, mem.used = total, reserved + allocated
        mem.free = total - mem.used
        return SUCCESS

    def _memory_v2(self, device: SimGpu | SimMig, ptr: int) -> int:
        """nvml.h nvmlMemory_v2_t: reserved apart, `used` is what is allocated."""
        mem = pynvml.c_nvmlMemory_v2_t.from_address(ptr)
        if mem.version != pynvml.nvmlMemory_v2:
            return ARGUMENT_VERSION_MISMATCH
        mem.total, mem.reserved, mem.used = self._framebuffer(device)
        mem.free = mem.total - mem.reserved - mem.used
        return SUCCESS

    def _framebuffer(self, device: SimGpu | SimMig) -> tuple[int, int, int]:
        """(total, reserved, allocated) bytes; a MIG device's memory is its own slice, none of it reserved."""
        total = device.memory_mib << 20
        if not isinstance(device, SimGpu):
            return total, 0, 0
        reserved = min(total, device.reserved_mib << 20)
        return total, reserved, min(total - reserved, self._read(device, "fb_used_mib") << 20)

    # -- telemetry ----------------------------------------------------------------------------------
    def _read(self, gpu: SimGpu, key: str, at: float | None = None) -> int:
        gpus = self.node.gpus
        phase = gpus.index(gpu) / len(gpus) if gpu in gpus else 0.0
        now = time.monotonic() if at is None else at
        return max(0, round(self.node.telemetry[key].at(now - self.node.started, phase)))

    def _utilization(self, gpu: SimGpu, ptr: int) -> int:
        util = _Struct.Utilization.from_address(ptr)
        util.gpu, util.memory = self._read(gpu, "gpu_util"), self._read(gpu, "mem_util")
        return SUCCESS

    def _field_values(self, gpu: SimGpu, count: int, ptr: int) -> int:
        values = (_Struct.FieldValue * count).from_address(ptr)
        for value in values:
            direction = FI_DEV_NVLINK_THROUGHPUT_DATA.get(value.fieldId)
            if value.fieldId == FI_DEV_MEMORY_TEMP:
                value.valueType, value.value.uiVal = VALUE_TYPE_UNSIGNED_INT, self._read(gpu, "memory_temp")
                value.nvmlReturn = SUCCESS
            elif direction is not None and gpu.nvlinks and (value.scopeId == ALL_INSTANCES or
                                                             value.scopeId < len(gpu.nvlinks)):
                # KiB each way at the profile's rate since the simulation began, spread evenly over the links.
                kib = self._total(gpu, f"nvlink_{direction}", "nvlink_kib_per_s")
                links = len(gpu.nvlinks) if value.scopeId != ALL_INSTANCES else 1
                value.valueType, value.value.ullVal = VALUE_TYPE_UNSIGNED_LONG_LONG, int(kib / links)
                value.nvmlReturn = SUCCESS
            else:  # no such sensor, no such link, or no NVLink on this GPU
                value.nvmlReturn = NOT_SUPPORTED
        return SUCCESS

    def _energy(self, gpu: SimGpu, ptr: int) -> int:
        c_uint64.from_address(ptr).value = int(self._total(gpu, "energy", "power_w") * 1000)  # W·s -> mJ
        return SUCCESS

    def _total(self, gpu: SimGpu, counter: str, rate: str) -> float:
        """A reading's rate added up since the last query: a counter that never goes back."""
        now = time.monotonic()
        last, total = self._totals.get((id(gpu), counter), (self.node.started, 0.0))
        total += self._read(gpu, rate) * (now - last)
        self._totals[(id(gpu), counter)] = (now, total)
        return total

    def _pcie_throughput(self, gpu: SimGpu, counter: int, ptr: int) -> int:
        """nvml.h nvmlPcieUtilCounter_t: 0 TX, 1 RX, in KB/s."""
        key = {0: "pcie_tx_kib_per_s", 1: "pcie_rx_kib_per_s"}.get(counter)
        return INVALID_ARGUMENT if key is None else _write_uint(ptr, self._read(gpu, key))

    @staticmethod
    def _licensable_features(gpu: SimGpu, ptr: int) -> int:
        """A vGPU guest reports its vGPU license; bare metal and passthrough GPUs have none to report."""
        if gpu.virtualization_mode != VIRTUALIZATION_MODE_VGPU:
            return NOT_SUPPORTED
        features = pynvml.c_nvmlGridLicensableFeatures_v4_t.from_address(ptr)
        features.isGridLicenseSupported, features.licensableFeaturesCount = 1, 1
        vgpu = features.gridLicensableFeatures[0]
        vgpu.featureCode, vgpu.featureEnabled = GRID_LICENSE_FEATURE_CODE_VGPU, 1
        vgpu.featureState = int(gpu.vgpu_licensed)
        return SUCCESS

    # -- GPM: samples are opaque handles; a metric is the reading over the window between two samples --------
    @staticmethod
    def _gpm_support(gpu: SimGpu, ptr: int) -> int:
        support = pynvml.c_nvmlGpmSupport_t.from_address(ptr)
        if support.version != pynvml.NVML_GPM_SUPPORT_VERSION:
            return ARGUMENT_VERSION_MISMATCH
        support.isSupportedDevice = int(gpu.architecture >= HOPPER)
        return SUCCESS

    def _gpm_alloc(self, out: int) -> int:
        return _write_ptr(out, self._handle(_GpmSample()))

    def _gpm_free(self, sample: int) -> int:
        obj = self._handles.pop(sample, None)
        if not isinstance(obj, _GpmSample):
            return INVALID_ARGUMENT
        del self._ids[(id(obj),)]
        return SUCCESS

    def _gpm_sample(self, gpu: SimGpu, sample: int) -> int:
        obj = self._handles.get(sample)
        if not isinstance(obj, _GpmSample):
            return INVALID_ARGUMENT
        if gpu.architecture < HOPPER:
            return NOT_SUPPORTED
        obj.gpu, obj.at = gpu, time.monotonic()
        return SUCCESS

    def _gpm_metrics(self, ptr: int) -> int:
        request = pynvml.c_nvmlGpmMetricsGet_t.from_address(ptr)
        if request.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            return ARGUMENT_VERSION_MISMATCH
        first = self._handles.get(ctypes.cast(request.sample1, c_void_p).value or 0)
        second = self._handles.get(ctypes.cast(request.sample2, c_void_p).value or 0)
        if not isinstance(first, _GpmSample) or not isinstance(second, _GpmSample) or first.gpu is None or \
                first.gpu is not second.gpu or not first.at < second.at or request.numMetrics > len(request.metrics):
            return INVALID_ARGUMENT
        gpu, middle = first.gpu, (first.at + second.at) / 2
        for metric in request.metrics[:request.numMetrics]:
            known = GPM_METRICS.get(metric.metricId)
            metric.nvmlReturn = NOT_SUPPORTED if known is None else SUCCESS
            if known is not None:
                metric.value = self._read(gpu, known[0], middle) * known[1]
        return SUCCESS

    def _clock(self, gpu: SimGpu, clock: int, ptr: int) -> int:
        key = {0: "sm_clock", 1: "sm_clock", 2: "mem_clock"}.get(clock)  # graphics, SM, memory
        return INVALID_ARGUMENT if key is None else _write_uint(ptr, self._read(gpu, key))

    def _ecc(self, gpu: SimGpu, error_type: int, _counter: int, ptr: int) -> int:
        key = {0: "ecc_sbe", 1: "ecc_dbe"}.get(error_type)
        if key is None:
            return INVALID_ARGUMENT
        c_uint64.from_address(ptr).value = self._read(gpu, key)
        return SUCCESS

    def _remapped_rows(self, gpu: SimGpu, corr: int, unc: int, pending: int, failure: int) -> int:
        _write_uint(corr, self._read(gpu, "remapped_correctable"))
        _write_uint(unc, self._read(gpu, "remapped_uncorrectable"))
        _write_uint(pending, self._read(gpu, "remap_pending"))
        return _write_uint(failure, self._read(gpu, "remap_failure"))

    @staticmethod
    def _compute(gpu: SimGpu, major: int, minor: int) -> int:
        _write_int(major, gpu.compute_capability[0])
        return _write_int(minor, gpu.compute_capability[1])

    @staticmethod
    def _set_compute_mode(gpu: SimGpu, mode: int) -> int:
        """nvml.h nvmlComputeMode_t: 0 DEFAULT, 2 PROHIBITED, 3 EXCLUSIVE_PROCESS (1, EXCLUSIVE_THREAD, is gone)."""
        if mode not in (0, 2, 3):
            return INVALID_ARGUMENT
        gpu.compute_mode = mode
        return SUCCESS

    @staticmethod
    def _mig_mode(gpu: SimGpu, current: int, pending: int) -> int:
        if not gpu.mig_capable:
            return NOT_SUPPORTED
        _write_uint(current, int(gpu.mig_enabled))
        return _write_uint(pending, int(gpu.mig_enabled if gpu.mig_pending is None else gpu.mig_pending))

    @staticmethod
    def _pci(gpu: SimGpu, ptr: int) -> int:
        info = _Struct.PciInfo.from_address(ptr)
        domain, bus, rest = gpu.bus_id.split(":")
        info.busId = info.busIdLegacy = gpu.bus_id.encode()
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16)
        info.pciDeviceId = gpu.pci_device_id
        info.pciSubSystemId = 0
        return SUCCESS

    @staticmethod
    def _max_mig(gpu: SimGpu, ptr: int) -> int:
        if not gpu.mig_capable:
            return NOT_SUPPORTED
        return _write_uint(ptr, 7 if gpu.mig_enabled else 0)

    def _mig_handle(self, gpu: SimGpu, index: int, out: int) -> int:
        if not gpu.mig_enabled:
            return INVALID_ARGUMENT
        if index >= len(gpu.mig):
            return NOT_FOUND
        return _write_ptr(out, self._handle(_MigRef(gpu, gpu.mig[index])))

    @staticmethod
    def _attributes(ref: _MigRef, ptr: int) -> int:
        m, a = ref.mig, _Struct.Attributes.from_address(ptr)
        a.multiprocessorCount, a.sharedCopyEngineCount = m.multiprocessors, m.copy
        a.sharedDecoderCount, a.sharedEncoderCount = m.decoder, m.encoder
        a.sharedJpegCount, a.sharedOfaCount = m.jpeg, m.ofa
        a.gpuInstanceSliceCount, a.computeInstanceSliceCount = m.gi_slices, m.ci_slices
        a.memorySizeMB = m.memory_mib
        return SUCCESS

    def _gpu_instance(self, gpu: SimGpu, gi_id: int, out: int) -> int:
        mig = next((m for m in gpu.mig if m.gi_id == gi_id), None)
        if mig is None:
            return NOT_FOUND
        return _write_ptr(out, self._handle(_InstanceRef(gpu, mig, "gi")))

    def _gi_info(self, ref: _InstanceRef, ptr: int) -> int:
        info = _Struct.GpuInstanceInfo.from_address(ptr)
        info.device, info.id, info.profileId = self._handle(ref.gpu), ref.mig.gi_id, ref.mig.gi_profile_id
        if ref.mig.placement is not None:
            info.placementStart, info.placementSize = ref.mig.placement
        return SUCCESS

    @staticmethod
    def _gi_profile_info(gpu: SimGpu, index: int, ptr: int) -> int:
        """As the driver: INVALID_ARGUMENT outside the enum, NOT_SUPPORTED for a profile this product lacks,
        else the profile with the driver's ID (not the index) in `.id`."""
        if index >= GPU_INSTANCE_PROFILE_COUNT:
            return INVALID_ARGUMENT
        if not gpu.mig_enabled:
            return NOT_SUPPORTED
        m = next((p for p in gpu.mig_profiles.values() if p.gi_profile == index and p.ci_slices == p.gi_slices),
                 None)
        if m is None:
            return NOT_SUPPORTED
        info = _Struct.GpuInstanceProfileInfo.from_address(ptr)
        info.id, info.isP2pSupported, info.sliceCount = m.gi_profile_id, 0, m.gi_slices
        info.instanceCount = 7 // m.gi_slices if m.gi_slices < 7 else 1
        info.multiprocessorCount, info.copyEngineCount = m.multiprocessors, m.copy
        info.decoderCount, info.encoderCount, info.jpegCount, info.ofaCount = m.decoder, m.encoder, m.jpeg, m.ofa
        info.memorySizeMB = m.memory_mib
        return SUCCESS

    @staticmethod
    def _ci_profile_info(ref: _InstanceRef, index: int, engines: int, ptr: int) -> int:
        """The compute-instance profiles a GPU instance offers: those no larger than it."""
        if ref.kind != "gi" or index >= COMPUTE_INSTANCE_PROFILE_COUNT or engines != 0:
            return INVALID_ARGUMENT
        m = next((p for p in ref.gpu.mig_profiles.values()
                  if p.ci_profile == index and p.ci_slices <= ref.mig.gi_slices), None)
        if m is None:
            return NOT_SUPPORTED
        info = _Struct.ComputeInstanceProfileInfo.from_address(ptr)
        info.id, info.sliceCount = m.ci_profile_id, m.ci_slices
        info.instanceCount = ref.mig.gi_slices // m.ci_slices
        info.multiprocessorCount = ref.mig.multiprocessors * m.ci_slices // ref.mig.gi_slices
        info.sharedCopyEngineCount, info.sharedDecoderCount = ref.mig.copy, ref.mig.decoder
        info.sharedEncoderCount, info.sharedJpegCount, info.sharedOfaCount = ref.mig.encoder, ref.mig.jpeg, ref.mig.ofa
        return SUCCESS

    def _compute_instance(self, ref: _InstanceRef, ci_id: int, out: int) -> int:
        if ref.kind != "gi" or ref.mig.ci_id != ci_id:
            return NOT_FOUND
        return _write_ptr(out, self._handle(_InstanceRef(ref.gpu, ref.mig, "ci")))

    def _ci_info(self, ref: _InstanceRef, ptr: int) -> int:
        info = _Struct.ComputeInstanceInfo.from_address(ptr)
        info.device, info.id, info.profileId = self._handle(ref.gpu), ref.mig.ci_id, ref.mig.ci_profile_id
        return SUCCESS

    def _common_ancestor(self, gpu: SimGpu, other_handle: int, ptr: int) -> int:
        other = self._gpu(other_handle)
        if other is None:
            return INVALID_ARGUMENT
        a, b = sorted((gpu.minor, other.minor))
        level = 0 if a == b else self.node.pcie.get((a, b), self.node.pcie_default)
        return _write_uint(ptr, level)

    @staticmethod
    def _nvlink_state(gpu: SimGpu, link: int, ptr: int) -> int:
        if not gpu.nvlinks:
            return NOT_SUPPORTED
        return INVALID_ARGUMENT if link >= len(gpu.nvlinks) else _write_uint(ptr, 1)

    @staticmethod
    def _nvlink_remote(gpu: SimGpu, link: int, ptr: int) -> int:
        if link >= len(gpu.nvlinks):
            return INVALID_ARGUMENT
        info = _Struct.PciInfo.from_address(ptr)
        info.busId = info.busIdLegacy = gpu.nvlinks[link].encode()
        return SUCCESS

    def _nvlink_remote_type(self, gpu: SimGpu, link: int, ptr: int) -> int:
        if link >= len(gpu.nvlinks):
            return INVALID_ARGUMENT
        gpu_end = any(g.bus_id == gpu.nvlinks[link] for g in self.node.gpus)
        return _write_uint(ptr, NVLINK_DEVICE_TYPE_GPU if gpu_end else NVLINK_DEVICE_TYPE_SWITCH)

    def _processes(self, mps: bool) -> Callable[..., int]:
        """nvml.h: `*infoCount` is the size of `infos` in, the number of processes out; a buffer too small (a
        count query passes 0 and may pass NULL) gets NVML_ERROR_INSUFFICIENT_SIZE with the number needed, or
        SUCCESS when none run. A GPU's handle lists its own processes and, with MIG on, its MIG devices' too (the
        aggregate a privileged caller gets); a MIG device's handle lists that device's, with its instance ids."""
        def impl(handle: int, count_ptr: int, infos: int | None) -> int:
            obj = self._handles.get(handle)
            if isinstance(obj, SimGpu):
                gpu, listed = obj, [(p, ALL_INSTANCES, ALL_INSTANCES) for p in obj.processes]
                listed += [(p, m.gi_id, m.ci_id) for m in obj.mig for p in m.processes]
            elif isinstance(obj, _MigRef):
                gpu, listed = obj.gpu, [(p, obj.mig.gi_id, obj.mig.ci_id) for p in obj.mig.processes]
            else:
                return INVALID_ARGUMENT
            if not count_ptr:
                return INVALID_ARGUMENT
            if mps and gpu.architecture < VOLTA:
                return NOT_SUPPORTED
            found = [entry for entry in listed if _listed_by(entry[0], mps)]
            room = c_uint.from_address(count_ptr).value if infos else 0
            c_uint.from_address(count_ptr).value = len(found)
            if len(found) > room:
                return INSUFFICIENT_SIZE
            for i, (process, gi_id, ci_id) in enumerate(found):
                info = _Struct.ProcessInfo.from_address(infos + i * ctypes.sizeof(_Struct.ProcessInfo))  # type: ignore[operator]
                info.pid, info.usedGpuMemory = process.pid, process.used_memory_mib << 20
                info.gpuInstanceId, info.computeInstanceId = gi_id, ci_id
            return SUCCESS
        return impl

    @staticmethod
    def _supported_events(gpu: SimGpu, ptr: int) -> int:
        if not gpu.events_supported:
            return NOT_SUPPORTED
        ctypes.c_ulonglong.from_address(ptr).value = XID_CRITICAL | 0x3
        return SUCCESS

    def _register_events(self, gpu: SimGpu, mask: int, _set: int) -> int:
        if not gpu.events_supported:
            return NOT_SUPPORTED
        if mask & XID_CRITICAL:
            self._registered.add(id(gpu))
        return SUCCESS

    def _event_wait(self, _set: int, ptr: int, timeout_ms: int) -> int:
        if self.node.events_file:
            self._read_events_file()
        with self._event_ready:
            if not self._event_ready.wait_for(lambda: bool(self._events), timeout_ms / 1000):
                return TIMEOUT
            gpu, xid, gi_id, ci_id = self._events.popleft()
        if id(gpu) not in self._registered:
            return TIMEOUT  # not registered: the set would not see it
        data = _Struct.EventData.from_address(ptr)
        with self._lock:
            data.device = self._handle(gpu)
        data.eventType, data.eventData = XID_CRITICAL, xid
        data.gpuInstanceId, data.computeInstanceId = gi_id, ci_id
        return SUCCESS

    @staticmethod
    def _fabric(gpu: SimGpu, ptr: int) -> int:
        if gpu.fabric is None:
            return NOT_SUPPORTED
        info = _Struct.FabricInfoV2.from_address(ptr)
        cluster = bytes.fromhex(str(gpu.fabric["cluster_uuid"]).replace("-", ""))
        ctypes.memmove(ctypes.addressof(info.clusterUuid), cluster, 16)
        info.status = int(gpu.fabric.get("status", SUCCESS))
        info.cliqueId = int(gpu.fabric.get("clique_id", 0))
        info.state = int(gpu.fabric.get("state", 3))
        return SUCCESS


def _listed_by(process: SimProcess, mps: bool) -> bool:
    return "M" in process.kind if mps else "C" in process.kind


class _Ref:
    """A handle target inside a GPU; equal targets share one handle value."""

    def __init__(self, gpu: SimGpu, mig: SimMig, kind: str) -> None:
        self.gpu, self.mig, self.kind = gpu, mig, kind
        self.key = (kind, id(gpu), id(mig))


class _MigRef(_Ref):
    def __init__(self, gpu: SimGpu, mig: SimMig) -> None:
        super().__init__(gpu, mig, "mig")


class _InstanceRef(_Ref):
    pass


class _GpmSample:
    """What nvmlGpmSampleGet recorded: which GPU, and when."""

    def __init__(self) -> None:
        self.gpu: SimGpu | None = None
        self.at = 0.0
