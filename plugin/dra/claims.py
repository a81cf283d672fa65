"""A ResourceClaim as prepare needs it: who it is (namespace, name, UID), its allocation results and the pods it is
reserved for, read from the API's JSON form (resource.k8s.io/v1) however the claim was fetched (a GET, a watch,
an informer's cache)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ClaimFormatError(ValueError):
    """The object is not a ResourceClaim this code can read (one line, naming the field)."""


@dataclass(frozen=True)
class ClaimRef:
    """A claim as the kubelet names it in NodePrepareResources / NodeUnprepareResources."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.uid}"  # NVIDIA's and the kubelet helper's spelling


@dataclass(frozen=True)
class AllocationResult:
    """One entry of status.allocation.devices.results."""

    request: str
    driver: str
    pool: str
    device: str
    share_id: str | None = None
    admin_access: bool = False
    consumed_capacity: Mapping[str, str] = field(default_factory=dict)

    @property
    def base_request(self) -> str:
        """The request without its subrequest (`gpu/a100` -> `gpu`), as the kubelet wants request names back."""
        return self.request.split("/", 1)[0]


@dataclass(frozen=True)
class PodRef:
    """A pod the claim is reserved for (status.reservedFor), in the claim's namespace."""

    name: str
    uid: str


@dataclass(frozen=True)
class ResourceClaim:
    ref: ClaimRef
    allocated: bool
    results: tuple[AllocationResult, ...] = ()
    pods: tuple[PodRef, ...] = ()


def parse_claim(doc: object) -> ResourceClaim:
    """The API's JSON form of a ResourceClaim; ClaimFormatError names the first field that is not as the API
    defines it."""
    obj = _mapping(doc, "claim")
    meta = _mapping(obj.get("metadata"), "metadata")
    ref = ClaimRef(_text(meta.get("namespace"), "metadata.namespace"), _text(meta.get("name"), "metadata.name"),
                   _text(meta.get("uid"), "metadata.uid"))
    status = _mapping(obj.get("status") or {}, "status")
    allocation = status.get("allocation")
    if allocation is None:
        return ResourceClaim(ref, False)
    devices = _mapping(_mapping(allocation, "status.allocation").get("devices") or {}, "status.allocation.devices")
    results = _list(devices.get("results"), "status.allocation.devices.results")
    return ResourceClaim(ref, True, tuple(_result(r, f"status.allocation.devices.results[{i}]")
                                          for i, r in enumerate(results)), _pods(status.get("reservedFor")))


def _pods(value: Any) -> tuple[PodRef, ...]:
    """The pods among the claim's consumers (a consumer of another resource or API group is not a pod)."""
    pods = []
    for i, item in enumerate(_list(value, "status.reservedFor")):
        consumer = _mapping(item, f"status.reservedFor[{i}]")
        if consumer.get("resource") == "pods" and not consumer.get("apiGroup"):
            pods.append(PodRef(_text(consumer.get("name"), f"status.reservedFor[{i}].name"),
                               _text(consumer.get("uid"), f"status.reservedFor[{i}].uid")))
    return tuple(pods)


def _result(obj: Any, where: str) -> AllocationResult:
    r = _mapping(obj, where)
    share_id = r.get("shareID")
    consumed = _mapping(r.get("consumedCapacity") or {}, f"{where}.consumedCapacity")
    return AllocationResult(
        request=_text(r.get("request"), f"{where}.request"), driver=_text(r.get("driver"), f"{where}.driver"),
        pool=_text(r.get("pool"), f"{where}.pool"), device=_text(r.get("device"), f"{where}.device"),
        share_id=None if share_id is None else _text(share_id, f"{where}.shareID"),
        admin_access=r.get("adminAccess") is True,
        consumed_capacity={str(k): str(v) for k, v in consumed.items()})


def _list(value: Any, where: str) -> list[Any]:
    """An optional list (absent or null is empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ClaimFormatError(f"{where}: not a list")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ClaimFormatError(f"{where}: not an object")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ClaimFormatError(f"{where}: missing or not a string")
    return value
