"""Read the device model through pynvml. The only module that imports pynvml.

Which NVML failures are fatal, which are warnings, follows upstream GFD v0.20.0
(shared/reference/gfd-labels.md §4); facts upstream does not read (UUID, brand, NUMA…) never
fail a pass. A `NvmlReader` kept across cycles (the daemon) caches what cannot change while NVML
stays initialised: per-GPU facts by GPU UUID, MIG device facts by MIG UUID (new instances get new
UUIDs), and the driver versions. MIG mode, the MIG layout and fabric state are read every time.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pynvml
import structlog

from gfd.config.errors import short
from gfd.discovery.errors import DiscoveryError, GpuLost, NvmlUnavailable
from gfd.discovery.migprofile import MigProfileError, profile_name
from gfd.discovery.sysfs import PciFacts
from gfd.model import MIB, Fabric, Gpu, Link, LostGpu, MigDevice

log = structlog.get_logger("gfd.discovery")

T = TypeVar("T")
K = TypeVar("K")
# Display-only functions upstream skips (go-nvlib device/device.go).
_SKIPPED_MODELS = ("DGX Display", "NVIDIA DGX Display")
_ARCHITECTURES = {2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere", 8: "ada",
                  9: "hopper", 10: "blackwell", 13: "rubin"}
_BRANDS = {0: "unknown", 1: "quadro", 2: "tesla", 3: "nvs", 4: "grid", 5: "geforce", 6: "titan",
           14: "nvidia"}
_VIRTUALIZATION = {0: "none", 1: "passthrough", 2: "vgpu", 3: "host-vgpu", 4: "host-vsga"}
_FABRIC_COMPLETED = 3
_PCIE_LEVELS = {0: "internal", 10: "single", 20: "multiple", 30: "hostbridge", 40: "node", 50: "system"}
_MAX_NVLINKS = 18  # upstream caps the links counted per GPU
_DRIVER_VERSION = re.compile(r"[0-9]{1,6}\.[0-9]{1,6}(\.[0-9]{1,6})?")

NVMLError = pynvml.NVMLError  # pynvml is untyped: annotations below use Exception. Never leaves gfd/discovery.


def translated(e: Exception, call: str, what: str = "", kind: type[DiscoveryError] = DiscoveryError) -> DiscoveryError:
    """NVML's error as ours: the message `what: ERROR_NAME` (the name alone without `what`), with the call,
    the name and the number kept as data. Raise it `from e`."""
    name = error_name(e)
    return kind(f"{what}: {name}" if what else name, call, name, getattr(e, "value", None))


# Where a driver root keeps libnvidia-ml.so.1 (upstream's lookup under --driver-root-ctr-path).
LIBRARY_DIRS = ("usr/lib64", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib64",
                "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu")
LIBRARY = "libnvidia-ml.so.1"


def mounted_driver_root(driver_root: str) -> bool:
    """A driver root other than the container's own `/`, where upstream looks for the library first."""
    return bool(driver_root) and os.path.realpath(driver_root) != "/"


def locate_library(driver_root: str) -> str | None:
    """The driver's NVML under a mounted driver root (symlinks resolved), or None for the ordinary search."""
    if not mounted_driver_root(driver_root):
        return None
    for directory in LIBRARY_DIRS:
        path = os.path.join(driver_root, directory, LIBRARY)
        if os.path.exists(path):
            return os.path.realpath(path)
    return None


def init(driver_root: str = "") -> str:
    """nvmlInit, loading the driver root's library first when there is one (a driver container's).
    Returns which library was loaded, for the log."""
    path = locate_library(driver_root)
    if path is not None and pynvml.nvmlLib is None:
        try:
            pynvml.nvmlLib = ctypes.CDLL(path)  # pynvml loads by name only when this is still None
        except OSError as e:
            log.warning("cannot load NVML from the driver root; using the ordinary search", path=path,
                        error=str(e))
    try:
        pynvml.nvmlInit()
    except NVMLError as e:
        raise translated(e, "nvmlInit", kind=NvmlUnavailable) from e
    return path if path is not None else f"{LIBRARY} (ordinary library search)"


def shutdown() -> None:
    try:
        pynvml.nvmlShutdown()
    except NVMLError as e:
        log.warning("error shutting down NVML", error=str(e))


COMPUTE_MODES = {"DEFAULT": pynvml.NVML_COMPUTEMODE_DEFAULT,
                 "EXCLUSIVE_PROCESS": pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS}


def gpu_handle(index: int) -> Any:
    """The NVML handle of the GPU at `index`, for the callers outside a read (telemetry, MPS, doctor):
    GpuLost when it fell off the bus, as the reader reports it; DiscoveryError for any other answer."""
    try:
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError_GpuIsLost as e:
        raise GpuLost("nvmlDeviceGetHandleByIndex", e.value) from e
    except NVMLError as e:
        raise translated(e, "nvmlDeviceGetHandleByIndex", f"error getting the handle of GPU {index}") from e


def set_compute_mode(index: int, mode: str) -> None:
    """nvmlDeviceSetComputeMode on the GPU at `index` (what `nvidia-smi -i <gpu> -c <mode>` does);
    DiscoveryError naming NVML's answer (NO_PERMISSION without root, NOT_SUPPORTED, ...)."""
    what = f"error setting compute mode {mode} on GPU {index}"
    try:
        handle = gpu_handle(index)
    except DiscoveryError as e:
        raise DiscoveryError(f"{what}: {e.error}", e.call, e.error, e.code) from e
    try:
        pynvml.nvmlDeviceSetComputeMode(handle, COMPUTE_MODES[mode])
    except NVMLError as e:
        raise translated(e, "nvmlDeviceSetComputeMode", what) from e


@dataclasses.dataclass(frozen=True)
class PendingState:
    """What a GPU waits for (a reset) or has given up on; None where the GPU cannot say."""

    mig_current: int | None
    mig_pending: int | None
    rows_pending: bool | None
    remap_failed: bool | None


def pending_states(gpus: Iterable[Gpu]) -> dict[int, PendingState]:
    """For `doctor`, by GPU index: a MIG mode change waiting for a GPU reset, row remapping pending or
    failed. A GPU that does not answer is left out (the lost-GPU check says what is wrong with it)."""
    states = {}
    for gpu in gpus:
        try:
            states[gpu.index] = _pending_state(gpu_handle(gpu.index))
        except DiscoveryError:
            continue
    return states


def _pending_state(handle: Any) -> PendingState:
    try:
        current, pending = pynvml.nvmlDeviceGetMigMode(handle)
    except NVMLError:
        current = pending = None
    rows: bool | None = None
    failed: bool | None = None
    try:
        _corr, _unc, rows_pending, failure = pynvml.nvmlDeviceGetRemappedRows(handle)
        rows, failed = bool(rows_pending), bool(failure)
    except NVMLError:
        pass  # not an HBM GPU (no row remapping), or too old a driver
    return PendingState(current, pending, rows, failed)


@functools.cache
def _error_names() -> dict[object, str]:
    """Built on the first error, not at import: the oneshot's start-up never pays for it."""
    return {v: k[5:] for k, v in vars(pynvml).items() if k.startswith("NVML_ERROR_") and isinstance(v, int)}


def error_name(e: Exception) -> str:
    """Upstream prints NVML errors by their symbolic name (e.g. ERROR_LIBRARY_NOT_FOUND)."""
    value = getattr(e, "value", None)
    return _error_names().get(value, f"ERROR_{value}")


def _unsupported(e: Exception) -> bool:
    return isinstance(e, pynvml.NVMLError_NotSupported | pynvml.NVMLError_FunctionNotFound)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlReader:
    def __init__(self) -> None:
        self._static: dict[str, Gpu] = {}
        self._migs: dict[str, MigDevice] = {}
        self._versions: tuple[str, int] | None = None
        self._links: dict[tuple[str, ...], tuple[Link, ...]] = {}
        self.device_count = 0  # NVML's count in the last read, skipped and lost GPUs included
        self._uuid_by_index: dict[int, str] = {}  # names a GPU that is lost later
        # Per product name: driver profile ID -> NVML profile index, for GPU and compute instances.
        self._gi_profiles: dict[str, dict[int, int]] = {}
        self._ci_profiles: dict[tuple[str, int], dict[int, int]] = {}
        # (NVML function, error name) of every failed query in the last read, fatal or not.
        self.errors: list[tuple[str, str]] = []

    def _failed(self, call: str, e: Exception) -> None:
        """Every failed query: recorded (for metrics); GpuLost when the GPU is lost, whatever the call."""
        self.errors.append((call, error_name(e)))
        if isinstance(e, pynvml.NVMLError_GpuIsLost):
            raise GpuLost(call, e.value) from e

    def _fatal(self, what: str, call: Callable[..., T], *args: Any) -> T:
        try:
            return call(*args)
        except NVMLError as e:
            self._failed(call.__name__, e)
            raise translated(e, call.__name__, what) from e

    def _recorded(self, call: Callable[..., T], *args: Any) -> T:
        """Call and, on an NVML error, record which function failed before re-raising."""
        try:
            return call(*args)
        except NVMLError as e:
            self._failed(call.__name__, e)
            raise

    def _optional(self, what: str, call: Callable[..., T], *args: Any) -> T | None:
        try:
            return call(*args)
        except NVMLError as e:
            self._failed(call.__name__, e)
            log.warning(f"Ignoring error getting {what}", error=error_name(e))
            return None

    def read_versions(self) -> tuple[str, int]:
        """Validated where read: a driver version is 2 or 3 groups of digits, a CUDA version is >= 0."""
        if self._versions is None:
            driver = self._fatal("error getting driver version", pynvml.nvmlSystemGetDriverVersion)
            cuda = self._fatal("error getting CUDA driver version", pynvml.nvmlSystemGetCudaDriverVersion)
            if not _DRIVER_VERSION.fullmatch(driver):
                raise DiscoveryError(f"error getting driver version: {short(driver)} does not match format "
                                     '"X.Y[.Z]" of digits', "nvmlSystemGetDriverVersion")
            if not 0 <= cuda < 1_000_000:
                raise DiscoveryError(f"error getting CUDA driver version: {cuda} is not a CUDA version",
                                     "nvmlSystemGetCudaDriverVersion")
            self._versions = (driver, cuda)
        return self._versions

    def read_gpus(self, pci: PciFacts) -> tuple[tuple[Gpu, ...], tuple[LostGpu, ...]]:
        """The GPUs that answer, and those that answered NVML_ERROR_GPU_IS_LOST to any query."""
        self.errors = []
        count = self.device_count = self._fatal("error getting devices", pynvml.nvmlDeviceGetCount)
        gpus: list[Gpu] = []
        lost: list[LostGpu] = []
        for index in range(count):
            try:
                gpu = self.read_one(index, pci)
            except GpuLost as e:
                lost.append(LostGpu(index, e.uuid or self._uuid_by_index.get(index, ""), e.call))
                continue
            if gpu is not None:
                self._uuid_by_index[index] = gpu.uuid
                gpus.append(gpu)
        return tuple(gpus), tuple(lost)

    def read_one(self, index: int, pci: PciFacts) -> Gpu | None:
        """One GPU, or None for a display-only model upstream skips; GpuLost when it is lost."""
        handle = self._fatal("error getting devices", pynvml.nvmlDeviceGetHandleByIndex, index)
        uuid = self._optional("UUID", pynvml.nvmlDeviceGetUUID, handle) or ""
        try:
            return self._read_known(index, handle, uuid, pci)
        except GpuLost as e:
            e.uuid = uuid
            raise

    def _read_known(self, index: int, handle: Any, uuid: str, pci: PciFacts) -> Gpu | None:
        static = self._static.get(uuid) if uuid else None
        if static is None:
            name = self._fatal("error getting devices", pynvml.nvmlDeviceGetName, handle)
            if name in _SKIPPED_MODELS:
                return None
            errors_before = len(self.errors)
            static = self._read_static(index, handle, uuid, name, pci)
            if uuid and len(self.errors) == errors_before:
                self._static[uuid] = static  # only complete reads are kept: a failed query is retried
        return self._read_dynamic(static, index, handle)

    def read_links(self, gpus: tuple[Gpu, ...]) -> tuple[Link, ...]:
        """NVLink counts and PCIe levels for every GPU pair; cached while the same GPUs are present."""
        key = tuple(g.uuid for g in gpus)
        try:
            return self._read_links(key, gpus)
        except GpuLost:
            return ()  # a GPU fell off the bus since read_gpus: no topology this time, retried next read

    def _read_links(self, key: tuple[str, ...], gpus: tuple[Gpu, ...]) -> tuple[Link, ...]:
        if key not in self._links:
            handles = [self._fatal("error getting devices", pynvml.nvmlDeviceGetHandleByIndex, g.index) for g in gpus]
            by_bus = {g.pci_bus_id.lower(): g.index for g in gpus if g.pci_bus_id}
            nvlinks = [self._nvlink_peers(h, by_bus) for h in handles]
            links = []
            for i, a in enumerate(gpus):
                for j in range(i + 1, len(gpus)):
                    level = self._fatal("error getting topology", pynvml.nvmlDeviceGetTopologyCommonAncestor,
                                        handles[i], handles[j])
                    count = min(_MAX_NVLINKS, nvlinks[i].count(gpus[j].index))
                    links.append(Link(a.index, gpus[j].index, count, _PCIE_LEVELS.get(level, "system")))
            self._links[key] = tuple(links)
        return self._links[key]

    def _nvlink_peers(self, handle: Any, by_bus: dict[str, int]) -> list[int]:
        """GPU indices at the far end of each active NVLink (NVSwitch ends are not GPUs and drop out)."""
        peers = []
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            try:
                if pynvml.nvmlDeviceGetNvLinkState(handle, link) != pynvml.NVML_FEATURE_ENABLED:
                    continue
                remote = _text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId).lower()
            except NVMLError:
                break  # no such link (or no NVLink at all): the link list ends here
            if remote in by_bus:
                peers.append(by_bus[remote])
        return peers

    def _read_static(self, index: int, handle: Any, uuid: str, name: str, pci_facts: PciFacts) -> Gpu:
        memory = self._optional("memory info for device", pynvml.nvmlDeviceGetMemoryInfo, handle)
        major, minor = self._fatal("error getting CUDA compute capability",
                                   pynvml.nvmlDeviceGetCudaComputeCapability, handle)
        pci = self._optional("PCI info", pynvml.nvmlDeviceGetPciInfo, handle)
        bus_id = _text(pci.busId) if pci is not None else ""
        return Gpu(
            index=index,
            uuid=uuid,
            name=name,
            memory_mib=memory.total // MIB if memory is not None else None,
            compute_capability=(major, minor),
            architecture=_ARCHITECTURES.get(
                self._optional("architecture", pynvml.nvmlDeviceGetArchitecture, handle) or 0, "unknown"),
            brand=_BRANDS.get(self._optional("brand", pynvml.nvmlDeviceGetBrand, handle) or 0, "unknown"),
            pci_bus_id=bus_id,
            pci_device_id=pci.pciDeviceId if pci is not None else 0,
            minor_number=self._optional("minor number", pynvml.nvmlDeviceGetMinorNumber, handle),
            numa_node=pci_facts.numa_node(bus_id) if bus_id else None,
            pci_class=pci_facts.pci_class(bus_id) if bus_id else None,
            mig_capable=False,
            mig_enabled=False,
            virtualization_mode=_VIRTUALIZATION.get(
                self._optional("virtualization mode", pynvml.nvmlDeviceGetVirtualizationMode, handle) or 0,
                "unknown"),
        )

    def _read_dynamic(self, gpu: Gpu, index: int, handle: Any) -> Gpu:
        mig_capable, mig_enabled = self._mig_mode(handle)
        mig_devices: tuple[MigDevice, ...] = ()
        mig_error = None
        if mig_enabled:
            try:
                mig_devices = self._read_mig_devices(handle, gpu.name, gpu.memory_mib)
            except NVMLError as e:
                mig_error = error_name(e)
            except MigProfileError as e:
                mig_error = str(e)
        return dataclasses.replace(gpu, index=index, mig_capable=mig_capable, mig_enabled=mig_enabled,
                                   mig_devices=mig_devices, mig_error=mig_error, fabric=self._fabric(handle))

    def _mig_mode(self, handle: Any) -> tuple[bool, bool]:
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        except NVMLError as e:
            if _unsupported(e):
                return False, False
            self._failed("nvmlDeviceGetMigMode", e)
            raise translated(e, "nvmlDeviceGetMigMode", "error getting MIG mode") from e
        return True, current == pynvml.NVML_DEVICE_MIG_ENABLE

    def _read_mig_devices(self, parent: Any, product: str, parent_memory_mib: int | None) -> tuple[MigDevice, ...]:
        if not parent_memory_mib:
            raise MigProfileError("cannot name MIG profiles: parent memory unknown")
        devices = []
        call = self._recorded
        for mig_index in range(call(pynvml.nvmlDeviceGetMaxMigDeviceCount, parent)):
            try:
                handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, mig_index)
            except pynvml.NVMLError_NotFound:
                continue  # an empty MIG slot
            except NVMLError as e:
                self._failed("nvmlDeviceGetMigDeviceHandleByIndex", e)
                raise
            uuid = call(pynvml.nvmlDeviceGetUUID, handle)
            cached = self._migs.get(uuid)
            if cached is None:
                cached = self._migs[uuid] = self._read_mig_device(parent, product, handle, mig_index, uuid,
                                                                  parent_memory_mib)
            devices.append(cached if cached.index == mig_index else dataclasses.replace(cached, index=mig_index))
        return tuple(devices)

    def _read_mig_device(self, parent: Any, product: str, handle: Any, index: int, uuid: str,
                         parent_memory_mib: int) -> MigDevice:
        call = self._recorded
        attrs = call(pynvml.nvmlDeviceGetAttributes, handle)
        gi_id = call(pynvml.nvmlDeviceGetGpuInstanceId, handle)
        ci_id = call(pynvml.nvmlDeviceGetComputeInstanceId, handle)
        gi = call(pynvml.nvmlDeviceGetGpuInstanceById, parent, gi_id)
        gi_info = call(pynvml.nvmlGpuInstanceGetInfo, gi)
        gi_profile_id = gi_info.profileId
        gi_profile = self._gi_profile_index(parent, product, gi_profile_id)
        ci = call(pynvml.nvmlGpuInstanceGetComputeInstanceById, gi, ci_id)
        ci_profile_id = call(pynvml.nvmlComputeInstanceGetInfo, ci).profileId
        ci_profile = self._ci_profile_index(gi, (product, gi_profile), ci_profile_id)
        return MigDevice(
            index=index,
            uuid=uuid,
            gi_id=gi_id,
            ci_id=ci_id,
            gi_profile_id=gi_profile_id,
            ci_profile_id=ci_profile_id,
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
            # In memory slices; a size of 0 is a driver that did not say (the DRA driver then names the device
            # by its instance ids).
            placement=(gi_info.placement.start, gi_info.placement.size) if gi_info.placement.size else None,
        )

    def _gi_profile_index(self, parent: Any, product: str, profile_id: int) -> int:
        """The NVML_GPU_INSTANCE_PROFILE_* index whose profile info carries the driver's `profile_id`
        (go-nvlib's lookup: ask each index, compare `.id`); a product's table is the same on each of its
        GPUs, so it is cached per product name."""
        infos = ((index, self._profile_info(pynvml.nvmlDeviceGetGpuInstanceProfileInfo, parent, index))
                 for index in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT))
        return _lookup(self._gi_profiles, product, infos, profile_id, "GPU Instance")

    def _ci_profile_index(self, gi: Any, key: tuple[str, int], profile_id: int) -> int:
        """The same lookup for compute-instance profiles of one GPU-instance profile."""
        infos = ((index, self._profile_info(pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo, gi, index, engines))
                 for index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT)
                 for engines in range(pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT))
        return _lookup(self._ci_profiles, key, infos, profile_id, "Compute Instance")

    def _profile_info(self, call: Callable[..., Any], *args: Any) -> Any:
        """Profile info (v1 struct, as go-nvlib); None for a profile this GPU does not offer."""
        try:
            return call(*args, version=1)
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
            return None
        except NVMLError as e:
            self._failed(call.__name__, e)
            raise

    def _fabric(self, handle: Any) -> Fabric | None:
        info = pynvml.c_nvmlGpuFabricInfo_v2_t()
        try:
            # pynvml hands the argument straight to C: the caller passes the pointer.
            pynvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
        except NVMLError as e:
            if _unsupported(e):
                return None
            self._failed("nvmlDeviceGetGpuFabricInfoV", e)
            raise translated(e, "nvmlDeviceGetGpuFabricInfoV", "error getting GPU fabric info") from e
        cluster = bytes(info.clusterUuid)
        if info.state != _FABRIC_COMPLETED or info.status != pynvml.NVML_SUCCESS or not any(cluster):
            return None
        h = cluster.hex()
        return Fabric(cluster_uuid=f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", clique_id=info.cliqueId)


def _lookup(tables: dict[K, dict[int, int]], key: K, infos: Iterable[tuple[int, Any]], profile_id: int,
            kind: str) -> int:
    """Profile ID -> index from (index, profile info or None) pairs; the table is built once per key, and
    only when needed (the pairs are a generator of NVML queries)."""
    table = tables.get(key)
    if table is None:
        table = {}
        for index, info in infos:  # a query failing here leaves nothing cached: the next read asks again
            if info is not None:
                table.setdefault(info.id, index)
        tables[key] = table
    if profile_id not in table:
        raise MigProfileError(f"invalid {kind} Profile ID: {profile_id}")
    return table[profile_id]
