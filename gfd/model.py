"""The device model: one immutable snapshot of a node's GPUs, read once per cycle.

Everything downstream (labelers, the device plugin) reads this and nothing else; only
`gfd.discovery` builds it. Facts that upstream treats as optional (a failed memory query,
an unreadable PCI class) are `None` here, so each consumer applies upstream's rule.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20  # bytes in a MiB, the unit of the model's memory sizes (`memory_mib`)


@dataclass(frozen=True)
class MigDevice:
    """A MIG device (GPU instance + compute instance) on a MIG-enabled GPU."""

    index: int
    uuid: str
    gi_id: int
    ci_id: int
    gi_profile_id: int
    ci_profile_id: int
    # go-nvlib profile string with its original '+' (e.g. "1g.5gb+me"); labels use `label_profile`.
    profile: str
    memory_mib: int
    multiprocessors: int
    gi_slices: int
    ci_slices: int
    copy_engines: int
    decoders: int
    encoders: int
    jpeg_engines: int
    ofa_engines: int
    # The GPU instance's placement in memory slices (start, size): NVML's GPU-instance info; None when not read.
    placement: tuple[int, int] | None = None

    @property
    def label_profile(self) -> str:
        return self.profile.replace("+", ".")


@dataclass(frozen=True)
class Fabric:
    """GPU fabric (NVLink domain / IMEX) membership, only for fabric-attached GPUs."""

    cluster_uuid: str
    clique_id: int


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_mib: int | None
    compute_capability: tuple[int, int]
    architecture: str
    brand: str
    pci_bus_id: str
    pci_device_id: int
    minor_number: int | None
    numa_node: int | None
    pci_class: int | None
    mig_capable: bool
    mig_enabled: bool
    mig_devices: tuple[MigDevice, ...] = ()
    # Upstream reads the MIG layout only for the single/mixed strategies and fails the pass then;
    # we always read it and keep the error so the labelers can apply that rule.
    mig_error: str | None = None
    virtualization_mode: str = "none"
    fabric: Fabric | None = None


@dataclass(frozen=True)
class LostGpu:
    """A GPU that answered NVML_ERROR_GPU_IS_LOST. What is known of it comes from an earlier read in this
    process or from the kernel driver's /proc entry; "" / None when neither knows."""

    index: int
    uuid: str
    call: str  # the NVML function that reported it lost
    pci_bus_id: str = ""
    minor_number: int | None = None


@dataclass(frozen=True)
class Link:
    """How two GPUs (by index) are connected: active NVLinks between them and their PCIe relationship.

    `pcie` is NVML's common-ancestor level: internal, single, multiple, hostbridge, node or system.
    """

    a: int
    b: int
    nvlinks: int
    pcie: str


@dataclass(frozen=True)
class Vgpu:
    """Result of the PCI scan for vGPU host-driver signatures (upstream internal/vgpu)."""

    present: bool
    host_driver_version: str | None = None
    host_driver_branch: str | None = None


@dataclass(frozen=True)
class DeviceModel:
    driver_version: str
    cuda_driver_version: int
    gpus: tuple[Gpu, ...]
    # Raw machine-type file content; None when the path is empty or unreadable.
    machine_type: str | None
    # None when the PCI scan failed (upstream then emits no vgpu labels at all).
    vgpu: Vgpu | None
    # GPU pairs (a < b), read only when asked for (the device plugin's preferred allocation).
    links: tuple[Link, ...] = ()
    # GPUs that fell off the bus: not in `gpus`, so labels describe the GPUs that can be used.
    lost_gpus: tuple[LostGpu, ...] = ()

    @property
    def mig_devices(self) -> tuple[MigDevice, ...]:
        return tuple(m for g in self.gpus for m in g.mig_devices)
