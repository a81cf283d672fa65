"""GPU telemetry read through NVML, under dcgm-exporter's metric names, types and HELP strings (its default
counters, `etc/default-counters.csv` at NVIDIA/dcgm-exporter 7ad5832; the volatile ECC totals are rows it ships
commented out; FB_TOTAL, in none of its files, is worded as its FB_FREE/FB_USED) and DCGM's units
(`dcgm_fields.h`). One table says, per metric, the NVML call and the Prometheus type, so the exporter, the
README and the tests share it.

A `Sampler` reads each device once per collection: one NVML call per query, whatever number of metrics it
answers. Two metrics are rates between collections, as DCGM computes them: the profiling ratios from two NVML
GPM samples (Hopper and later; DCGM's own source there), and NVLink bandwidth from the NVLink data counters.
So both appear from the second collection on.

A query a device does not support (NOT_SUPPORTED, FUNCTION_NOT_FOUND) leaves its metrics out for that device;
any other failure leaves them out of that sample; GPU_IS_LOST raises GpuLost.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from gfd.discovery.errors import GpuLost
from gfd.discovery.nvml import NVMLError, error_name, translated
from gfd.model import MIB

ALL_LINKS = 0xFFFFFFFF  # nvml.h: a field value's scopeId for the sum over every NVLink


@dataclass(frozen=True)
class Field:
    name: str  # dcgm-exporter's
    kind: str  # "gauge" or "counter", as dcgm-exporter declares it
    help: str  # dcgm-exporter's HELP text, byte for byte
    call: str  # the NVML function (a key of QUERIES), for the README and the logs
    mig: bool = False  # also read on MIG device handles


GPM = "nvmlGpmMetricsGet"
FIELD_VALUES = "nvmlDeviceGetFieldValues"
FIELDS: tuple[Field, ...] = (
    Field("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", "nvmlDeviceGetUtilizationRates"),
    Field("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", "nvmlDeviceGetUtilizationRates"),
    Field("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", "nvmlDeviceGetEncoderUtilization"),
    Field("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", "nvmlDeviceGetDecoderUtilization"),
    Field("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", "nvmlDeviceGetMemoryInfo_v2", mig=True),
    Field("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", "nvmlDeviceGetMemoryInfo_v2", mig=True),
    Field("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB).", "nvmlDeviceGetMemoryInfo_v2",
          mig=True),
    Field("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).", "nvmlDeviceGetMemoryInfo_v2"),
    Field("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", "nvmlDeviceGetTemperature"),
    Field("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", FIELD_VALUES),
    Field("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", "nvmlDeviceGetPowerUsage"),
    Field("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ).",
          "nvmlDeviceGetTotalEnergyConsumption"),
    Field("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", "nvmlDeviceGetClockInfo(SM)"),
    Field("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", "nvmlDeviceGetClockInfo(MEM)"),
    Field("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.",
          "nvmlDeviceGetPcieReplayCounter"),
    Field("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Total number of single-bit volatile ECC errors.",
          "nvmlDeviceGetTotalEccErrors(CORRECTED)"),
    Field("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors.",
          "nvmlDeviceGetTotalEccErrors(UNCORRECTED)"),
    Field("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for uncorrectable errors",
          "nvmlDeviceGetRemappedRows"),
    Field("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for correctable errors",
          "nvmlDeviceGetRemappedRows"),
    Field("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed",
          "nvmlDeviceGetRemappedRows"),
    # DCGM reports a rate, MiB/s over its sampling window (DcgmCacheManager, ReadAndCacheNvLinkBandwidth), so
    # dcgm-exporter declares it a gauge (NVIDIA/dcgm-exporter#658).
    Field("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "gauge", "Total number of NVLink bandwidth counters for all lanes.",
          FIELD_VALUES),
    Field("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "vGPU License status",
          "nvmlDeviceGetGridLicensableFeatures_v4"),
    Field("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.", GPM),
    Field("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor (HMMA) pipe is active.", GPM),
    Field("DCGM_FI_PROF_DRAM_ACTIVE", "gauge",
          "Ratio of cycles the device memory interface is active sending or receiving data.", GPM),
    Field("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge", "The rate of data transmitted over the PCIe bus - including both "
          "protocol headers and data payloads - in bytes per second.", GPM),
    Field("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge", "The rate of data received over the PCIe bus - including both "
          "protocol headers and data payloads - in bytes per second.", GPM),
)
PROF_PCIE = ("DCGM_FI_PROF_PCIE_TX_BYTES", "DCGM_FI_PROF_PCIE_RX_BYTES")
# nvml.h GPM metrics -> (metric, scale to DCGM's unit): GPM gives % (DCGM: a ratio) and MiB/s (DCGM: bytes/s).
GPM_METRICS = (
    (pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.01),
    (pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 0.01),
    (pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL, "DCGM_FI_PROF_DRAM_ACTIVE", 0.01),
    (pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC, "DCGM_FI_PROF_PCIE_TX_BYTES", MIB),
    (pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC, "DCGM_FI_PROF_PCIE_RX_BYTES", MIB),
)
UNSUPPORTED = (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)


@dataclass(frozen=True)
class Sample:
    values: dict[str, float]  # field name -> value, for the fields that answered
    unsupported: frozenset[str]  # fields the device does not support
    errors: dict[str, str]  # field name -> NVML error name, for other failures


@dataclass
class DeviceState:
    """What a rate needs from the last collection."""

    # Two GPM sample buffers, the last one taken first. They may outlive the NVML session that made them (the
    # plugin re-initialises NVML on SIGHUP): nvmlGpmMetricsGet refuses a pair that does not match, and that
    # error drops them; they are memory NVML allocated, freed only by nvmlGpmSampleFree.
    gpm: list[Any] | None = None
    gpm_taken: bool = False  # the first buffer holds the last collection's sample
    gpm_supported: bool | None = None  # None: not asked yet
    nvlink: tuple[float, int] | None = None  # (when, KiB sent and received so far)


Reading = dict[str, float | None]  # field -> value; None: no value yet (a rate's first sample)


def _utilization(h: Any, _s: DeviceState) -> Reading:
    rates = pynvml.nvmlDeviceGetUtilizationRates(h)
    return {"DCGM_FI_DEV_GPU_UTIL": rates.gpu, "DCGM_FI_DEV_MEM_COPY_UTIL": rates.memory}


def _memory(h: Any, _s: DeviceState) -> Reading:
    """nvml.h nvmlMemory_v2_t: `used` excludes what the driver reserves, which DCGM reports apart."""
    try:
        mem = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        reserved = {"DCGM_FI_DEV_FB_RESERVED": mem.reserved / MIB}
    except pynvml.NVMLError_FunctionNotFound:  # a driver before R510: no reserved figure
        mem, reserved = pynvml.nvmlDeviceGetMemoryInfo(h), {}
    return {"DCGM_FI_DEV_FB_FREE": mem.free / MIB, "DCGM_FI_DEV_FB_USED": mem.used / MIB,
            "DCGM_FI_DEV_FB_TOTAL": mem.total / MIB} | reserved


def _field_values(h: Any, state: DeviceState) -> Reading:
    """One call for the memory temperature and the NVLink data counters; each value has its own answer."""
    temp, tx, rx = pynvml.nvmlDeviceGetFieldValues(h, [
        pynvml.NVML_FI_DEV_MEMORY_TEMP, (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, ALL_LINKS),
        (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, ALL_LINKS)])
    for value in (temp, tx, rx):  # a failure other than "not supported" fails the query, as a call's would
        if value.nvmlReturn != pynvml.NVML_SUCCESS and value.nvmlReturn not in UNSUPPORTED:
            raise pynvml.NVMLError(value.nvmlReturn)
    out: Reading = {}
    if temp.nvmlReturn == pynvml.NVML_SUCCESS:
        out["DCGM_FI_DEV_MEMORY_TEMP"] = float(temp.value.uiVal)
    if tx.nvmlReturn == rx.nvmlReturn == pynvml.NVML_SUCCESS:
        now, kib = time.monotonic(), int(tx.value.ullVal) + int(rx.value.ullVal)
        last, state.nvlink = state.nvlink, (now, kib)
        rate = None if last is None or now <= last[0] or kib < last[1] else (kib - last[1]) / (now - last[0]) / 1024
        out["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"] = rate
    return out


def _ecc(kind: int) -> Callable[[Any, DeviceState], Reading]:
    corrected = kind == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
    name = "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL" if corrected else "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"
    return lambda h, _s: {name: pynvml.nvmlDeviceGetTotalEccErrors(h, kind, pynvml.NVML_VOLATILE_ECC)}


def _remapped_rows(h: Any, _s: DeviceState) -> Reading:
    correctable, uncorrectable, _pending, failure = pynvml.nvmlDeviceGetRemappedRows(h)
    return {"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": correctable,
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": uncorrectable, "DCGM_FI_DEV_ROW_REMAP_FAILURE": failure}


def _license(h: Any, _s: DeviceState) -> Reading:
    """A vGPU guest's license: 1 when the feature in use is licensed (nvml.h `featureState`), else 0."""
    features = pynvml.nvmlDeviceGetGridLicensableFeatures_v4(h)
    if not features.isGridLicenseSupported:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    enabled = features.gridLicensableFeatures[:min(features.licensableFeaturesCount,
                                                   pynvml.NVML_GRID_LICENSE_FEATURE_MAX_COUNT)]
    return {"DCGM_FI_DEV_VGPU_LICENSE_STATUS": float(any(f.featureEnabled and f.featureState for f in enabled))}


def _profiling(h: Any, state: DeviceState) -> Reading:
    """GPM between this collection's sample and the last one where the GPU has GPM (Hopper and later); else
    only PCIe traffic, from nvmlDeviceGetPcieThroughput (KB/s over the driver's 20 ms window)."""
    if state.gpm_supported is None:
        try:
            state.gpm_supported = bool(pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice)
        except NVMLError as e:
            if getattr(e, "value", None) not in UNSUPPORTED:
                raise
            state.gpm_supported = False
    if not state.gpm_supported:
        return {name: pynvml.nvmlDeviceGetPcieThroughput(h, counter) * 1024.0
                for name, counter in zip(PROF_PCIE, (pynvml.NVML_PCIE_UTIL_TX_BYTES, pynvml.NVML_PCIE_UTIL_RX_BYTES),
                                         strict=True)}
    if state.gpm is None:
        state.gpm = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
    last, this = state.gpm
    pynvml.nvmlGpmSampleGet(h, this)
    state.gpm, taken, state.gpm_taken = [this, last], state.gpm_taken, True
    if not taken:
        return dict.fromkeys((name for _id, name, _scale in GPM_METRICS), None)
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version, request.numMetrics = pynvml.NVML_GPM_METRICS_GET_VERSION, len(GPM_METRICS)
    request.sample1, request.sample2 = last, this
    for slot, (metric_id, _name, _scale) in zip(request.metrics, GPM_METRICS, strict=False):
        slot.metricId = metric_id
    pynvml.nvmlGpmMetricsGet(request)
    return {name: slot.value * scale for slot, (_id, name, scale) in zip(request.metrics, GPM_METRICS, strict=False)
            if slot.nvmlReturn == pynvml.NVML_SUCCESS}


# The NVML call behind each field (Field.call) -> how it is read.
QUERIES: dict[str, Callable[[Any, DeviceState], Reading]] = {
    "nvmlDeviceGetUtilizationRates": _utilization,
    "nvmlDeviceGetEncoderUtilization": lambda h, _s: {
        "DCGM_FI_DEV_ENC_UTIL": pynvml.nvmlDeviceGetEncoderUtilization(h)[0]},
    "nvmlDeviceGetDecoderUtilization": lambda h, _s: {
        "DCGM_FI_DEV_DEC_UTIL": pynvml.nvmlDeviceGetDecoderUtilization(h)[0]},
    "nvmlDeviceGetMemoryInfo_v2": _memory,
    "nvmlDeviceGetTemperature": lambda h, _s: {
        "DCGM_FI_DEV_GPU_TEMP": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)},
    FIELD_VALUES: _field_values,
    "nvmlDeviceGetPowerUsage": lambda h, _s: {"DCGM_FI_DEV_POWER_USAGE": pynvml.nvmlDeviceGetPowerUsage(h) / 1000},
    "nvmlDeviceGetTotalEnergyConsumption": lambda h, _s: {
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": pynvml.nvmlDeviceGetTotalEnergyConsumption(h)},
    "nvmlDeviceGetClockInfo(SM)": lambda h, _s: {
        "DCGM_FI_DEV_SM_CLOCK": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)},
    "nvmlDeviceGetClockInfo(MEM)": lambda h, _s: {
        "DCGM_FI_DEV_MEM_CLOCK": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)},
    "nvmlDeviceGetPcieReplayCounter": lambda h, _s: {
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": pynvml.nvmlDeviceGetPcieReplayCounter(h)},
    "nvmlDeviceGetTotalEccErrors(CORRECTED)": _ecc(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
    "nvmlDeviceGetTotalEccErrors(UNCORRECTED)": _ecc(pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
    "nvmlDeviceGetRemappedRows": _remapped_rows,
    "nvmlDeviceGetGridLicensableFeatures_v4": _license,
    GPM: _profiling,
}
_CALLS = {mig: tuple(dict.fromkeys(f.call for f in FIELDS if f.mig or not mig)) for mig in (False, True)}
_FIELDS_OF = {call: tuple(f.name for f in FIELDS if f.call == call) for call in QUERIES}


def mig_handle(gpu: Any, index: int) -> Any:
    """DiscoveryError (GpuLost when the GPU is lost) for NVML's refusal."""
    try:
        return pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, index)
    except pynvml.NVMLError_GpuIsLost as e:
        raise GpuLost("nvmlDeviceGetMigDeviceHandleByIndex", e.value) from e
    except NVMLError as e:
        raise translated(e, "nvmlDeviceGetMigDeviceHandleByIndex", f"error getting MIG device {index}") from e


@dataclass(frozen=True)
class GpuProcess:
    """A process with a CUDA context on a device (nvml.h nvmlProcessInfo_t): its PID in the host's PID namespace,
    and the device memory it uses, "all of the memory used by the application" (None where NVML cannot say)."""

    pid: int
    used_bytes: int | None


# The running-process queries, newest symbol first; _v3 and _v2 fill the same struct (nvmlProcessInfo_v2_t).
# Volta+ MPS clients have their own contexts and address spaces (NVIDIA's MPS guide, "Volta MPS"), so each is
# listed with its own memory by nvmlDeviceGetMPSComputeRunningProcesses ("processes ... utilizing MPS", Volta and
# later); whether NVML also lists them among the compute processes is not documented (nvidia-smi on the host shows
# them as type "M+C", NVIDIA's DRA driver MPS guide). Both lists are read and a PID counts once. The MPS server
# (a compute process as nvidia-smi lists it) runs in the DRA driver's container: no share's.
PROCESS_QUERIES = (("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2"),
                   ("nvmlDeviceGetMPSComputeRunningProcesses_v3", "nvmlDeviceGetMPSComputeRunningProcesses_v2"))
PROCESS_BUFFER = 64  # entries of the first call: more than CUDA MPS serves per device (48 clients since Volta)
MAX_PROCESS_BUFFER = 4096  # the one larger call a longer list gets; a list longer still is an error


def running_processes(handle: Any) -> list[GpuProcess] | None:
    """The processes on a GPU or MIG device (its handle), by PID; None when neither query is supported.
    DiscoveryError (GpuLost for a lost GPU) when a query fails or lists more than MAX_PROCESS_BUFFER.

    Called as go-nvml calls it (NVIDIA's Go tools, dcgm-exporter among them): with a buffer, once, and once more
    with the size NVML answered when it was too small (nvml.h: NVML_ERROR_INSUFFICIENT_SIZE and the count needed).
    pynvml's wrappers first ask the count with a NULL buffer, which NVIDIA's mock NVML answers SUCCESS (nvml.h:
    INSUFFICIENT_SIZE), so they would read no process there; and the buffer here is bounded."""
    found: dict[int, GpuProcess] = {}
    supported = False
    for names in PROCESS_QUERIES:
        listed = _processes(handle, names)
        if listed is None:
            continue
        supported = True
        for process in listed:
            before = found.get(process.pid)
            if before is None or (process.used_bytes or 0) > (before.used_bytes or 0):
                found[process.pid] = process
    return [found[pid] for pid in sorted(found)] if supported else None


def _processes(handle: Any, names: tuple[str, ...]) -> list[GpuProcess] | None:
    for name in names:
        try:
            query = pynvml._nvmlGetFunctionPointer(name)  # pynvml's own lookup; its wrappers are not used, above
            break
        except NVMLError as e:
            if getattr(e, "value", None) not in UNSUPPORTED:
                raise translated(e, name) from e
    else:
        return None
    size = PROCESS_BUFFER
    for _ in range(2):
        count, infos = ctypes.c_uint(size), (pynvml.c_nvmlProcessInfo_v2_t * size)()
        code = query(handle, ctypes.byref(count), infos)
        if code == pynvml.NVML_SUCCESS:
            return [GpuProcess(int(i.pid), None if i.usedGpuMemory == pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
                               else int(i.usedGpuMemory)) for i in infos[:min(count.value, size)]]
        error = pynvml.NVMLError(code)
        if code == pynvml.NVML_ERROR_GPU_IS_LOST:
            raise GpuLost(name, code) from error
        if code in UNSUPPORTED:
            return None
        if code != pynvml.NVML_ERROR_INSUFFICIENT_SIZE or count.value > MAX_PROCESS_BUFFER:
            raise translated(error, name, f"{count.value} processes" if code == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
                             else "") from error
        size = min(MAX_PROCESS_BUFFER, count.value * 2)  # room for processes started between the two calls
    raise translated(pynvml.NVMLError(pynvml.NVML_ERROR_INSUFFICIENT_SIZE), names[0], "the process list kept growing")


@dataclass
class Sampler:
    """Reads devices, keeping per device (by UUID) what the rates need from one collection to the next."""

    states: dict[str, DeviceState] = field(default_factory=dict)

    def sample(self, key: str, handle: Any, mig: bool = False) -> Sample:
        state = self.states.setdefault(key, DeviceState())
        values: dict[str, float] = {}
        unsupported: set[str] = set()
        errors: dict[str, str] = {}
        wanted = {f.name for f in FIELDS if f.mig or not mig}
        for call in _CALLS[mig]:
            fields = [name for name in _FIELDS_OF[call] if name in wanted]
            try:
                reading = QUERIES[call](handle, state)
            except NVMLError as e:
                if isinstance(e, pynvml.NVMLError_GpuIsLost):
                    raise GpuLost(call, e.value) from e
                if call == GPM:  # new buffers, a new window (a sample of another NVML session is refused)
                    _free(state)
                if getattr(e, "value", None) in UNSUPPORTED:
                    unsupported.update(fields)
                else:
                    errors.update(dict.fromkeys(fields, error_name(e)))
                continue
            unsupported.update(name for name in fields if name not in reading)
            values.update({name: float(v) for name, v in reading.items() if v is not None and name in wanted})
        return Sample(values, frozenset(unsupported), errors)

    def keep(self, keys: set[str]) -> None:
        """Forget the devices that are gone."""
        for key in set(self.states) - keys:
            _free(self.states.pop(key))


def _free(state: DeviceState) -> None:
    """GPM buffers back to NVML; the next sample starts a new window."""
    for buffer in state.gpm or ():
        with contextlib.suppress(NVMLError):  # the session that made it may be gone
            pynvml.nvmlGpmSampleFree(buffer)
    state.gpm, state.gpm_taken = None, False
