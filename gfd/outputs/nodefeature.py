"""Labels as an NFD `NodeFeature` custom resource (nfd.k8s-sigs.io/v1alpha1), upstream's object shape.

Unlike upstream (a GET every pass, exit on any API error) this output remembers the object it last
wrote and its resourceVersion: it writes only when called with changed labels, reads only on a
conflict, after an error and once per resync period, and turns every API failure into an
OutputError the daemon retries with backoff. Requests go through gfd.kube (budget, timeouts, typed errors);
a deletion by someone else is noticed through gfd.kube's watch loop.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from gfd.config import Config
from gfd.kube.client import CoreV1Objects, CustomObjects, Kube, connect
from gfd.kube.errors import Conflict, CredentialsError, KubeError, NotFound
from gfd.kube.watch import Watch
from gfd.outputs import OutputError

if TYPE_CHECKING:
    from gfd.lifecycle import Scope
    from gfd.metrics import Metrics

log = structlog.get_logger("gfd.outputs")

GROUP, VERSION, PLURAL, KIND = "nfd.k8s-sigs.io", "v1alpha1", "nodefeatures", "NodeFeature"
NODE_NAME_LABEL = "nfd.node.kubernetes.io/node-name"
_CONFLICT_RETRIES = 3


class NodeFeatureOutput:
    def __init__(self, kube: Kube, namespace: str, node_name: str, pod_name: str = "",
                 resync_seconds: float = 3600.0, on_deleted: Callable[[], None] | None = None,
                 scope: Scope | None = None) -> None:
        """`on_deleted` and `scope`: a deletion by someone else is watched for (on a thread of `scope`, whose
        stop also cancels this output's API requests, from here on: the owner references are read below)
        and reported through `on_deleted`."""
        if scope is not None:
            scope.on_stop(kube.cancel)
        if not node_name:
            raise OutputError("failed to create label outputer: required flag node-name not set")
        if not namespace:
            raise OutputError("failed to create label outputer: required flag namespace not set")
        self.kube = kube
        self.custom = CustomObjects(kube.api_client)
        self.core = CoreV1Objects(kube.api_client)
        self.namespace, self.node_name, self.pod_name = namespace, node_name, pod_name
        self.name = f"nvidia-features-for-{node_name}"
        self.resync_seconds = resync_seconds
        # `known` (the object as the server last returned it) is shared by the writer and the deletion
        # watch: one lock serialises a whole write against the watch's "it was deleted", so a deletion seen
        # during a write is never overwritten by that write's answer.
        self.lock = threading.Lock()
        self.known: dict[str, Any] | None = None
        self.known_at = 0.0
        self.owner_references = self._resolve_owner_references()
        # A deleted object is noticed through a watch (one open request, no polling) and written again at
        # once instead of at the next resync.
        self.on_deleted = on_deleted
        self.scope = scope
        self.watcher: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics | None = None,
                    on_deleted: Callable[[], None] | None = None, scope: Scope | None = None) -> NodeFeatureOutput:
        count = None if metrics is None else \
            (lambda verb, code: metrics.api_requests.labels(verb=verb, code=code).inc())
        try:
            kube = connect(config.kubeconfig, "gfd", config.kube_api_qps, config.kube_api_burst, count)
        except CredentialsError as e:
            raise OutputError(f"failed to create clientsets: {e}") from e
        try:
            return cls(kube, config.namespace, config.node_name, config.pod_name,
                       config.node_feature_resync_ns / 1e9, on_deleted, scope)
        except BaseException:
            kube.close()  # no output owns it: its caller never gets one to close
            raise

    # -- the Output interface ---------------------------------------------------------------------
    def needs_resync(self) -> bool:
        with self.lock:
            return self.known is None or time.monotonic() - self.known_at >= self.resync_seconds

    def write(self, labels: dict[str, str]) -> None:
        with self.lock:
            self._write(labels)
        self._start_watch()

    def remove(self) -> None:
        """The CR stays on exit (as upstream); owner references let GC remove it with the DaemonSet."""

    def close(self) -> None:
        self.kube.close()

    # -- internals --------------------------------------------------------------------------------
    def _write(self, labels: dict[str, str]) -> None:
        for _ in range(_CONFLICT_RETRIES):
            if self.known is None or time.monotonic() - self.known_at >= self.resync_seconds:
                self.known = self._get()
            try:
                self._apply(labels)
                return
            except Conflict:
                self.known = None  # someone else wrote: re-read and try again
        raise OutputError(f"failed to update NodeFeature object {self.name!r}: conflict persisted after "
                          f"{_CONFLICT_RETRIES} attempts")

    def _start_watch(self) -> None:
        scope = self.scope
        if self.on_deleted is None or scope is None or self.watcher is not None or scope.stopping.is_set():
            return
        with self.lock:
            version = (self.known or {}).get("metadata", {}).get("resourceVersion")
        watch = Watch(self.kube, self.name, self.custom.list_namespaced_custom_object, GROUP, VERSION,
                      self.namespace, PLURAL, field_selector=f"metadata.name={self.name}",
                      on_event=self._on_event, relist=self._relist, resource_version=version)
        self.watcher = scope.start_thread("nodefeature-watch", functools.partial(watch.run, scope.stopping))

    def _on_event(self, kind: str, _obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            log.warning("NodeFeature object deleted by someone else; writing it again", name=self.name)
            self._forget()

    def _relist(self) -> str | None:
        """After 410 Gone: read the object again; gone means deleted."""
        try:
            obj = self.kube.request("get", self.custom.get_namespaced_custom_object_with_http_info, GROUP, VERSION,
                                    self.namespace, PLURAL, self.name)
        except NotFound:
            self._forget()
            return None
        version: str | None = (obj.get("metadata") or {}).get("resourceVersion")
        return version

    def _forget(self) -> None:
        with self.lock:
            self.known = None
        if self.on_deleted is not None:
            self.on_deleted()

    def desired(self, labels: dict[str, str], base: dict[str, Any] | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = dict(base or {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND})
        metadata = dict(obj.get("metadata") or {})
        metadata.update(name=self.name, namespace=self.namespace, labels={NODE_NAME_LABEL: self.node_name})
        if self.owner_references:
            metadata["ownerReferences"] = self.owner_references
        else:
            metadata.pop("ownerReferences", None)
        obj["metadata"] = metadata
        obj["spec"] = {"features": {"flags": {}, "attributes": {}, "instances": {}}, "labels": dict(labels)}
        return obj

    def _apply(self, labels: dict[str, str]) -> None:
        if self.known is None:
            log.info("creating NodeFeature object", name=self.name)
            self.known = self._call("create", self.custom.create_namespaced_custom_object_with_http_info, GROUP,
                                    VERSION, self.namespace, PLURAL, self.desired(labels))
        else:
            body = self.desired(labels, self.known)
            if _same(body, self.known):
                log.debug("no changes in NodeFeature object", name=self.name)
                self.known_at = time.monotonic()
                return
            self.known = self._call("update", self.custom.replace_namespaced_custom_object_with_http_info, GROUP,
                                    VERSION, self.namespace, PLURAL, self.name, body)
        self.known_at = time.monotonic()

    def _get(self) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self._call("get", self.custom.get_namespaced_custom_object_with_http_info, GROUP,
                                             VERSION, self.namespace, PLURAL, self.name)
        except NotFound:
            return None
        self.known_at = time.monotonic()
        return obj

    def _call(self, verb: str, call: Callable[..., Any], *args: Any) -> Any:
        """One request; NotFound (a get) and Conflict are for the caller, every other failure an OutputError
        (after which the object is read again before the next write)."""
        try:
            return self.kube.request(verb, call, *args)
        except KubeError as e:
            if isinstance(e, Conflict) or (isinstance(e, NotFound) and verb == "get"):
                raise
            self.known = None
            raise OutputError(f"failed to {verb} NodeFeature object {self.name!r}: {e}",
                              retry_after=e.retry_after) from e

    def _resolve_owner_references(self) -> list[dict[str, Any]]:
        """Upstream: the DaemonSet (controller) and the Pod, read once per run; failures are not fatal."""
        if not self.pod_name:
            log.info("Pod name not provided, skipping owner reference resolution")
            return []
        try:
            pod = self.kube.request("get-pod", self.core.read_namespaced_pod_with_http_info, self.pod_name,
                                    self.namespace)
        except KubeError as e:
            log.warning("Failed to resolve owner references", error=str(e))
            return []
        meta = pod.get("metadata") or {}
        owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "DaemonSet"), None)
        if owner is None:
            log.info("Pod has no DaemonSet owner, skipping owner references", pod=self.pod_name)
            return []
        return [
            {"apiVersion": owner.get("apiVersion"), "kind": "DaemonSet", "name": owner.get("name"),
             "uid": owner.get("uid"), "controller": True},
            {"apiVersion": "v1", "kind": "Pod", "name": meta.get("name"), "uid": meta.get("uid")},
        ]


def _same(desired: dict[str, Any], current: dict[str, Any]) -> bool:
    """Semantic equality of what we own: labels, owner references and spec (nil == empty)."""
    d_meta, c_meta = desired.get("metadata") or {}, current.get("metadata") or {}
    return (
        (d_meta.get("labels") or {}) == (c_meta.get("labels") or {})
        and (d_meta.get("ownerReferences") or []) == (c_meta.get("ownerReferences") or [])
        and _spec(desired) == _spec(current)
    )


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    features = spec.get("features") or {}
    return {"labels": spec.get("labels") or {},
            "features": {k: features.get(k) or {} for k in ("flags", "attributes", "instances")}}
