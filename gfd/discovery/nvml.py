"""Read the device model through pynvml. The only module that imports pynvml.

Which NVML failures are fatal, which are warnings, follows upstream GFD v0.20.0
(shared/reference/gfd-labels.md §4); facts upstream does not read (UUID, brand, NUMA…) never
fail a pass.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml
import structlog

from gfd.discovery.migprofile import MigProfileError, profile_name
from gfd.model import Fabric, Gpu, MigDevice

log = structlog.get_logger("gfd.discovery")

T = TypeVar("T")
MIB = 1024 * 1024
# Display-only functions upstream skips (go-nvlib device/device.go).
_SKIPPED_MODELS = ("DGX Display", "NVIDIA DGX Display")
_ARCHITECTURES = {2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere", 8: "ada",
                  9: "hopper", 10: "blackwell", 13: "rubin"}
_BRANDS = {0: "unknown", 1: "quadro", 2: "tesla", 3: "nvs", 4: "grid", 5: "geforce", 6: "titan",
           14: "nvidia"}
_VIRTUALIZATION = {0: "none", 1: "passthrough", 2: "vgpu", 3: "host-vgpu", 4: "host-vsga"}
_FABRIC_COMPLETED = 3

NVMLError = pynvml.NVMLError  # pynvml is untyped: annotations below use Exception


class DiscoveryError(Exception):
    """A failure upstream treats as fatal for the labelling pass."""


class NvmlUnavailable(DiscoveryError):
    """The NVML library is missing or refused to initialise; the message is the NVML error name."""

    @property
    def library_missing(self) -> bool:
        return str(self) == "ERROR_LIBRARY_NOT_FOUND"


def init() -> None:
    try:
        pynvml.nvmlInit()
    except NVMLError as e:
        raise NvmlUnavailable(error_name(e)) from None


def shutdown() -> None:
    try:
        pynvml.nvmlShutdown()
    except NVMLError as e:
        log.warning("error shutting down NVML", error=str(e))


def error_name(e: Exception) -> str:
    """Upstream prints NVML errors by their symbolic name (e.g. ERROR_LIBRARY_NOT_FOUND)."""
    value = getattr(e, "value", None)
    names: dict[object, str] = {
        v: k[5:] for k, v in vars(pynvml).items() if k.startswith("NVML_ERROR_") and isinstance(v, int)
    }
    return names.get(value, f"ERROR_{value}")


def _fatal(what: str, call: Callable[..., T], *args: Any) -> T:
    try:
        return call(*args)
    except NVMLError as e:
        raise DiscoveryError(f"{what}: {error_name(e)}") from None


def _optional(what: str, call: Callable[..., T], *args: Any) -> T | None:
    try:
        return call(*args)
    except NVMLError as e:
        log.warning(f"Ignoring error getting {what}", error=error_name(e))
        return None


def _unsupported(e: Exception) -> bool:
    return isinstance(e, pynvml.NVMLError_NotSupported | pynvml.NVMLError_FunctionNotFound)


def read_versions() -> tuple[str, int]:
    driver = _fatal("error getting driver version", pynvml.nvmlSystemGetDriverVersion)
    cuda = _fatal("error getting CUDA driver version", pynvml.nvmlSystemGetCudaDriverVersion)
    return driver, cuda


def read_gpus(pci_class: Callable[[str], int | None]) -> tuple[Gpu, ...]:
    count = _fatal("error getting devices", pynvml.nvmlDeviceGetCount)
    gpus = []
    for index in range(count):
        handle = _fatal("error getting devices", pynvml.nvmlDeviceGetHandleByIndex, index)
        name = _fatal("error getting devices", pynvml.nvmlDeviceGetName, handle)
        if name in _SKIPPED_MODELS:
            continue
        gpus.append(_read_gpu(index, handle, name, pci_class))
    return tuple(gpus)


def _read_gpu(index: int, handle: Any, name: str, pci_class: Callable[[str], int | None]) -> Gpu:
    memory = _optional("memory info for device", pynvml.nvmlDeviceGetMemoryInfo, handle)
    memory_mib = memory.total // MIB if memory is not None else None
    major, minor = _fatal("error getting CUDA compute capability", pynvml.nvmlDeviceGetCudaComputeCapability,
                          handle)
    mig_capable, mig_enabled = _mig_mode(handle)
    pci = _optional("PCI info", pynvml.nvmlDeviceGetPciInfo, handle)
    bus_id = _text(pci.busId) if pci is not None else ""
    mig_devices: tuple[MigDevice, ...] = ()
    mig_error = None
    if mig_enabled:
        try:
            mig_devices = _read_mig_devices(handle, memory_mib)
        except (NVMLError, MigProfileError) as e:
            mig_error = error_name(e) if isinstance(e, NVMLError) else str(e)
    return Gpu(
        index=index,
        uuid=_optional("UUID", pynvml.nvmlDeviceGetUUID, handle) or "",
        name=name,
        memory_mib=memory_mib,
        compute_capability=(major, minor),
        architecture=_ARCHITECTURES.get(_optional("architecture", pynvml.nvmlDeviceGetArchitecture, handle) or 0,
                                        "unknown"),
        brand=_BRANDS.get(_optional("brand", pynvml.nvmlDeviceGetBrand, handle) or 0, "unknown"),
        pci_bus_id=bus_id,
        pci_device_id=pci.pciDeviceId if pci is not None else 0,
        minor_number=_optional("minor number", pynvml.nvmlDeviceGetMinorNumber, handle),
        numa_node=_numa_node(handle),
        pci_class=pci_class(bus_id) if bus_id else None,
        mig_capable=mig_capable,
        mig_enabled=mig_enabled,
        mig_devices=mig_devices,
        mig_error=mig_error,
        virtualization_mode=_VIRTUALIZATION.get(
            _optional("virtualization mode", pynvml.nvmlDeviceGetVirtualizationMode, handle) or 0, "unknown"),
        fabric=_fabric(handle),
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _mig_mode(handle: Any) -> tuple[bool, bool]:
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except NVMLError as e:
        if _unsupported(e):
            return False, False
        raise DiscoveryError(f"error getting MIG mode: {error_name(e)}") from None
    return True, current == pynvml.NVML_DEVICE_MIG_ENABLE


def _numa_node(handle: Any) -> int | None:
    try:
        node = pynvml.nvmlDeviceGetNumaNodeId(handle)
    except NVMLError:
        return None  # not reported on single-socket or older drivers: no NUMA hint
    return int(node) if node >= 0 else None


def _read_mig_devices(parent: Any, parent_memory_mib: int | None) -> tuple[MigDevice, ...]:
    if not parent_memory_mib:
        raise MigProfileError("cannot name MIG profiles: parent memory unknown")
    devices = []
    for mig_index in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(parent)):
        try:
            handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, mig_index)
        except pynvml.NVMLError_NotFound:
            continue
        attrs = pynvml.nvmlDeviceGetAttributes(handle)
        gi_id = pynvml.nvmlDeviceGetGpuInstanceId(handle)
        ci_id = pynvml.nvmlDeviceGetComputeInstanceId(handle)
        gi = pynvml.nvmlDeviceGetGpuInstanceById(parent, gi_id)
        gi_profile = pynvml.nvmlGpuInstanceGetInfo(gi).profileId
        ci = pynvml.nvmlGpuInstanceGetComputeInstanceById(gi, ci_id)
        ci_profile = pynvml.nvmlComputeInstanceGetInfo(ci).profileId
        devices.append(MigDevice(
            index=mig_index,
            uuid=pynvml.nvmlDeviceGetUUID(handle),
            gi_id=gi_id,
            ci_id=ci_id,
            gi_profile_id=gi_profile,
            ci_profile_id=ci_profile,
            profile=profile_name(gi_profile, ci_profile, attrs.memorySizeMB, parent_memory_mib),
            memory_mib=attrs.memorySizeMB,
            multiprocessors=attrs.multiprocessorCount,
            gi_slices=attrs.gpuInstanceSliceCount,
            ci_slices=attrs.computeInstanceSliceCount,
            copy_engines=attrs.sharedCopyEngineCount,
            decoders=attrs.sharedDecoderCount,
            encoders=attrs.sharedEncoderCount,
            jpeg_engines=attrs.sharedJpegCount,
            ofa_engines=attrs.sharedOfaCount,
        ))
    return tuple(devices)


def _fabric(handle: Any) -> Fabric | None:
    info = pynvml.c_nvmlGpuFabricInfo_v2_t()
    try:
        # pynvml hands the argument straight to C: the caller passes the pointer.
        pynvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
    except NVMLError as e:
        if _unsupported(e):
            return None
        raise DiscoveryError(f"error getting GPU fabric info: {error_name(e)}") from None
    cluster = bytes(info.clusterUuid)
    if info.state != _FABRIC_COMPLETED or info.status != pynvml.NVML_SUCCESS or not any(cluster):
        return None
    h = cluster.hex()
    return Fabric(cluster_uuid=f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", clique_id=info.cliqueId)
