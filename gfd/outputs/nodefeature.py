"""Labels as an NFD `NodeFeature` custom resource (nfd.k8s-sigs.io/v1alpha1), upstream's object shape.

Unlike upstream (a GET every pass, exit on any API error) this output remembers the object it last
wrote and its resourceVersion: it writes only when called with changed labels, reads only on a
conflict, after an error and once per resync period, and turns every API failure into an
OutputError the daemon retries with backoff.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from gfd import __version__
from gfd.config import Config
from gfd.outputs import OutputError

if TYPE_CHECKING:
    from gfd.metrics import Metrics

log = structlog.get_logger("gfd.outputs")

GROUP, VERSION, PLURAL, KIND = "nfd.k8s-sigs.io", "v1alpha1", "nodefeatures", "NodeFeature"
NODE_NAME_LABEL = "nfd.node.kubernetes.io/node-name"
_CONFLICT_RETRIES = 3
REQUEST_TIMEOUT = (5.0, 10.0)  # connect, read (seconds): a hung API server must not hold the loop


class TokenBucket:
    """Client-side rate limit (upstream's --kube-api-qps / --kube-api-burst)."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps, self.capacity = qps, max(1, burst)
        self.tokens = float(self.capacity)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.qps)
            self.updated = now
            wait = 0.0 if self.tokens >= 1 or self.qps <= 0 else (1 - self.tokens) / self.qps
            self.tokens -= 1
        if wait:
            time.sleep(wait)


class NodeFeatureOutput:
    def __init__(self, api_client: Any, namespace: str, node_name: str, pod_name: str = "",
                 resync_seconds: float = 3600.0, qps: float = 5.0, burst: int = 10,
                 metrics: Metrics | None = None, on_deleted: Callable[[], None] | None = None) -> None:
        from kubernetes import client

        if not node_name:
            raise OutputError("failed to create label outputer: required flag node-name not set")
        if not namespace:
            raise OutputError("failed to create label outputer: required flag namespace not set")
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace, self.node_name, self.pod_name = namespace, node_name, pod_name
        self.name = f"nvidia-features-for-{node_name}"
        self.resync_seconds = resync_seconds
        self.bucket = TokenBucket(qps, burst)
        self.metrics = metrics
        self.request_timeout = REQUEST_TIMEOUT
        self.known: dict[str, Any] | None = None  # the object as the server last returned it
        self.known_at = 0.0
        self.owner_references = self._resolve_owner_references()
        # A deleted object is noticed through a watch (one open request, no polling) and written again at
        # once instead of at the next resync.
        self.on_deleted = on_deleted
        self.closed = threading.Event()
        self.watcher: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics | None = None,
                    on_deleted: Callable[[], None] | None = None) -> NodeFeatureOutput:
        from kubernetes import client
        from kubernetes import config as kubeconfig

        configuration = client.Configuration()
        try:
            if config.kubeconfig:
                kubeconfig.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=config.kubeconfig, client_configuration=configuration)
            else:
                kubeconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (kubeconfig.ConfigException, OSError) as e:
            raise OutputError(f"failed to create clientsets: {e}") from None
        configuration.retries = 0  # the daemon owns retries and backoff
        api_client = client.ApiClient(configuration)
        api_client.user_agent = f"gfd/{__version__} (linux) python-kubernetes"
        return cls(api_client, config.namespace, config.node_name, config.pod_name,
                   config.node_feature_resync_ns / 1e9, config.kube_api_qps, config.kube_api_burst, metrics,
                   on_deleted)

    # -- the Output interface ---------------------------------------------------------------------
    def needs_resync(self) -> bool:
        return self.known is None or time.monotonic() - self.known_at >= self.resync_seconds

    def write(self, labels: dict[str, str]) -> None:
        for _ in range(_CONFLICT_RETRIES):
            if self.needs_resync():
                self.known = self._get()
            try:
                self._apply(labels)
                self._start_watch()
                return
            except _Conflict:
                self.known = None  # someone else wrote: re-read and try again
        raise OutputError(f"failed to update NodeFeature object {self.name!r}: conflict persisted after "
                          f"{_CONFLICT_RETRIES} attempts")

    def remove(self) -> None:
        """The CR stays on exit (as upstream); owner references let GC remove it with the DaemonSet."""

    def close(self) -> None:
        self.closed.set()

    def _start_watch(self) -> None:
        if self.on_deleted is not None and self.watcher is None:
            self.watcher = threading.Thread(target=self._watch_deletions, name="nodefeature-watch", daemon=True)
            self.watcher.start()

    def _watch_deletions(self) -> None:
        from kubernetes import watch

        from gfd.backoff import Backoff

        backoff = Backoff(initial=1.0, cap=60.0)
        while not self.closed.is_set():
            known = self.known
            version = (known or {}).get("metadata", {}).get("resourceVersion")
            try:
                self._count("watch", "200")
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                    field_selector=f"metadata.name={self.name}", resource_version=version, timeout_seconds=300,
                    _request_timeout=(REQUEST_TIMEOUT[0], 330))
                for event in stream:
                    if self.closed.is_set():
                        return
                    if event["type"] == "DELETED":
                        log.warning("NodeFeature object deleted by someone else; writing it again", name=self.name)
                        self.known = None
                        if self.on_deleted is not None:
                            self.on_deleted()
                backoff.reset()
            except Exception as e:  # 410 Gone, connection errors: watch again after a pause
                self._count("watch", str(getattr(e, "status", "error")))
                self.closed.wait(backoff.next_delay())

    # -- internals --------------------------------------------------------------------------------
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
            self.known = self._call("create", self.custom.create_namespaced_custom_object, GROUP, VERSION,
                                    self.namespace, PLURAL, self.desired(labels))
        else:
            body = self.desired(labels, self.known)
            if _same(body, self.known):
                log.debug("no changes in NodeFeature object", name=self.name)
                self.known_at = time.monotonic()
                return
            self.known = self._call("update", self.custom.replace_namespaced_custom_object, GROUP, VERSION,
                                    self.namespace, PLURAL, self.name, body)
        self.known_at = time.monotonic()

    def _get(self) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self._call("get", self.custom.get_namespaced_custom_object, GROUP, VERSION,
                                             self.namespace, PLURAL, self.name)
        except _NotFound:
            return None
        self.known_at = time.monotonic()
        return obj

    def _call(self, verb: str, fn: Any, *args: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        self.bucket.take()
        try:
            result = fn(*args, _request_timeout=self.request_timeout)
        except ApiException as e:
            self._count(verb, str(e.status))
            if e.status == 404 and verb == "get":
                raise _NotFound from None
            if e.status == 409:
                raise _Conflict from None
            self.known = None
            retry_after = _retry_after(e.headers)
            raise OutputError(f"failed to {verb} NodeFeature object {self.name!r}: {e.status} {e.reason}",
                              retry_after=retry_after) from None
        except (HTTPError, OSError) as e:
            self._count(verb, "error")
            self.known = None
            raise OutputError(f"failed to {verb} NodeFeature object {self.name!r}: {type(e).__name__}: {e}") \
                from None
        self._count(verb, "201" if verb == "create" else "200")
        return result

    def _count(self, verb: str, code: str) -> None:
        if self.metrics is not None:
            self.metrics.api_requests.labels(verb=verb, code=code).inc()

    def _resolve_owner_references(self) -> list[dict[str, Any]]:
        """Upstream: the DaemonSet (controller) and the Pod, read once per run; failures are not fatal."""
        if not self.pod_name:
            log.info("Pod name not provided, skipping owner reference resolution")
            return []
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self.bucket.take()
            pod = self.core.read_namespaced_pod(self.pod_name, self.namespace, _request_timeout=self.request_timeout)
            self._count("get-pod", "200")
        except (ApiException, HTTPError, OSError) as e:
            self._count("get-pod", str(getattr(e, "status", "error")))
            log.warning("Failed to resolve owner references", error=str(e).splitlines()[0])
            return []
        meta = pod.metadata
        owner = next((o for o in (meta.owner_references if meta else None) or [] if o.kind == "DaemonSet"), None)
        if meta is None or owner is None:
            log.info("Pod has no DaemonSet owner, skipping owner references", pod=self.pod_name)
            return []
        return [
            {"apiVersion": owner.api_version, "kind": "DaemonSet", "name": owner.name, "uid": owner.uid,
             "controller": True},
            {"apiVersion": "v1", "kind": "Pod", "name": meta.name, "uid": meta.uid},
        ]


class _NotFound(Exception):
    pass


class _Conflict(Exception):
    pass


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers["Retry-After"]) if headers and "Retry-After" in headers else None
    except (TypeError, ValueError):
        return None


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
