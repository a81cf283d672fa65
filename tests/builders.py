"""Device models built directly, for the tests of pure functions (resources, allocation, preference):
A100-40GB GPUs with optional MIG devices, a model around them, and a sharing config."""

from __future__ import annotations

from gfd.config import ReplicatedResource, ReplicatedResources, Sharing
from gfd.model import DeviceModel, Gpu, MigDevice


def gpu(index: int, *migs: MigDevice) -> Gpu:
    return Gpu(index=index, uuid=f"GPU-{index:04d}", name="NVIDIA A100-SXM4-40GB", memory_mib=40960,
               compute_capability=(8, 0), architecture="ampere", brand="nvidia", pci_bus_id=f"0000:{index:02x}:00.0",
               pci_device_id=0, minor_number=index, numa_node=index // 4, pci_class=0x030200,
               mig_capable=True, mig_enabled=bool(migs), mig_devices=migs)


def mig(index: int, profile: str, gi: int, ci: int = 0, gi_slices: int = 1, ci_slices: int = 1) -> MigDevice:
    return MigDevice(index=index, uuid=f"MIG-{profile}-{gi}-{index}", gi_id=gi, ci_id=ci, gi_profile_id=0,
                     ci_profile_id=0, profile=profile, memory_mib=4864, multiprocessors=14, gi_slices=gi_slices,
                     ci_slices=ci_slices, copy_engines=1, decoders=0, encoders=0, jpeg_engines=0, ofa_engines=0)


def model(*gpus: Gpu) -> DeviceModel:
    return DeviceModel(driver_version="550.54.15", cuda_driver_version=12040, gpus=gpus, machine_type=None,
                       vgpu=None)


def shared(replicas: int, kind: str = "ts", fail: bool = False) -> Sharing:
    entries = ReplicatedResources((ReplicatedResource("nvidia.com/gpu", replicas),), False, fail)
    return Sharing(mps=entries) if kind == "mps" else Sharing(time_slicing=entries)
