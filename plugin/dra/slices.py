"""The node's ResourceSlices as a pure function of (device model, consumable shares, device health, PCIe roots):
the devices NVIDIA's gpu-kubelet-plugin publishes on the same node, with its names, attribute names, types and
values, and capacities, so ResourceClaims and CEL selectors written for it select the same devices here.

- A GPU without MIG is one device `gpu-<minor>` (type `gpu`), capacity `memory`.
- A MIG-enabled GPU is published as the MIG devices of its current layout (type `mig`), named as NVIDIA names
  them, `gpu-<minor>-mig-<profile>-<GI profile id>-<placement start>`; the GPU itself is not (as NVIDIA's static
  MIG: it cannot run work outside its MIG devices). Each MIG device consumes counters of its parent's counter set
  `gpu-<minor>-counter-set` (partitionable devices, KEP 4815, NVIDIA's dynamic-MIG names): a device that takes
  the whole set, as a full GPU does in NVIDIA's dynamic-MIG shape, can never be allocated together with one of
  them.
- Unhealthy devices carry NVIDIA's device taints; shareable devices (consumable shares) NVIDIA's request policies,
  and, where shares are enforced by MPS, our `compute` capacity (plugin/dra/sharing.py).
- Our own attributes are under `gfd-py.github.io/`, a domain NVIDIA's names (unqualified: gpu.nvidia.com) cannot
  collide with.

Slices are plain dicts in the API's JSON form. Kubernetes >= 1.35 takes counter sets and devices in separate
slices of one pool; the limits (devices per slice, counter sets per slice) are the API server's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gfd.discovery.sysfs import sysfs_address
from gfd.model import MIB, DeviceModel, Gpu, MigDevice
from plugin.dra.config import DRIVER_NAME
from plugin.dra.devices import allocatable_devices, minor
from plugin.dra.sharing import COMPUTE, MEMORY, NOT_SHARED, ConsumableShares, quantity
from plugin.dra.taints import HEALTHY, DeviceHealth

STANDARD = "resource.kubernetes.io"
OURS = "gfd-py.github.io"
# k8s.io/api/resource/v1 limits.
MAX_DEVICES = 128
MAX_DEVICES_ADVANCED = 64  # when any device of the slice has taints or consumes counters
MAX_COUNTER_SETS = 8
# go-nvlib's names (device.GetArchitectureAsString, GetBrandAsString) for the model's.
ARCHITECTURES = {"kepler": "Kepler", "maxwell": "Maxwell", "pascal": "Pascal", "volta": "Volta", "turing": "Turing",
                 "ampere": "Ampere", "ada": "Ada Lovelace", "hopper": "Hopper", "blackwell": "Blackwell",
                 "rubin": "Rubin"}
BRANDS = {"quadro": "Quadro", "tesla": "Tesla", "nvs": "NVS", "grid": "Grid", "geforce": "GeForce", "titan": "Titan",
          "nvidia": "Nvidia"}
# MIG capacities (NVIDIA's names) and the model's field for each; counters use the dashed forms.
MIG_CAPACITIES = (("multiprocessors", "multiprocessors"), ("copyEngines", "copy_engines"), ("decoders", "decoders"),
                  ("encoders", "encoders"), ("jpegEngines", "jpeg_engines"), ("ofaEngines", "ofa_engines"))


@dataclass(frozen=True)
class Pool:
    """The node's pool: the content of each ResourceSlice (`devices` or `sharedCounters`, with driver and node);
    `specs` adds the pool's name, generation and slice count, which the writer owns."""

    name: str
    contents: tuple[dict[str, Any], ...]

    def specs(self, generation: int) -> list[dict[str, Any]]:
        pool = {"name": self.name, "generation": generation, "resourceSliceCount": len(self.contents)}
        return [{**content, "pool": pool} for content in self.contents]


def pool(model: DeviceModel, node_name: str, shares: ConsumableShares = NOT_SHARED,
         health: DeviceHealth = HEALTHY, pcie_roots: Mapping[str, str] | None = None) -> Pool:
    """The pool NVIDIA's driver publishes for `model` on node `node_name` (pool name = node name).
    `pcie_roots`: PCIe root complex by NVML bus id (plugin.dra.topology), where the host tells."""
    common = _Common(model, pcie_roots or {})
    devices: list[dict[str, Any]] = []
    counter_sets: dict[str, dict[str, Any]] = {}
    for device in allocatable_devices(model):
        if device.mig is None:
            devices.append(_gpu_device(device.name, device.gpu, common, shares, health))
            continue
        devices.append(_mig_device(device.name, device.gpu, device.mig, common, shares, health))
        counter_sets.setdefault(device.gpu.uuid, _counter_set(device.gpu))
    base = {"driver": DRIVER_NAME, "nodeName": node_name}
    per_slice = MAX_DEVICES_ADVANCED if counter_sets or any("taints" in d for d in devices) else MAX_DEVICES
    sets = list(counter_sets.values())
    contents = [{**base, "sharedCounters": sets[i:i + MAX_COUNTER_SETS]} for i in range(0, len(sets), MAX_COUNTER_SETS)]
    contents += [{**base, "devices": devices[i:i + per_slice]} for i in range(0, len(devices), per_slice)]
    return Pool(node_name, tuple(contents))


def semver(version: str) -> str | None:
    """A dotted number as a semantic version, as Masterminds/semver reads it (missing parts are 0, leading
    zeros dropped: 550.163.01 -> 550.163.1); None when it is not one."""
    parts = version.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    return ".".join(str(int(p)) for p in (*parts, "0", "0")[:3])


def counter_set_name(gpu: Gpu) -> str:
    return f"gpu-{minor(gpu)}-counter-set"


@dataclass(frozen=True)
class _Common:
    """What every device of the node shares: the versions, and the host facts by bus id."""

    model: DeviceModel
    pcie_roots: Mapping[str, str]

    def attributes(self, gpu: Gpu) -> dict[str, Any]:
        cc = semver("{}.{}".format(*gpu.compute_capability))
        cuda = self.model.cuda_driver_version
        versions = {"cudaComputeCapability": cc, "driverVersion": semver(self.model.driver_version),
                    "cudaDriverVersion": semver(f"{cuda // 1000}.{cuda % 1000 // 10}")}
        attributes: dict[str, Any] = {
            "productName": {"string": gpu.name},
            "brand": {"string": BRANDS.get(gpu.brand, "Unknown")},
            "architecture": {"string": ARCHITECTURES.get(gpu.architecture, "Unknown")},
            **{name: {"version": v} for name, v in versions.items() if v is not None},
        }
        bus_id = _bus_id(gpu.pci_bus_id)
        if bus_id:
            attributes[f"{STANDARD}/pciBusID"] = {"string": bus_id}
        if gpu.pci_bus_id in self.pcie_roots:
            attributes[f"{STANDARD}/pcieRoot"] = {"string": self.pcie_roots[gpu.pci_bus_id]}
        if gpu.numa_node is not None:
            attributes[f"{STANDARD}/numaNode"] = {"int": gpu.numa_node}
        return attributes


def _bus_id(nvml_bus_id: str) -> str:
    """The bus id as go-nvlib spells it (lower case, 4-digit domain), "" when NVML gave none usable."""
    try:
        return sysfs_address(nvml_bus_id)
    except ValueError:
        return ""


def _gpu_device(name: str, gpu: Gpu, common: _Common, shares: ConsumableShares, health: DeviceHealth) -> dict[str, Any]:
    attributes = {"type": {"string": "gpu"}, "uuid": {"string": gpu.uuid}, **common.attributes(gpu),
                  f"{OURS}/index": {"int": gpu.index}}
    if gpu.fabric is not None:
        attributes[f"{OURS}/clique"] = {"string": f"{gpu.fabric.cluster_uuid}.{gpu.fabric.clique_id}"}
    memory = None if gpu.memory_mib is None else gpu.memory_mib * MIB
    return _finish({"name": name, "attributes": attributes, "capacity": {}}, memory, shares,
                   health.as_api(gpu.uuid), mig=False)


def _mig_device(name: str, gpu: Gpu, mig: MigDevice, common: _Common, shares: ConsumableShares,
                health: DeviceHealth) -> dict[str, Any]:
    attributes = {"type": {"string": "mig"}, "uuid": {"string": mig.uuid}, "parentUUID": {"string": gpu.uuid},
                  "profile": {"string": mig.profile}, **common.attributes(gpu),
                  f"{OURS}/parentIndex": {"int": gpu.index}}
    capacity = {name: {"value": str(getattr(mig, field))} for name, field in MIG_CAPACITIES}
    capacity |= {f"memorySlice{i}": {"value": "1"} for i in _memory_slices(mig)}
    counters = {name: {"value": _counter_text(name, value)} for name, value in _counters(mig).items()}
    result = {"name": name, "attributes": attributes, "capacity": capacity,
              "consumesCounters": [{"counterSet": counter_set_name(gpu), "counters": counters}]}
    return _finish(result, mig.memory_mib * MIB, shares, health.as_api(gpu.uuid, mig.gi_id, mig.ci_id), mig=True)


def _finish(device: dict[str, Any], memory: int | None, shares: ConsumableShares,
            taints: list[dict[str, Any]], mig: bool) -> dict[str, Any]:
    """What any kind of device has: its memory (shaped for consumable shares, where the device is shared) and its
    taints."""
    shareable = shares.shareable(mig, memory is not None)
    if shareable:
        device["allowMultipleAllocations"] = True
        if shares.enforced:
            device["attributes"][f"{OURS}/shareEnforcement"] = {"string": shares.enforcement}
    if memory is not None:
        device["capacity"][MEMORY] = shares.memory_capacity(memory) if shareable else {"value": quantity(memory)}
        # NVIDIA adds shares only where a device has memory; compute goes with enforced memory shares.
        for name, extra in (("shares", shares.shares_capacity()), (COMPUTE, shares.compute_capacity())):
            if shareable and extra is not None:
                device["capacity"][name] = extra
    if not device["capacity"]:
        del device["capacity"]
    if taints:
        device["taints"] = taints
    return device


def _memory_slices(mig: MigDevice) -> range:
    return range(mig.placement[0], mig.placement[0] + mig.placement[1]) if mig.placement is not None else range(0)


def _counters(mig: MigDevice) -> dict[str, int]:
    """What the MIG device takes from its GPU: its engines and memory, and its memory slices when known."""
    counters = {_dashed(name): getattr(mig, field) for name, field in MIG_CAPACITIES}
    counters[MEMORY] = mig.memory_mib * MIB
    counters |= {f"memory-slice-{i}": 1 for i in _memory_slices(mig)}
    return counters


def _counter_text(name: str, value: int) -> str:
    return quantity(value) if name == MEMORY else str(value)


def _counter_set(gpu: Gpu) -> dict[str, Any]:
    """The GPU as its layout divides it: the sum of what its MIG devices take, so every device of the layout
    can be allocated at once and no allocation can be counted twice."""
    totals: dict[str, int] = {}
    for mig in gpu.mig_devices:
        for name, value in _counters(mig).items():
            totals[name] = totals.get(name, 0) + value
    return {"name": counter_set_name(gpu),
            "counters": {name: {"value": _counter_text(name, v)} for name, v in totals.items()}}


def _dashed(name: str) -> str:
    """A camelCase capacity name as NVIDIA's counter name (copyEngines -> copy-engines)."""
    return re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", name).lower()
