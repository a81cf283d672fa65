"""The claim cache (plugin/dra/claimcache.py) on the real API server: claims allocated in this node's pool are
read without a request once the watch has them; anything else costs exactly one GET, and a claim replaced by
another of the same name is never answered from a stale copy."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
from kubernetes import client

from gfd.kube.client import Kube, connect
from gfd.lifecycle import Scope
from plugin.dra import claimcache
from plugin.dra.claimcache import ClaimCache
from plugin.dra.claims import ClaimRef
from tests.helpers import eventually

NODE = "gpu-node-1"
NS = "claimcache"
GROUP, VERSION, PLURAL = "resource.k8s.io", "v1", "resourceclaims"


class Counted:
    """The API requests a client sent, by verb."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def __call__(self, verb: str, code: str) -> None:
        self.requests.append(verb)


@pytest.fixture(scope="module")
def api(dra_api: tuple[client.ApiClient, str]) -> Iterator[client.ApiClient]:
    api_client = dra_api[0]
    client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    yield api_client
    client.CoreV1Api(api_client).delete_namespace(NS)


@pytest.fixture
def kube(dra_api: tuple[client.ApiClient, str]) -> Iterator[tuple[Kube, Counted]]:
    counted = Counted()
    k = connect(dra_api[1], "test", qps=1000, burst=1000, count=counted)
    yield k, counted
    k.close()


def make_claim(api: client.ApiClient, name: str, pool: str = NODE, driver: str = "gpu.nvidia.com") -> ClaimRef:
    """A claim allocated `gpu-0` of `pool`, its status written as the scheduler writes it."""
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceClaim", "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}})
    assert isinstance(created, dict)
    created["status"] = {"allocation": {"devices": {"results": [
        {"request": "gpu", "driver": driver, "pool": pool, "device": "gpu-0"}]}}}
    custom.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, name, created)
    return ClaimRef(NS, name, created["metadata"]["uid"])


def delete_claim(api: client.ApiClient, name: str) -> None:
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


@pytest.fixture
def watching(kube: tuple[Kube, Counted]) -> Iterator[ClaimCache]:
    cache = ClaimCache(kube[0], NODE)
    with Scope("claims") as scope:
        scope.on_stop(kube[0].cancel)
        scope.start_thread("claims", functools.partial(cache.run, scope.stopping))
        eventually(cache.synced.is_set, timeout=10)
        yield cache


def test_a_claim_allocated_here_is_read_without_a_request(api: client.ApiClient, kube: tuple[Kube, Counted],
                                                           watching: ClaimCache) -> None:
    others = len(watching)  # other suites' claims on the shared API server
    ref = make_claim(api, "here")
    eventually(lambda: len(watching) == others + 1, timeout=10)
    before = len(kube[1].requests)
    for _ in range(100):
        claim = watching.read(ref)
    assert claim.ref == ref and claim.allocated and [r.device for r in claim.results] == ["gpu-0"]
    assert len(kube[1].requests) == before
    delete_claim(api, "here")
    eventually(lambda: len(watching) == others, timeout=10)  # a deleted claim leaves the cache


def test_claims_allocated_elsewhere_are_not_kept_and_cost_one_get(api: client.ApiClient,
                                                                 kube: tuple[Kube, Counted],
                                                                 watching: ClaimCache) -> None:
    others = len(watching)
    other_node = make_claim(api, "elsewhere", pool="gpu-node-2")
    other_driver = make_claim(api, "other-driver", driver="example.com")
    ours = make_claim(api, "marker")  # the watch delivers in order: once this is cached, the others were seen
    eventually(lambda: len(watching) == others + 1, timeout=10)
    before = len(kube[1].requests)
    assert watching.read(other_node).results[0].pool == "gpu-node-2"  # the prepare core refuses it
    assert watching.read(other_driver).results[0].driver == "example.com"
    assert watching.read(ours).ref == ours
    assert kube[1].requests[before:] == ["get", "get"]
    for name in ("elsewhere", "other-driver", "marker"):
        delete_claim(api, name)


def test_a_missing_claim_is_worded_as_client_go_words_it(kube: tuple[Kube, Counted], api: client.ApiClient) -> None:
    cache = ClaimCache(kube[0], NODE)
    with pytest.raises(LookupError, match=r'^resourceclaims\.resource\.k8s\.io "gone" not found$'):
        cache.read(ClaimRef(NS, "gone", "uid-gone"))


def test_a_replaced_claim_is_read_again_not_answered_from_the_cache(api: client.ApiClient,
                                                                   kube: tuple[Kube, Counted]) -> None:
    """No watch runs here: the cache holds what one list saw, as a watch that lags behind would."""
    cache = ClaimCache(kube[0], NODE)
    old = make_claim(api, "replaced")
    cache._relist()
    before = len(kube[1].requests)
    assert cache.read(old).ref == old
    assert len(kube[1].requests) == before
    delete_claim(api, "replaced")
    new = make_claim(api, "replaced")
    assert new.uid != old.uid
    assert cache.read(new).ref == new  # the cached copy is another object: one GET
    assert kube[1].requests[before:] == ["get"]
    delete_claim(api, "replaced")


def test_a_relist_reads_every_page(api: client.ApiClient, kube: tuple[Kube, Counted],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ClaimCache(kube[0], NODE)
    cache._relist()
    others = len(cache)  # other suites' claims on the shared API server
    monkeypatch.setattr(claimcache, "LIST_PAGE", 1)
    refs = [make_claim(api, f"paged-{i}") for i in range(3)]
    every = client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert isinstance(every, dict)
    before = len(kube[1].requests)
    cache._relist()
    assert kube[1].requests[before:] == ["list"] * len(every["items"])  # one claim per page
    assert len(cache) == others + 3 and all(cache.read(r).ref == r for r in refs)
    assert kube[1].requests[before:] == ["list"] * len(every["items"])  # no GET: each came from the cache
    for ref in refs:
        delete_claim(api, ref.name)
