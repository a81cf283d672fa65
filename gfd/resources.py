"""The resource model: which devices make which resource under a MIG strategy. GFD's resource labelers
(gfd/labels/resources.py) and the device plugin (plugin/resources.py) both read it, so they cannot group
devices differently. Upstream: GFD's internal/lm/mig-strategy.go and the plugin's internal/rm.

| MIG strategy | MIG-disabled GPUs | MIG devices                         |
| none         | `gpu`             | not exposed (their GPU is a full `gpu`) |
| single       | `gpu`             | `gpu`                               |
| mixed        | `gpu`             | `mig-<profile>`                     |

Where the two programs' upstream behaviour differs, the model states the fact and each program applies
its own rule: a `single` node that breaks the strategy's conditions is labelled INVALID by GFD and refused
by the plugin (in each one's order of checks; GFD compares MIG profile names, the plugin also their
attributes); a `mixed` MIG profile whose compute slices differ from its
GPU slices (`1c.3g.20gb`) is labelled by GFD and refused by the plugin, whose default resource patterns
only cover profiles with equal counts (reference device-plugin.md §3).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from gfd.model import DeviceModel, Gpu, MigDevice

DOMAIN = "nvidia.com/"


@dataclass(frozen=True)
class Member:
    """One device of a resource: a whole GPU, or a MIG device on it."""

    gpu: Gpu
    mig: MigDevice | None = None


@dataclass(frozen=True)
class ResourceGroup:
    key: str  # the name without the domain: "gpu" or "mig-1g.5gb"
    members: tuple[Member, ...]

    @property
    def name(self) -> str:
        return DOMAIN + self.key

    @property
    def is_mig(self) -> bool:
        return self.members[0].mig is not None


def resource_groups(model: DeviceModel, strategy: str) -> tuple[ResourceGroup, ...]:
    """The node's resources under `strategy` (none, single, mixed), each with its devices in GPU order;
    resources in order of their first device."""
    groups: dict[str, list[Member]] = defaultdict(list)
    for gpu in model.gpus:
        if strategy == "none" or not gpu.mig_enabled:
            groups["gpu"].append(Member(gpu))
            continue
        for mig in gpu.mig_devices:
            groups["gpu" if strategy == "single" else f"mig-{mig.label_profile}"].append(Member(gpu, mig))
    return tuple(ResourceGroup(key, tuple(members)) for key, members in groups.items())


def matches_default_patterns(mig: MigDevice) -> bool:
    """Whether the plugin's default `mixed` resource patterns name this MIG device's profile (its `single`
    pattern is `*`: every profile)."""
    return mig.ci_slices == mig.gi_slices


@dataclass(frozen=True)
class SingleStrategyCheck:
    """The conditions of the `single` strategy on a node with MIG-enabled GPUs, all evaluated."""

    mixed_modes: bool  # some GPUs have MIG enabled, others not
    empty: tuple[Gpu, ...]  # MIG-enabled GPUs without MIG devices
    profiles: int  # distinct MIG profile names on the node: GFD's "device type"
    device_types: int  # distinct (profile, attributes): the plugin's; more than `profiles` when one profile
    # name has different attributes on different GPU models (1g.10gb: 16 SMs on H100 SXM, 14 on H100 PCIe)


def check_single(model: DeviceModel) -> SingleStrategyCheck | None:
    """None when no GPU has MIG enabled (`single` then means full GPUs)."""
    mig_gpus = [g for g in model.gpus if g.mig_enabled]
    if not mig_gpus:
        return None
    types = {(m.profile, m.memory_mib, m.multiprocessors, m.gi_slices, m.ci_slices, m.copy_engines, m.decoders,
              m.encoders, m.jpeg_engines, m.ofa_engines) for m in model.mig_devices}
    return SingleStrategyCheck(len(mig_gpus) != len(model.gpus), tuple(g for g in mig_gpus if not g.mig_devices),
                               len({m.profile for m in model.mig_devices}), len(types))
