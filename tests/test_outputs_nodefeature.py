"""The NodeFeature output through the official kubernetes client against the loopback API server."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gfd.config import load_config, parse_command_line
from gfd.kube.client import Kube
from gfd.lifecycle import Scope
from gfd.metrics import Metrics
from gfd.outputs import OutputError
from gfd.outputs.nodefeature import NodeFeatureOutput
from tests.apiserver import FakeApiServer
from tests.helpers import eventually

NS = "gpu-ops"
COLLECTION = f"/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/{NS}/nodefeatures"
OBJECT = f"{COLLECTION}/nvidia-features-for-node1"
POD = f"/api/v1/namespaces/{NS}/pods/gfd-abc"
LABELS = {"nvidia.com/gpu.count": "8", "nvidia.com/vgpu.present": "false"}


def output(apiserver: FakeApiServer, tmp_path: Path, *extra: str, metrics: Metrics | None = None,
           on_deleted: Callable[[], None] | None = None, scope: Scope | None = None) -> NodeFeatureOutput:
    """The output as the daemon builds it; with `on_deleted` and `scope` it watches for deletions."""
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    config = load_config(parse_command_line(
        ["--kubeconfig", kubeconfig, "--namespace", NS, "--node-name", "node1", *extra], {}))
    out = NodeFeatureOutput.from_config(config, metrics or Metrics(), on_deleted, scope)
    out.kube.timeout = (1.0, 0.5)
    return out


@pytest.fixture
def scope() -> Iterator[Scope]:
    """Where the output's deletion watch runs, closed after the test."""
    with Scope("test") as s:
        yield s


def daemonset_pod(apiserver: FakeApiServer) -> None:
    apiserver.put_object(POD, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "gfd-abc", "namespace": NS, "uid": "pod-uid-1",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "gfd-ds", "uid": "ds-uid-1",
                             "controller": True, "blockOwnerDeletion": True}]}})


def test_first_write_creates_upstreams_object(apiserver: FakeApiServer, tmp_path: Path,
                                              nfd_schemas: dict[str, Any]) -> None:
    daemonset_pod(apiserver)
    out = output(apiserver, tmp_path, "--pod-name", "gfd-abc")
    out.write(LABELS)
    assert [(r.method, r.path.split("?")[0]) for r in apiserver.requests()] == [
        ("GET", POD), ("GET", OBJECT), ("POST", COLLECTION)]
    posted = apiserver.requests("POST")[0].body
    assert posted == {
        "apiVersion": "nfd.k8s-sigs.io/v1alpha1", "kind": "NodeFeature",
        "metadata": {"name": "nvidia-features-for-node1", "namespace": NS,
                     "labels": {"nfd.node.kubernetes.io/node-name": "node1"},
                     "ownerReferences": [
                         {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "gfd-ds", "uid": "ds-uid-1",
                          "controller": True},
                         {"apiVersion": "v1", "kind": "Pod", "name": "gfd-abc", "uid": "pod-uid-1"}]},
        "spec": {"features": {"flags": {}, "attributes": {}, "instances": {}}, "labels": LABELS}}
    jsonschema.validate(posted, nfd_schemas["NodeFeature"])


def test_unchanged_labels_make_no_request_and_changes_are_one_put(apiserver: FakeApiServer, tmp_path: Path,
                                                                  nfd_schemas: dict[str, Any]) -> None:
    out = output(apiserver, tmp_path)
    out.write(LABELS)
    apiserver.clear_requests()
    for _ in range(50):
        assert not out.needs_resync()
    changed = LABELS | {"nvidia.com/gpu.count": "7"}
    out.write(changed)
    puts = apiserver.requests()
    assert [r.method for r in puts] == ["PUT"]
    assert puts[0].body["metadata"]["resourceVersion"] == "100"
    assert "ownerReferences" not in puts[0].body["metadata"]
    jsonschema.validate(puts[0].body, nfd_schemas["NodeFeature"])
    assert apiserver.get_object(OBJECT)["spec"]["labels"] == changed  # type: ignore[index]


def test_conflict_rereads_and_retries(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path)
    out.write(LABELS)
    other = apiserver.get_object(OBJECT)
    assert other is not None
    other["metadata"]["annotations"] = {"someone": "else"}
    apiserver.put_object(OBJECT, other)  # bumps resourceVersion behind our back
    apiserver.clear_requests()
    out.write(LABELS | {"nvidia.com/gpu.count": "4"})
    assert [(r.method, r.path) for r in apiserver.requests()] == [("PUT", OBJECT), ("GET", OBJECT), ("PUT", OBJECT)]
    stored = apiserver.get_object(OBJECT)
    assert stored is not None
    assert stored["metadata"]["annotations"] == {"someone": "else"}  # other writers' metadata survives
    assert stored["spec"]["labels"]["nvidia.com/gpu.count"] == "4"


def test_create_race_already_exists(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path)
    apiserver.fail("GET", OBJECT, status=404)  # looks absent ...
    apiserver.put_object(OBJECT, {"apiVersion": "nfd.k8s-sigs.io/v1alpha1", "kind": "NodeFeature",
                                  "metadata": {"name": "nvidia-features-for-node1", "namespace": NS}})
    out.write(LABELS)  # ... POST gets 409 AlreadyExists, then GET + PUT
    assert [r.method for r in apiserver.requests()] == ["GET", "POST", "GET", "PUT"]
    assert apiserver.get_object(OBJECT)["spec"]["labels"] == LABELS  # type: ignore[index]


@pytest.mark.parametrize(("status", "retry_after"), [(429, 7.0), (500, None), (503, 2.0)])
def test_server_errors_raise_retryable_output_errors(apiserver: FakeApiServer, tmp_path: Path, status: int,
                                                     retry_after: float | None) -> None:
    metrics = Metrics()
    out = output(apiserver, tmp_path, metrics=metrics)
    apiserver.fail("GET", OBJECT, status=status, retry_after=retry_after)
    with pytest.raises(OutputError) as e:
        out.write(LABELS)
    assert e.value.retry_after == retry_after
    assert str(status) in str(e.value)
    out.write(LABELS)  # the next attempt works
    assert apiserver.get_object(OBJECT) is not None
    codes = {(s.labels["verb"], s.labels["code"]) for m in metrics.api_requests.collect()
             for s in m.samples if s.name.endswith("_total")}
    assert ("get", str(status)) in codes and ("create", "201") in codes


def test_slow_response_beyond_the_timeout(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path)
    apiserver.fail("GET", OBJECT, status=0, delay=1.5)
    started = time.monotonic()
    with pytest.raises(OutputError, match="Timeout"):
        out.write(LABELS)
    assert time.monotonic() - started < 1.4
    out.write(LABELS)
    assert apiserver.get_object(OBJECT) is not None


def test_deleted_object_is_recreated_at_resync(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path, "--node-feature-resync", "200ms")
    out.write(LABELS)
    apiserver.delete_object(OBJECT)
    assert not out.needs_resync()
    time.sleep(0.25)
    assert out.needs_resync()
    out.write(LABELS)
    assert apiserver.get_object(OBJECT)["spec"]["labels"] == LABELS  # type: ignore[index]


def test_owner_references_skipped_without_daemonset_owner_or_pod(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path, "--pod-name", "missing-pod")
    out.write(LABELS)
    assert "ownerReferences" not in apiserver.get_object(OBJECT)["metadata"]  # type: ignore[index]


def test_required_node_name(apiserver: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    config = load_config(parse_command_line(["--kubeconfig", kubeconfig], {}))
    with pytest.raises(OutputError, match="required flag node-name not set"):
        NodeFeatureOutput.from_config(config)


def test_no_cluster_config_is_a_clear_error() -> None:
    config = load_config(parse_command_line(["--node-name", "n"], {}))
    with pytest.raises(OutputError, match="failed to create clientsets"):
        NodeFeatureOutput.from_config(config)


def api_count(metrics: Metrics, verb: str, code: str) -> float:
    return metrics.registry.get_sample_value("gfd_api_requests_total", {"verb": verb, "code": code}) or 0.0


def gaps(requests: list[Any]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(requests)]


def test_a_server_that_ends_every_watch_at_once_gets_one_watch_a_second_then_fewer(
        apiserver: FakeApiServer, tmp_path: Path, scope: Scope) -> None:
    """Issue 20.1: before, ~1 000 watch requests a second; client-go backs off a watch that ends too soon."""
    metrics = Metrics()
    out = output(apiserver, tmp_path, metrics=metrics, on_deleted=lambda: None, scope=scope)
    apiserver.end_watches_at_once()
    out.write(LABELS)  # starts the deletion watch
    time.sleep(4.0)
    scope.close()
    assert not scope.hung
    watches = apiserver.watches()
    # Backoff from 1 s, doubled each time, jittered into [d/2, d]: opened at 0, ~1, ~2.5 and maybe ~5 s.
    assert 2 <= len(watches) <= 4, gaps(watches)
    assert gaps(watches)[0] >= 0.45 and gaps(watches) == sorted(gaps(watches))
    assert api_count(metrics, "watch", "200") == len(watches)  # what the server answered, each once


def test_a_watch_answered_429_waits_its_retry_after(apiserver: FakeApiServer, tmp_path: Path, scope: Scope) -> None:
    metrics = Metrics()
    out = output(apiserver, tmp_path, metrics=metrics, on_deleted=lambda: None, scope=scope)
    apiserver.fail("GET", "watch=true", status=429, retry_after=2)
    apiserver.end_watches_at_once()
    out.write(LABELS)
    eventually(lambda: api_count(metrics, "watch", "200") == 1, timeout=5)
    scope.close()
    assert gaps(apiserver.watches())[0] >= 1.95  # the backoff alone would have been at most 1 s
    assert api_count(metrics, "watch", "429") == 1


def test_a_watch_is_counted_when_the_server_answers_not_before(apiserver: FakeApiServer, tmp_path: Path,
                                                              scope: Scope) -> None:
    metrics = Metrics()
    out = output(apiserver, tmp_path, metrics=metrics, on_deleted=lambda: None, scope=scope)
    apiserver.fail("GET", "watch=true", status=0, delay=1.0)  # answered after a second
    out.write(LABELS)
    eventually(lambda: len(apiserver.watches()) == 1)
    assert api_count(metrics, "watch", "200") == 0
    eventually(lambda: api_count(metrics, "watch", "200") == 1, timeout=3)


def test_a_stop_ends_a_watch_in_progress_at_once(apiserver: FakeApiServer, tmp_path: Path, scope: Scope) -> None:
    out = output(apiserver, tmp_path, on_deleted=lambda: None, scope=scope)
    out.write(LABELS)
    eventually(lambda: len(apiserver.watches()) == 1)
    time.sleep(0.2)  # the watch is open and waiting for events
    started = time.monotonic()
    scope.close()
    assert not scope.hung and not scope.alive() and time.monotonic() - started < 1.0


def test_a_deletion_seen_while_a_write_is_answered_is_not_overwritten_by_that_answer(
        apiserver: FakeApiServer, tmp_path: Path, scope: Scope) -> None:
    """The watch thread and the write thread share what was last written: a deletion the watch sees while
    a write is in flight must leave the object to be written again, not be lost under the write's answer."""
    deletions = []
    out = output(apiserver, tmp_path, on_deleted=lambda: deletions.append(1), scope=scope)
    out.kube.timeout = (1.0, 5.0)
    out.write(LABELS)
    eventually(lambda: len(apiserver.watches()) == 1)
    time.sleep(0.2)
    changed = LABELS | {"nvidia.com/gpu.count": "7"}

    def delete_and_let_the_watch_see_it() -> None:  # after the PUT took effect, before its answer
        apiserver.delete_object(OBJECT)
        with contextlib.suppress(AssertionError):  # with the lock, the watch waits for the write to finish
            eventually(lambda: bool(deletions), timeout=0.5)

    apiserver.before_answering("PUT", OBJECT, delete_and_let_the_watch_see_it)
    out.write(changed)
    eventually(lambda: bool(deletions))
    out.write(changed)  # the same labels: written again because the object is gone
    assert apiserver.get_object(OBJECT)["spec"]["labels"] == changed  # type: ignore[index]


def test_writes_racing_deletions_stress(apiserver: FakeApiServer, tmp_path: Path, scope: Scope) -> None:
    """Many writes, each answered while its object is being deleted (the watch thread and the write thread
    race for what was last written): after each, once the watch has seen the deletion, writing the same
    labels again puts them back on the server (never a stale 'already written')."""
    seen: list[int] = []
    out = output(apiserver, tmp_path, "--kube-api-qps=1000", "--kube-api-burst=1000",
                 on_deleted=lambda: seen.append(1), scope=scope)
    out.kube.timeout = (1.0, 5.0)
    out.write(LABELS)
    eventually(lambda: len(apiserver.watches()) == 1)
    for n in range(20):
        labels = LABELS | {"nvidia.com/gpu.count": str(n)}
        before = len(seen)
        apiserver.before_answering("P", COLLECTION, lambda: apiserver.delete_object(OBJECT))  # PUT or POST
        with contextlib.suppress(OutputError):
            out.write(labels)
        eventually(lambda: len(seen) > before)  # noqa: B023 - waited for inside the iteration
        out.write(labels)
        assert apiserver.get_object(OBJECT)["spec"]["labels"] == labels, n  # type: ignore[index]


def test_a_stop_during_start_up_cancels_the_owner_reference_read(apiserver: FakeApiServer, tmp_path: Path,
                                                                  scope: Scope) -> None:
    """Review of issue 22: the Pod read for the owner references ran before the stop could cancel the
    client, so a stop during start-up waited for it (up to ~15 s against a hung API server)."""
    daemonset_pod(apiserver)
    apiserver.fail("GET", POD, status=0, delay=5.0)  # answered, but only after 5 s
    built: list[NodeFeatureOutput] = []
    starting = threading.Thread(target=lambda: built.append(output(apiserver, tmp_path, "--pod-name", "gfd-abc",
                                                                   scope=scope)))
    starting.start()
    eventually(lambda: bool(apiserver.requests("GET")))
    stopped = time.monotonic()
    scope.stop()
    starting.join(5)
    assert not starting.is_alive() and time.monotonic() - stopped < 1.5
    assert built[0].owner_references == []  # the read was cut: not fatal, as any failure to read them


def test_a_client_whose_output_cannot_be_built_is_closed(apiserver: FakeApiServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[Kube] = []
    monkeypatch.setattr(Kube, "close", lambda self: closed.append(self))
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    config = load_config(parse_command_line(["--kubeconfig", kubeconfig, "--namespace", NS], {}))
    with pytest.raises(OutputError, match="node-name not set"):
        NodeFeatureOutput.from_config(config)
    assert len(closed) == 1
