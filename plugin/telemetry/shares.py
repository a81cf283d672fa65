"""Who uses what on a shared GPU: each share our DRA driver prepared (plugin/dra/shares.py, read from its
checkpoint), the pods it is reserved for and their containers (the kubelet's PodResources answer), and the device
memory of the processes running in those pods (NVML's running processes, each mapped to its pod by its cgroup).
Pure: the collector reads NVML, /proc, the checkpoint and the kubelet.

A process belongs to the share whose claim is reserved for the pod its cgroup names, on the device NVML lists it
on; a pod that holds two shares of one device (two claims) has its processes counted in the first (by claim). A
process of no share on a shared device (another pod's, one outside Kubernetes, the MPS server itself, or one whose
cgroup could not be read) counts in the device's `others`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gfd.discovery.telemetry import GpuProcess
from gfd.model import MIB
from plugin.telemetry.cgroups import CgroupOwner
from plugin.telemetry.podresources import ClaimDevice, Holder

if TYPE_CHECKING:  # the share records import the kubernetes client (collector.CheckpointShares)
    from plugin.dra.shares import Share



@dataclass(frozen=True)
class ShareUse:
    """One pod's use of a share: `holder` is the pod (in the claim's namespace) with the container that uses the
    claim, "" when the kubelet lists none or several of its containers for it (the processes are told apart by
    pod, not container). `used_mib` and `processes`: what its processes on the device use; None when the device's
    processes could not be read."""

    share: Share
    holder: Holder
    used_mib: float | None
    processes: int | None


@dataclass
class DeviceShares:
    """A shared device (GPU or MIG device, by UUID): its shares' uses, sorted by claim and pod, and the processes
    no share accounts for (None: the device's processes could not be read)."""

    uses: list[ShareUse] = field(default_factory=list)
    others_mib: float | None = 0.0
    others: int | None = 0


def share_uses(shares: Iterable[Share], users: Mapping[ClaimDevice, list[Holder]],
               processes: Mapping[str, list[GpuProcess] | None],
               owners: Mapping[int, CgroupOwner | None]) -> dict[str, DeviceShares]:
    """Device UUID -> its shares' uses. `users`: the containers of each claim device (podresources.claim_holders);
    `processes`: each device's (None where they could not be read); `owners`: the cgroup owner of each PID that was
    looked up (a PID missing from it counts in `others`)."""
    by_device: dict[str, list[Share]] = {}
    for share in shares:
        by_device.setdefault(share.limits.uuid, []).append(share)
    out: dict[str, DeviceShares] = {}
    for uuid, on_device in by_device.items():
        listed = processes.get(uuid)
        pods: dict[tuple[int, str], tuple[Share, Holder]] = {}  # (share index, pod) -> its use's key
        by_uid: dict[str, tuple[int, str]] = {}
        for i, share in enumerate(sorted(on_device, key=lambda s: (s.claim.namespace, s.claim.name, s.share_id))):
            namespace = share.claim.namespace
            using = users.get((namespace, share.claim.name, share.device), [])
            names = {p.name for p in share.pods} | {h.pod for h in using if h.namespace == namespace}
            for name in sorted(names) or [""]:  # a share no pod is known to hold still shows its limit
                containers = [h.container for h in using if (h.namespace, h.pod) == (namespace, name)]
                pods[(i, name)] = (share, Holder(namespace, name, containers[0] if len(containers) == 1 else ""))
            for pod in share.pods:
                by_uid.setdefault(pod.uid, (i, pod.name))
        used: dict[tuple[int, str], list[GpuProcess]] = {key: [] for key in pods}
        others: list[GpuProcess] = []
        for process in listed or ():
            owner = owners.get(process.pid)
            key = by_uid.get(owner.pod_uid) if owner is not None else None
            (used[key] if key is not None else others).append(process)
        known = listed is not None
        out[uuid] = DeviceShares(
            [ShareUse(share, holder, _mib(used[key]) if known else None, len(used[key]) if known else None)
             for key, (share, holder) in pods.items()],
            _mib(others) if known else None, len(others) if known else None)
    return out


def _mib(processes: list[GpuProcess]) -> float:
    return sum(p.used_bytes or 0 for p in processes) / MIB
