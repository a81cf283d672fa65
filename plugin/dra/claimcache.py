"""The claims prepare reads, from a cache that one watch on resourceclaims keeps current (gfd.kube.watch), so a
prepare in the steady state sends no request: NVIDIA's driver GETs every claim, and with client-go's default
rate limit (5/s) back-to-back prepares wait for it (issue 23: p50 197 ms).

Only claims allocated in this node's pool for our driver are kept (parsed, a few hundred bytes each); the watch
itself sees every claim of the cluster (the API has no field selector on an allocation's node). A claim the
cache does not have as the kubelet names it (not seen yet, not allocated yet, or another object of the same
name: its UID differs) is read with one GET, whose answer the prepare core checks as always.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from gfd.kube.client import CustomObjects, Kube
from gfd.kube.errors import NotFound
from gfd.kube.watch import Watch
from plugin.dra.claims import ClaimFormatError, ClaimRef, ResourceClaim, parse_claim
from plugin.dra.config import DRIVER_NAME

log = structlog.get_logger("plugin.dra")

GROUP, VERSION, PLURAL = "resource.k8s.io", "v1", "resourceclaims"
LIST_PAGE = 500  # claims per list request at a (re)list


class ClaimCache:
    """The ClaimReader of plugin.dra.prepare; `run` is the watch loop that fills it."""

    def __init__(self, kube: Kube, node_name: str, on_miss: Callable[[], None] | None = None) -> None:
        """`on_miss` is told of every read the cache could not answer (each one GET)."""
        self.kube, self.node_name, self.on_miss = kube, node_name, on_miss
        self.api = CustomObjects(kube.api_client)
        self._claims: dict[tuple[str, str], ResourceClaim] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()  # the first list has filled the cache

    def read(self, ref: ClaimRef) -> ResourceClaim:
        with self._lock:
            cached = self._claims.get((ref.namespace, ref.name))
        if cached is not None and cached.ref.uid == ref.uid:
            return cached
        if self.on_miss is not None:
            self.on_miss()
        try:
            obj = self.kube.request("get", self.api.get_namespaced_custom_object_with_http_info, GROUP, VERSION,
                                    ref.namespace, PLURAL, ref.name)
        except NotFound as e:
            raise LookupError(f'{PLURAL}.{GROUP} "{ref.name}" not found') from e  # client-go's wording
        return parse_claim(obj)

    def __len__(self) -> int:
        with self._lock:
            return len(self._claims)

    def run(self, stopping: threading.Event) -> None:
        Watch(self.kube, PLURAL, self.api.list_cluster_custom_object, GROUP, VERSION, PLURAL,
              on_event=self._on_event, relist=self._relist).run(stopping)

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        claim = self._ours(obj)
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        with self._lock:
            if kind == "DELETED" or claim is None:
                self._claims.pop(key, None)
            else:
                self._claims[key] = claim

    def _relist(self) -> str | None:
        """Every claim, page by page; the cache is replaced at once when the last page has arrived."""
        claims: dict[tuple[str, str], ResourceClaim] = {}
        token: str | None = None
        while True:
            page = self.kube.request("list", self.api.list_cluster_custom_object_with_http_info, GROUP, VERSION,
                                     PLURAL, limit=LIST_PAGE, _continue=token)
            for obj in page.get("items") or []:
                claim = self._ours(obj)
                if claim is not None:
                    claims[(claim.ref.namespace, claim.ref.name)] = claim
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if token is None:
                break
        with self._lock:
            self._claims = claims
        self.synced.set()
        log.debug("claims listed", allocated_here=len(claims))
        version: str | None = meta.get("resourceVersion")
        return version

    def _ours(self, obj: dict[str, Any]) -> ResourceClaim | None:
        """The claim, when it is allocated a device of our driver in this node's pool."""
        try:
            claim = parse_claim(obj)
        except ClaimFormatError as e:  # not ours to judge; a prepare of it GETs it and reports the problem
            log.debug("claim not cached", error=str(e))
            return None
        if any(r.driver == DRIVER_NAME and r.pool == self.node_name for r in claim.results):
            return claim
        return None
