"""The node's GPU shares, one typed record each: which claim's share holds which GPU, its limits, whether MPS
holds it to them, and the pods the claim is reserved for.

A share is one allocation result with a `shareID` (a device that allows multiple allocations, consumable shares);
its limits are what the scheduler recorded it consumed (`consumedCapacity`, rounded up by the device's request
policy): memory in MiB and compute in percent of SMs. The records live in the checkpoint with their claim
(plugin/dra/checkpoint.py: `PreparedDevice.share`, `PreparedClaim.pods`), so they survive restarts; `node_shares`
lists them from the prepare core's checkpoint, or from the file another process reads (`read_prepared`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from kubernetes.utils.quantity import parse_quantity

from gfd.model import MIB
from plugin.dra.claims import AllocationResult, ClaimRef, PodRef
from plugin.dra.devices import Allocatable
from plugin.dra.sharing import COMPUTE, MEMORY, ConsumableShares

if TYPE_CHECKING:
    from plugin.dra.checkpoint import PreparedClaim


@dataclass(frozen=True)
class ShareLimits:
    """What one share of a device may use (`uuid`: the GPU's, or the MIG device's): `memory_mib` of its memory
    (None: the device has no memory capacity), `compute_percent` of its SMs (0: it consumed none, and gets no thread
    limit). `enforced`: its containers run as clients of the GPU's MPS daemon with these limits; otherwise only the
    scheduler counted them."""

    uuid: str
    memory_mib: int | None
    compute_percent: int = 0
    enforced: bool = False


@dataclass(frozen=True)
class Share:
    """A share of a GPU as an operator asks about it: the claim and its pods, the device (and its pool), the share's
    id."""

    claim: ClaimRef
    pods: tuple[PodRef, ...]
    device: str
    share_id: str
    limits: ShareLimits
    pool: str = ""


def share_limits(result: AllocationResult, device: Allocatable, sharing: ConsumableShares) -> ShareLimits | None:
    """A result's share of `device`, None when the result is not a share (no shareID: the device is the claim's
    alone; or admin access, which observes a device without taking any of it). Enforced where the node enforces
    memory shares, on a full GPU whose memory is known, and only when the share leaves room for another: a claim
    that consumed the whole GPU's memory (one that names no amount) gets the whole GPU, without MPS."""
    if result.share_id is None or result.admin_access:
        return None
    memory = _whole(result.consumed_capacity, MEMORY, MIB)
    compute = _whole(result.consumed_capacity, COMPUTE, 1) or 0
    gpu = device.gpu
    partial = memory is not None and gpu.memory_mib is not None and memory < gpu.memory_mib
    enforced = sharing.enforced and device.mig is None and partial
    return ShareLimits(gpu.uuid if device.mig is None else device.mig.uuid, memory, min(compute, 100), enforced)


def _whole(consumed: Mapping[str, str], name: str, unit: int) -> int | None:
    """A consumed capacity in whole units, rounded up (None when the allocation has none); ValueError for a
    quantity that is not one."""
    if name not in consumed:
        return None
    amount: Decimal = parse_quantity(consumed[name])  # type: ignore[no-untyped-call]
    return math.ceil(amount / unit)


def node_shares(claims: Iterable[PreparedClaim]) -> list[Share]:
    """Every share of the prepared claims, by claim and device."""
    return [Share(ClaimRef(c.namespace, c.name, c.uid), c.pods, d.device, d.share_id, d.share, d.pool)
            for c in claims for d in c.devices if d.share is not None and d.share_id is not None]


def gpu_modes(shares: Iterable[ShareLimits]) -> dict[str, bool]:
    """By GPU (or MIG device) UUID, whether its shares among `shares` are enforced. A GPU's shares are all in one
    mode (prepare keeps them so); were they not, enforced wins: its MPS daemon runs."""
    modes: dict[str, bool] = {}
    for share in shares:
        modes[share.uuid] = modes.get(share.uuid, False) or share.enforced
    return modes


def gpu_limits(shares: Iterable[ShareLimits]) -> dict[str, ShareLimits]:
    """The enforced shares among `shares` merged by GPU (one claim may hold several shares of one GPU, and its
    containers are one MPS client of it): memory added up, compute added up to at most 100."""
    merged: dict[str, ShareLimits] = {}
    for share in shares:
        if not share.enforced:
            continue
        before = merged.get(share.uuid)
        if before is None:
            merged[share.uuid] = share
            continue
        merged[share.uuid] = ShareLimits(share.uuid, (before.memory_mib or 0) + (share.memory_mib or 0),
                                             min(100, before.compute_percent + share.compute_percent), True)
    return merged
