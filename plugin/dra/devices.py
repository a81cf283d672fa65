"""Which devices the node offers through DRA, by the names NVIDIA's driver gives them: one per GPU without MIG
(`gpu-<minor>`), one per MIG device of a MIG-enabled GPU's current layout (the GPU itself is not offered: it
runs no work outside its MIG devices). The slices publish them and prepare looks them up by name."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gfd.model import DeviceModel, Gpu, MigDevice


@dataclass(frozen=True)
class Allocatable:
    """A device by its name in the pool: a whole GPU, or one MIG device (`mig`) of `gpu`."""

    name: str
    gpu: Gpu
    mig: MigDevice | None = None

    @property
    def type(self) -> str:
        return "gpu" if self.mig is None else "mig"

    @property
    def instance(self) -> tuple[int, ...]:
        """(GI id, CI id) of a MIG device, () for a whole GPU: with the GPU's UUID, its unit of health."""
        return () if self.mig is None else (self.mig.gi_id, self.mig.ci_id)


def minor(gpu: Gpu) -> int:
    """The device-node minor that names a GPU's devices (its index when NVML did not say)."""
    return gpu.minor_number if gpu.minor_number is not None else gpu.index


def name_part(text: str) -> str:
    """Text as a part of a device name (a DNS label): lower case, anything else than [a-z0-9-] a dash."""
    return re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")


def mig_device_name(parent_minor: int, mig: MigDevice) -> str:
    """NVIDIA's name (profile without dots, GI profile id, placement start); a device whose placement was not
    read is named by its GPU-instance and compute-instance ids instead."""
    profile = name_part(mig.profile.replace(".", ""))
    suffix = f"{mig.gi_profile_id}-{mig.placement[0]}" if mig.placement is not None else f"{mig.gi_id}-{mig.ci_id}"
    return f"gpu-{parent_minor}-mig-{profile}-{suffix}"


def allocatable_devices(model: DeviceModel) -> tuple[Allocatable, ...]:
    """The node's devices, by GPU minor, a MIG GPU's devices by name."""
    found: list[Allocatable] = []
    for gpu in sorted(model.gpus, key=lambda g: (minor(g), g.index)):
        if not gpu.mig_enabled:
            found.append(Allocatable(f"gpu-{minor(gpu)}", gpu))
            continue
        found += sorted((Allocatable(mig_device_name(minor(gpu), m), gpu, m) for m in gpu.mig_devices),
                        key=lambda a: a.name)
    return tuple(found)
