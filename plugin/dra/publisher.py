"""The node's ResourceSlices in the API server, kept equal to the pool plugin.dra.slices makes, with change-only
writes: a steady node sends no request but its one open watch.

- The slices are owned by the Node (controller reference), so they go with it.
- What the server holds is followed through one watch (gfd.kube.watch) on this node's slices of our driver: a
  slice someone deletes (the kubelet deletes all of a node's slices when it starts) is written again at once.
- A change of any slice bumps the pool's generation on every slice of the pool (the scheduler reads a pool only
  from the slices of its newest generation, and only when it has `resourceSliceCount` of them); slices the pool no
  longer needs are deleted after the others are written.
- Slices are compared without what the server adds: a taint's `timeAdded` is carried over to the taint written
  again, so a device keeps the time it was first tainted, and a republished pool is not a change.
- Every failure is retried with capped, jittered backoff; a conflict (someone else wrote) reads the slices again.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

import structlog

from gfd.backoff import Backoff
from gfd.kube.client import CoreV1Objects, CustomObjects, Kube
from gfd.kube.errors import Conflict, KubeError, NotFound
from gfd.kube.watch import Watch
from plugin.dra.config import DRIVER_NAME
from plugin.dra.slices import Pool

log = structlog.get_logger("plugin.dra")

GROUP, VERSION, PLURAL, KIND = "resource.k8s.io", "v1", "resourceslices", "ResourceSlice"
BACKOFF_CAP_S = 30.0
MAX_PREFIX = 200  # a generated name is the prefix and 5 characters; names are at most 253


class SlicePublisher:
    """`publish(pool)` sets what the node offers; `run` (the writer) and `watch` (what the server holds) are the
    two loops that keep the server equal to it. `on_write` is told of every slice written (create, update,
    delete) for the metrics."""

    def __init__(self, kube: Kube, node_name: str, on_write: Callable[[str], None] | None = None) -> None:
        self.kube, self.node_name, self.on_write = kube, node_name, on_write
        self.api = CustomObjects(kube.api_client)
        self.core = CoreV1Objects(kube.api_client)
        self.selector = f"spec.nodeName={node_name},spec.driver={DRIVER_NAME}"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._desired: Pool | None = None
        self._known: dict[str, dict[str, Any]] = {}  # name -> the slice as the server last returned it
        self._listed = False
        self._dirty = False
        self._generation = 0  # the newest pool generation written or seen: a pool never goes back
        self.in_sync = threading.Event()  # the server holds the desired pool
        self.backoff = Backoff(initial=0.5, cap=BACKOFF_CAP_S)

    # -- what the node offers -------------------------------------------------------------------------------
    def publish(self, pool: Pool) -> None:
        with self._changed:
            self._desired = pool
            self._wake()

    @property
    def settled(self) -> bool:
        """The server holds the desired pool and no change waits to be compared."""
        with self._changed:
            return not self._dirty and self.in_sync.is_set()

    def wake(self) -> None:
        """Stop waiting (the program is stopping)."""
        with self._changed:
            self._changed.notify_all()

    # -- the writer -------------------------------------------------------------------------------------------
    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            with self._changed:
                while not stopping.is_set() and not (self._dirty and self._listed and self._desired is not None):
                    self._changed.wait()
                if stopping.is_set():
                    return
                self._dirty = False
                desired, known = self._desired, dict(self._known)
            assert desired is not None
            try:
                self._sync(desired, known)
                self.backoff.reset()
            except KubeError as e:
                self.in_sync.clear()
                delay = max(self.backoff.next_delay(), e.retry_after or 0.0)
                if isinstance(e, (Conflict, NotFound)):  # someone else changed them (the kubelet deletes them)
                    log.info("ResourceSlices changed meanwhile; reading them again", error=str(e))
                    self._read_again()
                else:
                    log.warning("publishing ResourceSlices failed; retrying", error=str(e),
                                retry_in_s=round(delay, 2))
                with self._changed:
                    self._dirty = True
                stopping.wait(delay)

    def _sync(self, desired: Pool, known: dict[str, dict[str, Any]]) -> None:
        ours = sorted((s for s in known.values() if _pool_name(s) == desired.name), key=_name)
        self._generation = max([self._generation, *(_generation(s) for s in ours)])  # what an earlier run wrote
        if _same(desired, ours):
            if not self.in_sync.is_set():
                log.info("ResourceSlices up to date", slices=len(ours), generation=_generation(ours[0]) if ours else 0)
            self.in_sync.set()
            return
        # Never back: a scheduler that saw the pool before its slices were deleted must see the new ones as newer.
        generation = self._generation + 1
        specs = desired.specs(generation)
        for index, spec in enumerate(specs):
            if index < len(ours):
                current = ours[index]
                metadata = current.get("metadata") or {}
                if not _owned(current):
                    metadata = {**metadata, "ownerReferences": [self._owner()]}
                body = {**current, "metadata": metadata, "spec": _carry_time_added(spec, current.get("spec") or {})}
                self._write("update", self.api.replace_cluster_custom_object_with_http_info, GROUP, VERSION, PLURAL,
                            _name(current), body)
            else:
                body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {
                    "generateName": f"{index:05d}-{DRIVER_NAME}-{self.node_name}-"[:MAX_PREFIX],
                    "ownerReferences": [self._owner()]}, "spec": spec}
                self._write("create", self.api.create_cluster_custom_object_with_http_info, GROUP, VERSION, PLURAL,
                            body)
        for extra in ours[len(specs):]:
            with contextlib.suppress(NotFound):  # gone already
                self._write("delete", self.api.delete_cluster_custom_object_with_http_info, GROUP, VERSION, PLURAL,
                            _name(extra))
            self._forget(_name(extra))
        log.info("ResourceSlices published", slices=len(specs), generation=generation,
                 devices=sum(len(s.get("devices", ())) for s in specs))
        self._generation = generation
        self.in_sync.set()

    def _write(self, verb: str, call: Callable[..., Any], *args: Any) -> Any:
        answer = self.kube.request(verb, call, *args)
        if self.on_write is not None:
            self.on_write(verb)
        if verb != "delete" and isinstance(answer, dict):
            self._remember(answer)
        return answer

    def _owner(self) -> dict[str, Any]:
        """The Node as the slices' controller; read at every create, since a Node deleted and registered again
        has another UID (and the garbage collector would delete slices owned by the old one)."""
        node = self.kube.request("get-node", self.core.read_node_with_http_info, self.node_name)
        return {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node["metadata"]["uid"],
                "controller": True}

    # -- what the server holds --------------------------------------------------------------------------------
    def watch(self, stopping: threading.Event) -> None:
        Watch(self.kube, PLURAL, self.api.list_cluster_custom_object, GROUP, VERSION, PLURAL,
              field_selector=self.selector, on_event=self._on_event, relist=self._relist).run(stopping)

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            log.info("ResourceSlice deleted by someone else; publishing again", slice=_name(obj))
            self._forget(_name(obj))
        else:
            self._remember(obj)

    def _relist(self) -> str | None:
        answer = self.kube.request("list", self.api.list_cluster_custom_object_with_http_info, GROUP, VERSION,
                                   PLURAL, field_selector=self.selector)
        with self._changed:
            self._known = {_name(s): s for s in answer.get("items") or []}
            self._listed = True
            self._wake()
        version: str | None = (answer.get("metadata") or {}).get("resourceVersion")
        return version

    def _read_again(self) -> None:
        try:
            self._relist()
        except KubeError as e:
            log.debug("reading the slices again failed", error=str(e))

    def _remember(self, obj: dict[str, Any]) -> None:
        with self._changed:
            name = _name(obj)
            if not _older(obj, self._known.get(name)):  # an event can arrive after a newer write's answer
                self._known[name] = obj
            self._wake()

    def _forget(self, name: str) -> None:
        with self._changed:
            self._known.pop(name, None)
            self._wake()

    def _wake(self) -> None:
        """With the lock held: the writer compares again."""
        self._dirty = True
        self._changed.notify_all()


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _pool(obj: dict[str, Any]) -> dict[str, Any]:
    pool: dict[str, Any] = (obj.get("spec") or {}).get("pool") or {}
    return pool


def _pool_name(obj: dict[str, Any]) -> str:
    return str(_pool(obj).get("name", ""))


def _generation(obj: dict[str, Any]) -> int:
    return int(_pool(obj).get("generation") or 0)


def _older(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Whether `new` is an older version of `old` (resourceVersions are etcd revisions: integers)."""
    if old is None:
        return False
    a, b = (str((o.get("metadata") or {}).get("resourceVersion", "")) for o in (new, old))
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def _same(desired: Pool, current: list[dict[str, Any]]) -> bool:
    """Whether the server's slices are the pool: the same contents (in any order of slices), one generation,
    the right slice count, each owned by a Node."""
    if len(current) != len(desired.contents):
        return False
    if len({_generation(s) for s in current}) > 1:
        return False
    if any(_pool(s).get("resourceSliceCount") != len(desired.contents) for s in current):
        return False
    if not all(_owned(s) for s in current):
        return False
    have = sorted(_canonical({k: v for k, v in (s.get("spec") or {}).items() if k != "pool"}) for s in current)
    return have == sorted(_canonical(c) for c in desired.contents)


def _owned(obj: dict[str, Any]) -> bool:
    return any(o.get("kind") == "Node" and o.get("controller") for o in
               (obj.get("metadata") or {}).get("ownerReferences") or [])


def _canonical(spec: dict[str, Any]) -> str:
    """A slice's content as comparable text, without the time the server stamps on taints."""
    devices = [{**d, "taints": [{k: v for k, v in t.items() if k != "timeAdded"} for t in d["taints"]]}
               if "taints" in d else d for d in spec.get("devices", ())]
    return json.dumps({**spec, **({"devices": devices} if "devices" in spec else {})}, sort_keys=True)


def _carry_time_added(spec: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """`spec` with the `timeAdded` of each taint the same device already carries."""
    if "devices" not in spec:
        return spec
    stamped = {(d.get("name"), t.get("key"), t.get("value"), t.get("effect")): t["timeAdded"]
               for d in current.get("devices") or () for t in d.get("taints") or () if "timeAdded" in t}
    devices = []
    for device in spec["devices"]:
        if "taints" in device:
            device = {**device, "taints": [
                {**t, **({"timeAdded": stamped[key]} if (key := (device["name"], t["key"], t.get("value"),
                                                                  t["effect"])) in stamped else {})}
                for t in device["taints"]]}
        devices.append(device)
    return {**spec, "devices": devices}
