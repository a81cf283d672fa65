"""NodePrepareResources / NodeUnprepareResources as a small core with its edges injected: a claim reader (the
API server, or an informer's cache of it) and the per-claim CDI spec writer.

Per claim, never for the batch: every failure is that claim's `error`, worded as NVIDIA's driver and the kubelet
plugin helper word it, so the kubelet retries only what failed. Prepared claims are checkpointed, so prepare is
idempotent (a claim already prepared answers from the checkpoint without reading the API) and unprepare works
after a restart; a prepare writes the checkpoint once. A device prepared for one claim is refused to another
unless it allows multiple allocations (consumable shares) or either allocation is for admin access.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from plugin.dra.checkpoint import PREPARE_COMPLETED, Checkpoint, PreparedClaim, PreparedDevice
from plugin.dra.claims import ClaimRef, ResourceClaim
from plugin.dra.config import DRIVER_NAME
from plugin.dra.devices import Allocatable

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
    cdi_device_name(uid, device) per allocated device); remove of a missing spec is not an error."""

    def write(self, claim_uid: str, devices: Sequence[Allocatable]) -> None: ...

    def remove(self, claim_uid: str) -> None: ...


class ClaimFailed(Exception):
    """What goes into a claim's `error`."""


@dataclass(frozen=True)
class Prepared:
    """A claim's answer: its devices, or why it could not be prepared."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class Preparer:
    """The node's prepared claims: `allocatable` is what the node offers now (devices.allocatable_devices by
    name); `shared` says whether its devices allow multiple allocations (consumable shares)."""

    def __init__(self, node_name: str, checkpoint: Checkpoint, reader: ClaimReader, specs: ClaimSpecs,
                 allocatable: Mapping[str, Allocatable], shared: bool = False) -> None:
        self.node_name, self.checkpoint, self.reader, self.specs = node_name, checkpoint, reader, specs
        self.allocatable, self.shared = dict(allocatable), shared
        self._lock = threading.Lock()

    def update_devices(self, allocatable: Mapping[str, Allocatable]) -> None:
        """The node's devices changed (a GPU lost, a MIG layout changed): later prepares see the new set."""
        with self._lock:
            self.allocatable = dict(allocatable)

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
            self._refuse_overlaps(ref.uid, [r.device for r in results if not r.admin_access], fail)
            devices = tuple(PreparedDevice((r.base_request,), r.pool, r.device, (cdi_device_id(ref.uid, r.device),),
                                           r.share_id, r.admin_access) for r in results)
            # One checkpoint write per prepare, after the spec: the spec is this prepare's only side effect, and
            # unprepare removes a claim's spec whether or not the claim was checkpointed, so a crash between the
            # two leaves nothing that unprepare (or the kubelet's retried prepare) does not clean up. (NVIDIA's
            # PrepareStarted write before the work is for side effects that only the checkpoint can name.)
            if devices:
                unique = list(dict.fromkeys(r.device for r in results))  # one spec device per device of the claim
                try:
                    self.specs.write(ref.uid, [self.allocatable[d] for d in unique])
                except Exception as e:
                    raise ClaimFailed(f"{fail}: unable to create CDI spec file for claim: {e}") from None
            self._checkpoint(PreparedClaim(ref.uid, ref.namespace, ref.name, PREPARE_COMPLETED, devices), fail)
        log.info("claim prepared", claim=str(ref), devices=[d.device for d in devices])
        return devices

    def _read(self, ref: ClaimRef) -> ResourceClaim:
        """The kubelet plugin helper's checks and wording (it fails the whole call on them; here the claim)."""
        where = f"{ref.namespace}/{ref.name}"
        try:
            claim = self.reader.read(ref)
        except Exception as e:
            raise ClaimFailed(f"retrieve claim {where}: {e}") from None
        if not claim.allocated:
            raise ClaimFailed(f"claim {where} not allocated")
        if claim.ref.uid != ref.uid:
            raise ClaimFailed(f"claim {where} got replaced")
        return claim

    def _refuse_overlaps(self, uid: str, wanted: Sequence[str], fail: str) -> None:
        if self.shared:
            return
        for other in self.checkpoint.claims.values():
            if other.uid == uid or other.state != PREPARE_COMPLETED:
                continue
            held = {d.device for d in other.devices if not d.admin_access}
            for device in wanted:
                if device in held:
                    raise ClaimFailed(f"{fail}: unable to prepare claim {uid}: requested device {device} is "
                                      f"already allocated to different claim {other.uid}")

    def _checkpoint(self, claim: PreparedClaim, fail: str) -> None:
        try:
            self.checkpoint.put(claim)
        except Exception as e:
            raise ClaimFailed(f"{fail}: {e}") from None

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
                                  f"checkpoint: {e}") from None
        log.info("claim unprepared", claim=str(ref), state=known.state)
