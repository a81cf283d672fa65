"""The ResourceSlice publisher (plugin/dra/publisher.py) on the real API server: slices owned by the Node, no
request on a steady node, slices the kubelet deletes written again, the pool's generation bumped on a change,
slices the pool no longer needs removed, taints compared without the server's timeAdded, failures retried."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from kubernetes import client

from gfd.kube.client import Kube, connect
from gfd.kube.errors import ServerError
from gfd.lifecycle import Scope
from plugin.dra import taints
from plugin.dra.publisher import SlicePublisher
from plugin.dra.slices import Pool, pool
from tests import builders
from tests.helpers import eventually, simulated_model

NODE = "gpu-node-1"
GROUP, VERSION, PLURAL = "resource.k8s.io", "v1", "resourceslices"
SELECTOR = f"spec.nodeName={NODE}"


@dataclass
class Running:
    publisher: SlicePublisher
    writes: list[str]
    requests: list[str]
    stop: Callable[[], None]


@pytest.fixture
def api(dra_api: tuple[client.ApiClient, str]) -> Iterator[client.ApiClient]:
    yield dra_api[0]
    client.CustomObjectsApi(dra_api[0]).delete_collection_cluster_custom_object(GROUP, VERSION, PLURAL)


@pytest.fixture
def start(dra_api: tuple[client.ApiClient, str]) -> Iterator[Callable[[], Running]]:
    """start(): a publisher with its two loops running, as the program runs them."""
    stops: list[Callable[[], None]] = []

    def _start() -> Running:
        requests: list[str] = []
        kube = connect(dra_api[1], "test", qps=1000, burst=1000, count=lambda verb, code: requests.append(verb))
        writes: list[str] = []
        publisher = SlicePublisher(kube, NODE, writes.append)
        publisher.backoff.initial = 0.05
        scope = Scope("publisher")
        scope.on_stop(kube.cancel)
        scope.callback("client", kube.close)
        scope.start_thread("resourceslices watch", functools.partial(publisher.watch, scope.stopping))
        scope.start_thread("resourceslices", functools.partial(publisher.run, scope.stopping), wake=publisher.wake)
        stop = scope.close
        stops.append(stop)
        return Running(publisher, writes, requests, stop)

    yield _start
    for stop in stops:
        stop()


def slices(api: client.ApiClient) -> list[dict[str, Any]]:
    answer = client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL, field_selector=SELECTOR)
    assert isinstance(answer, dict)
    return sorted(answer["items"], key=lambda s: s["metadata"]["name"])


def contents(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the pool says of each slice: the spec without the pool, taints without the server's timeAdded."""
    out = []
    for s in found:
        spec = {k: v for k, v in s["spec"].items() if k != "pool"}
        for device in spec.get("devices", ()):
            for taint in device.get("taints", ()):
                taint.pop("timeAdded", None)
        out.append(spec)
    return sorted(out, key=repr)


def published(api: client.ApiClient, p: Pool, generation: int) -> Callable[[], bool]:
    def check() -> bool:
        found = slices(api)
        return contents(found) == sorted(p.contents, key=repr) and all(
            s["spec"]["pool"] == {"name": NODE, "generation": generation, "resourceSliceCount": len(p.contents)}
            for s in found)
    return check


def test_slices_are_created_owned_by_the_node_and_a_steady_node_writes_nothing(api: client.ApiClient,
                                                                              start: Callable[[], Running]) -> None:
    desired = pool(simulated_model("dgx-a100"), NODE)
    run = start()
    run.publisher.publish(desired)
    eventually(published(api, desired, 1), timeout=10)
    node_uid = client.CoreV1Api(api).read_node(NODE).metadata.uid  # type: ignore[union-attr]
    (created,) = slices(api)
    assert created["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid, "controller": True}]
    assert created["metadata"]["name"].startswith(f"00000-gpu.nvidia.com-{NODE}-")
    eventually(lambda: run.publisher.settled)
    assert run.writes == ["create"]
    # The same pool again, and a new process finding the slices in place: no write, no request but the watch's.
    run.publisher.publish(pool(simulated_model("dgx-a100"), NODE))
    eventually(lambda: run.publisher.settled)
    assert run.writes == ["create"]
    run.stop()
    again = start()
    again.publisher.publish(desired)
    eventually(lambda: again.publisher.settled, timeout=10)
    assert again.writes == [] and set(again.requests) <= {"list", "watch"}


def test_slices_the_kubelet_deletes_are_written_again(api: client.ApiClient, start: Callable[[], Running]) -> None:
    desired = pool(simulated_model("dgx-h100"), NODE)
    first = start()
    first.publisher.publish(desired)
    eventually(published(api, desired, 1), timeout=10)
    first.stop()
    run = start()  # a restarted driver: it finds its slices and writes nothing
    run.publisher.publish(desired)
    eventually(lambda: run.publisher.settled, timeout=10)
    # What the kubelet does at its start: every ResourceSlice of its node, deleted.
    client.ResourceV1Api(api).delete_collection_resource_slice(field_selector=SELECTOR)
    took = eventually(published(api, desired, 2), timeout=10)  # never the generation the pool had before
    print(f"republished {took:.2f} s after the deletion")
    eventually(lambda: run.writes == ["create"])


def test_a_change_bumps_the_generation_of_every_slice_and_extra_slices_go(api: client.ApiClient,
                                                                         start: Callable[[], Running]) -> None:
    """A MIG node's pool has a counter slice and a device slice; a node without MIG has one slice."""
    mig = replace(builders.mig(0, "1g.5gb", 7), gi_profile_id=19, placement=(0, 1))
    two = pool(builders.model(builders.gpu(0, mig), builders.gpu(1)), NODE)
    assert len(two.contents) == 2
    run = start()
    run.publisher.publish(two)
    eventually(published(api, two, 1), timeout=10)
    one = pool(builders.model(builders.gpu(0), builders.gpu(1)), NODE)
    run.publisher.publish(one)
    eventually(published(api, one, 2), timeout=10)
    eventually(lambda: run.writes == ["create", "create", "update", "delete"])


def test_taints_are_compared_without_the_servers_time_and_keep_it(api: client.ApiClient,
                                                                 start: Callable[[], Running]) -> None:
    model = simulated_model("dgx-a100")
    sick = taints.DeviceHealth({(model.gpus[2].uuid, -1, -1): (taints.xid(79),)})
    run = start()
    run.publisher.publish(pool(model, NODE, health=sick))
    eventually(published(api, pool(model, NODE, health=sick), 1), timeout=10)
    stamped = next(d for d in slices(api)[0]["spec"]["devices"] if d["name"] == "gpu-2")["taints"]
    assert stamped[0]["key"] == "gpu.nvidia.com/xid" and "timeAdded" in stamped[0]
    eventually(lambda: run.publisher.settled)
    run.publisher.publish(pool(model, NODE, health=sick))  # the same health again: not a change
    eventually(lambda: run.publisher.settled)
    assert run.writes == ["create"]
    sicker = taints.DeviceHealth({**sick.units, (model.gpus[5].uuid, -1, -1): (taints.gpu_lost(),)})
    run.publisher.publish(pool(model, NODE, health=sicker))
    eventually(published(api, pool(model, NODE, health=sicker), 2), timeout=10)
    kept = next(d for d in slices(api)[0]["spec"]["devices"] if d["name"] == "gpu-2")["taints"]
    assert kept == stamped  # gpu-2 was tainted first at its first time, not at the republish
    run.publisher.publish(pool(model, NODE))  # recovered: the taints go
    eventually(published(api, pool(model, NODE), 3), timeout=10)


def test_a_failed_write_is_retried(api: client.ApiClient, start: Callable[[], Running],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An injected 500 on the first create (a stand-in for a failing API server)."""
    run = start()
    real = Kube.request
    failures = [ServerError("500 Internal Server Error", 500)]

    def failing(self: Kube, verb: str, *args: Any, **kwargs: Any) -> Any:
        if verb == "create" and failures:
            raise failures.pop()
        return real(self, verb, *args, **kwargs)

    monkeypatch.setattr(Kube, "request", failing)
    desired = pool(simulated_model("t4"), NODE)
    run.publisher.publish(desired)
    eventually(published(api, desired, 1), timeout=10)
    eventually(lambda: run.writes == ["create"])
    assert not failures
