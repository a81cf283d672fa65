"""NodePrepareResources / NodeUnprepareResources as a small core with its edges injected: a claim reader (the
API server, or an informer's cache of it), the per-claim CDI spec writer, and, for memory shares enforced by MPS,
the GPUs' MPS daemons.

Per claim, never for the batch: every failure is that claim's `error`, worded as NVIDIA's driver and the kubelet
plugin helper word it, so the kubelet retries only what failed. Prepared claims are checkpointed, so prepare is
idempotent (a claim already prepared answers from the checkpoint without reading the API) and unprepare works
after a restart; a prepare writes the checkpoint once. A device prepared for one claim is refused to another
unless both hold shares of it (a shareID each) and it is published as shareable (consumable shares), or either
allocation is for admin access.

Shares (plugin/dra/shares.py) are checkpointed with their claim. An enforced share makes sure its GPU's MPS daemon
runs and gives the claim's containers its limits; unprepare of a GPU's last enforced share stops the daemon.
Whether a share is enforced is the GPU's, not only the node's setting (reloadable): a GPU keeps the mode of the
shares it holds until they end (`Preparer._gpu_mode`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from plugin.cdi.spec import ContainerEdits
from plugin.dra.checkpoint import PREPARE_COMPLETED, Checkpoint, PreparedClaim, PreparedDevice
from plugin.dra.claims import AllocationResult, ClaimRef, ResourceClaim
from plugin.dra.config import DRIVER_NAME
from plugin.dra.devices import Allocatable
from plugin.dra.shares import Share, ShareLimits, gpu_limits, gpu_modes, node_shares, share_limits
from plugin.dra.sharing import NOT_SHARED, ConsumableShares

log = structlog.get_logger("plugin.dra")

CDI_VENDOR = f"k8s.{DRIVER_NAME}"
CDI_CLASS = "claim"
CDI_KIND = f"{CDI_VENDOR}/{CDI_CLASS}"


def cdi_device_name(claim_uid: str, device: str) -> str:
    """The name of a claim's device in its CDI spec (NVIDIA's: `<claim uid>-<device>`)."""
    return f"{claim_uid}-{device}"


def cdi_device_id(claim_uid: str, device: str) -> str:
    """The fully qualified CDI device the container runtime injects: `k8s.gpu.nvidia.com/claim=<uid>-<device>`."""
    return f"{CDI_KIND}={cdi_device_name(claim_uid, device)}"


CLAIM_SPEC_PREFIX = f"{CDI_VENDOR}-{CDI_CLASS}_"


def claim_spec_file(claim_uid: str, extension: str = "yaml") -> str:
    """The claim's spec file name in the CDI root (CDI's transient spec name: `<vendor>-<class>_<uid>`)."""
    return f"{CLAIM_SPEC_PREFIX}{claim_uid}.{extension}"


class ClaimReader(Protocol):
    """Reads the claim the kubelet names (by namespace and name; its UID tells a cache whether the copy it holds is
    that claim); any exception is the reason it could not (its text is reported)."""

    def read(self, ref: ClaimRef) -> ResourceClaim: ...


class ClaimSpecs(Protocol):
    """Writes and removes the one CDI spec of a claim (kind k8s.gpu.nvidia.com/claim, a device named
    cdi_device_name(uid, device) per allocated device, with `extra` edits by device name); remove of a missing spec
    is not an error."""

    def write(self, claim_uid: str, devices: Sequence[Allocatable],
              extra: Mapping[str, ContainerEdits] | None = None) -> None: ...

    def remove(self, claim_uid: str) -> None: ...


class ShareEnforcer(Protocol):
    """Holds enforced shares of a GPU to their limits (plugin/dra/mpsshares.py: the GPU's MPS daemon)."""

    def ensure(self, uuid: str) -> None:
        """The GPU's daemon runs; an exception (its text reported) when it cannot."""

    def release(self, uuid: str) -> None:
        """The GPU holds no enforced share any more."""

    def client_edits(self, uuid: str, limits: ShareLimits) -> ContainerEdits:
        """What a claim's containers get to be held to `limits` on the GPU."""
        ...


class ClaimFailed(Exception):
    """What goes into a claim's `error`."""


@dataclass(frozen=True)
class Prepared:
    """A claim's answer: its devices, or why it could not be prepared."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class Preparer:
    """The node's prepared claims: `allocatable` is what the node offers now (devices.allocatable_devices by
    name); `sharing` how its devices are shared (consumable shares, and whether MPS enforces memory shares, through
    `enforcer`, which must be given where it does)."""

    def __init__(self, node_name: str, checkpoint: Checkpoint, reader: ClaimReader, specs: ClaimSpecs,
                 allocatable: Mapping[str, Allocatable], sharing: ConsumableShares = NOT_SHARED,
                 enforcer: ShareEnforcer | None = None) -> None:
        self.node_name, self.checkpoint, self.reader, self.specs = node_name, checkpoint, reader, specs
        self.allocatable = dict(allocatable)
        self.sharing, self.enforcer = sharing, enforcer
        self._lock = threading.Lock()

    def update_devices(self, allocatable: Mapping[str, Allocatable]) -> None:
        """The node's devices changed (a GPU lost, a MIG layout changed): later prepares see the new set."""
        with self._lock:
            self.allocatable = dict(allocatable)

    def update_sharing(self, sharing: ConsumableShares, enforcer: ShareEnforcer | None) -> None:
        """The node's sharing changed (its config was reloaded): later prepares follow it, except on a GPU whose
        shares were prepared in the other mode (`modes_kept`); prepared shares keep what they got until they are
        unprepared."""
        with self._lock:
            self.sharing, self.enforcer = sharing, enforcer or self.enforcer

    def enforced_gpus(self) -> set[str]:
        """The GPUs (UUIDs) that prepared claims hold enforced shares of."""
        with self._lock:
            return _enforced(self.checkpoint.claims.values())

    def modes_kept(self) -> dict[str, bool]:
        """By UUID, the GPUs whose prepared shares keep them in a mode other than the node's setting until those
        shares end: True, under MPS (the setting enforces none now); False, without it (the setting enforces)."""
        with self._lock:
            gpus = {d.gpu.uuid for d in self.allocatable.values() if d.mig is None}
            return {uuid: enforced for uuid, enforced in _modes(self.checkpoint.claims.values()).items()
                    if uuid in gpus and enforced != self.sharing.enforced}

    def shares(self) -> list[Share]:
        """Every share the node's prepared claims hold (plugin/dra/shares.py)."""
        with self._lock:
            return node_shares(self.checkpoint.claims.values())

    def prepare(self, claims: Iterable[ClaimRef]) -> dict[str, Prepared]:
        """By claim UID, every claim of the request."""
        answers = {}
        for ref in claims:
            try:
                answers[ref.uid] = Prepared(self._prepare(ref))
            except ClaimFailed as e:
                log.warning("prepare failed", claim=str(ref), error=str(e))
                answers[ref.uid] = Prepared(error=str(e))
        return answers

    def unprepare(self, claims: Iterable[ClaimRef]) -> dict[str, str]:
        """By claim UID, "" or the error."""
        answers = {}
        for ref in claims:
            try:
                self._unprepare(ref)
                answers[ref.uid] = ""
            except ClaimFailed as e:
                log.warning("unprepare failed", claim=str(ref), error=str(e))
                answers[ref.uid] = str(e)
        return answers

    def _prepare(self, ref: ClaimRef) -> tuple[PreparedDevice, ...]:
        with self._lock:
            known = self.checkpoint.get(ref.uid)
            if known is not None and known.state == PREPARE_COMPLETED:
                return known.devices  # idempotent: prepared before (by this process or an earlier one)
        claim = self._read(ref)  # outside the lock: a slow read must not hold up other claims
        fail = f"error preparing devices for claim {ref}"
        with self._lock:
            results = [r for r in claim.results if r.driver == DRIVER_NAME]
            for r in results:
                if r.pool != self.node_name:
                    raise ClaimFailed(f"{fail}: prepare devices failed: device {r.device} is in pool {r.pool}, "
                                      f"not in this node's pool {self.node_name}")
                if r.device not in self.allocatable:
                    raise ClaimFailed(f'{fail}: prepare devices failed: allocatable not found for device "{r.device}"')
            self._refuse_overlaps(ref.uid, results, fail)
            modes = _modes(self.checkpoint.claims.values())
            try:
                devices = tuple(PreparedDevice(
                    (r.base_request,), r.pool, r.device, (cdi_device_id(ref.uid, r.device),), r.share_id,
                    r.admin_access, self._gpu_mode(share_limits(r, self.allocatable[r.device], self.sharing), modes,
                                                   fail)) for r in results)
            except ValueError as e:
                raise ClaimFailed(f"{fail}: prepare devices failed: consumed capacity: {e}") from e
            enforced = self._enforced_gpu(devices, fail)
            # One checkpoint write per prepare, after the spec: the spec is this prepare's only side effect the
            # checkpoint does not name (unprepare removes a claim's spec whether or not the claim was checkpointed,
            # and a start stops an MPS daemon no checkpointed share needs), so a crash between the two leaves
            # nothing that unprepare, the kubelet's retried prepare or the next start does not clean up. (NVIDIA's
            # PrepareStarted write before the work is for side effects that only the checkpoint can name.)
            try:
                if devices:
                    unique = list(dict.fromkeys(r.device for r in results))  # one spec device per device of the claim
                    self._write_spec(ref.uid, [self.allocatable[d] for d in unique], devices, enforced, fail)
                self._checkpoint(PreparedClaim(ref.uid, ref.namespace, ref.name, PREPARE_COMPLETED, devices,
                                               claim.pods), fail)
            except ClaimFailed:
                if enforced is not None:
                    self._release_unused({enforced[0]})
                raise
        log.info("claim prepared", claim=str(ref), devices=[d.device for d in devices],
                 **({"mps": enforced[0], **_limits_log(enforced[1])} if enforced is not None else {}))
        return devices

    @staticmethod
    def _gpu_mode(limits: ShareLimits | None, modes: Mapping[str, bool], fail: str) -> ShareLimits | None:
        """A share as its GPU takes it (`modes`: the mode of each GPU's prepared shares): a GPU keeps the mode of
        the shares it holds, whatever the node's setting says since a reload, and takes the setting's once they end.
        Under MPS the GPU is in EXCLUSIVE_PROCESS, where a process outside its daemon gets no context: every new
        share of it is enforced. A GPU whose shares run without MPS cannot be switched under them (their processes
        would be locked out): a share the setting enforces is refused there with why, and the kubelet's retries
        prepare it once those shares end. Refused rather than prepared unenforced, because the node publishes its
        shares as enforced (`shareEnforcement: mps`), which a claim may have selected them for."""
        if limits is None or limits.uuid not in modes or modes[limits.uuid] == limits.enforced:
            return limits
        if modes[limits.uuid]:
            return replace(limits, enforced=True)
        raise ClaimFailed(f"{fail}: prepare devices failed: GPU {limits.uuid} holds shares prepared without MPS "
                          f"enforcement; it takes enforced shares once those end (it cannot run both)")

    def _enforced_gpu(self, devices: Sequence[PreparedDevice], fail: str) -> tuple[str, ShareLimits] | None:
        """The GPU whose MPS daemon the claim's containers are to be clients of, with the claim's limits there
        (its shares of that GPU added up), or None. A container's CUDA goes through one MPS daemon, which serves
        one GPU: a claim with an enforced share and any other device is refused."""
        limits = gpu_limits(d.share for d in devices if d.share is not None)
        if not limits:
            return None
        others = sorted({d.device for d in devices if not d.admin_access and (d.share is None or not d.share.enforced)})
        if len(limits) > 1 or others:
            held = sorted({d.device for d in devices if not d.admin_access})
            raise ClaimFailed(f"{fail}: prepare devices failed: a claim with a memory share enforced by MPS holds "
                              f"nothing else (a container's CUDA runs through one GPU's MPS daemon); this one holds "
                              f"{', '.join(held)}")
        return next(iter(limits.items()))

    def _write_spec(self, uid: str, unique: Sequence[Allocatable], devices: Sequence[PreparedDevice],
                    enforced: tuple[str, ShareLimits] | None, fail: str) -> None:
        extra: dict[str, ContainerEdits] = {}
        if enforced is not None:
            uuid, limits = enforced
            if self.enforcer is None:
                raise ClaimFailed(f"{fail}: prepare devices failed: memory shares are enforced but no MPS is set up")
            try:
                self.enforcer.ensure(uuid)
            except Exception as e:
                raise ClaimFailed(f"{fail}: prepare devices failed: MPS daemon of GPU {uuid}: {e}") from e
            edits = self.enforcer.client_edits(uuid, limits)
            extra = {d.device: edits for d in devices if d.share is not None and d.share.enforced}
        try:
            self.specs.write(uid, unique, extra)
        except Exception as e:
            raise ClaimFailed(f"{fail}: unable to create CDI spec file for claim: {e}") from e

    def _release_unused(self, gpus: set[str]) -> None:
        """With the lock held: the GPUs among `gpus` that no prepared claim holds an enforced share of any more."""
        if self.enforcer is None:
            return
        for uuid in sorted(gpus - _enforced(self.checkpoint.claims.values())):
            self.enforcer.release(uuid)

    def _read(self, ref: ClaimRef) -> ResourceClaim:
        """The kubelet plugin helper's checks and wording (it fails the whole call on them; here the claim)."""
        where = f"{ref.namespace}/{ref.name}"
        try:
            claim = self.reader.read(ref)
        except Exception as e:
            raise ClaimFailed(f"retrieve claim {where}: {e}") from e
        if not claim.allocated:
            raise ClaimFailed(f"claim {where} not allocated")
        if claim.ref.uid != ref.uid:
            raise ClaimFailed(f"claim {where} got replaced")
        return claim

    def _refuse_overlaps(self, uid: str, results: Sequence[AllocationResult], fail: str) -> None:
        """A device another claim holds is refused unless both hold shares of it (a shareID each) and the node
        publishes it as shareable: a device published for one claim at a time (a MIG device under enforcement,
        any device with sharing off), or one held whole, is not shared because a stale allocation, a reload or a
        second scheduler says so. Admin access takes nothing and is neither refused nor refusing."""
        shared: dict[str, bool] = {}  # by device: whether the claim takes only shares of it
        for r in results:
            if not r.admin_access:
                shared[r.device] = shared.get(r.device, True) and r.share_id is not None and \
                    self._shareable(self.allocatable[r.device])
        for other in self.checkpoint.claims.values():
            if other.uid == uid or other.state != PREPARE_COMPLETED:
                continue
            for held in other.devices:
                if held.admin_access or held.device not in shared:
                    continue
                if shared[held.device] and held.share_id is not None:
                    continue  # two shares of a shareable device
                raise ClaimFailed(f"{fail}: unable to prepare claim {uid}: requested device {held.device} is "
                                  f"already allocated to different claim {other.uid}")

    def _shareable(self, device: Allocatable) -> bool:
        """Whether the slices publish `device` for several claims (plugin/dra/slices.py; a MIG device's memory is
        always known)."""
        mig = device.mig is not None
        return self.sharing.shareable(mig, mig or device.gpu.memory_mib is not None)

    def _checkpoint(self, claim: PreparedClaim, fail: str) -> None:
        try:
            self.checkpoint.put(claim)
        except Exception as e:
            raise ClaimFailed(f"{fail}: {e}") from e

    def _unprepare(self, ref: ClaimRef) -> None:
        with self._lock:
            # The spec goes whether or not the claim is checkpointed: a crash between writing it and
            # checkpointing the claim leaves one behind.
            try:
                self.specs.remove(ref.uid)
            except Exception as e:  # as NVIDIA: logged, and the checkpoint entry still goes
                log.error("unable to delete CDI spec file for claim", claim=str(ref), error=str(e))
            known = self.checkpoint.get(ref.uid)
            if known is None:
                log.debug("unprepare: claim not prepared here", claim=str(ref))
                return
            try:
                self.checkpoint.remove(ref.uid)
            except Exception as e:
                raise ClaimFailed(f"error unpreparing devices for claim {ref}: error deleting claim from "
                                  f"checkpoint: {e}") from e
            self._release_unused(_enforced([known]))
        log.info("claim unprepared", claim=str(ref), state=known.state)


def _modes(claims: Iterable[PreparedClaim]) -> dict[str, bool]:
    return gpu_modes(d.share for c in claims for d in c.devices if d.share is not None)


def _enforced(claims: Iterable[PreparedClaim]) -> set[str]:
    return {uuid for uuid, enforced in _modes(claims).items() if enforced}


def _limits_log(limits: ShareLimits) -> dict[str, int]:
    return {"memoryMiB": limits.memory_mib or 0, "computePercent": limits.compute_percent}
