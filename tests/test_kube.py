"""gfd.kube: the client every program builds, its request budget, typed errors, cancellation and the one
watch loop, against the loopback API server (faults) through the official client."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gfd.kube.client import Kube, connect, core_get
from gfd.kube.errors import (
    MAX_RETRY_AFTER_S,
    Conflict,
    CredentialsError,
    Forbidden,
    Gone,
    KubeError,
    NotFound,
    ServerError,
    TooManyRequests,
    Unreachable,
    retry_after,
)
from gfd.kube.watch import Watch
from tests.apiserver import FakeApiServer
from tests.helpers import eventually

NODE = "/api/v1/nodes/n1"


@pytest.fixture
def counted() -> list[tuple[str, str]]:
    return []


def kube_for(apiserver: FakeApiServer, tmp_path: Path, counted: list[tuple[str, str]], qps: float = 100.0,
             burst: int = 100) -> tuple[Kube, Any]:
    kube = connect(apiserver.kubeconfig(str(tmp_path / "kubeconfig")), "test", qps, burst,
                   lambda verb, code: counted.append((verb, code)))
    return kube, client.CoreV1Api(kube.api_client)


@pytest.mark.parametrize(("status", "kind"), [(401, Forbidden), (403, Forbidden), (404, NotFound), (409, Conflict),
                                              (410, Gone), (429, TooManyRequests), (500, ServerError),
                                              (503, ServerError), (422, KubeError)])
def test_every_answer_is_its_typed_error_chained_to_the_api_exception(
        apiserver: FakeApiServer, tmp_path: Path, counted: list[tuple[str, str]], status: int,
        kind: type[KubeError]) -> None:
    kube, core = kube_for(apiserver, tmp_path, counted)
    apiserver.fail("GET", NODE, status=status, retry_after=3)
    with pytest.raises(kind) as e:
        kube.request("get", core.read_node_with_http_info, "n1")
    assert type(e.value) is kind
    assert isinstance(e.value.__cause__, ApiException) and e.value.status == status
    assert str(e.value) == f"{status} {HTTPStatus(status).phrase}" and e.value.retry_after == 3.0
    assert counted == [("get", str(status))]


def test_a_success_is_counted_with_the_status_the_server_sent(apiserver: FakeApiServer, tmp_path: Path,
                                                             counted: list[tuple[str, str]]) -> None:
    kube, core = kube_for(apiserver, tmp_path, counted)
    apiserver.put_object(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    node = kube.request("get", core.read_node_with_http_info, "n1")
    assert node.metadata.name == "n1" and counted == [("get", "200")]


def test_a_core_object_read_without_corev1api_is_a_dict_with_the_same_errors(
        apiserver: FakeApiServer, tmp_path: Path, counted: list[tuple[str, str]]) -> None:
    kube, _ = kube_for(apiserver, tmp_path, counted)
    read_node = core_get(kube.api_client, "/api/v1/nodes/{name}")
    apiserver.put_object(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    node = kube.request("get", read_node, name="n1")
    assert node["metadata"]["name"] == "n1" and node["metadata"]["uid"]
    with pytest.raises(NotFound) as e:
        kube.request("get", read_node, name="n2")
    assert isinstance(e.value.__cause__, ApiException)
    assert counted == [("get", "200"), ("get", "404")]


def test_no_answer_is_unreachable_with_its_cause(tmp_path: Path, counted: list[tuple[str, str]]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text('{"apiVersion": "v1", "kind": "Config", "current-context": "c", "clusters": [{"name": "c",'
                          ' "cluster": {"server": "http://127.0.0.1:1"}}], "contexts": [{"name": "c", "context":'
                          ' {"cluster": "c", "user": "u"}}], "users": [{"name": "u", "user": {}}]}')
    kube = connect(str(kubeconfig), "test", count=lambda verb, code: counted.append((verb, code)))
    with pytest.raises(Unreachable) as e:
        kube.request("get", client.CoreV1Api(kube.api_client).read_node_with_http_info, "n1")
    assert e.value.status is None and e.value.__cause__ is not None and "\n" not in str(e.value)
    assert counted == [("get", "error")]


def test_unreadable_credentials_are_one_line_with_the_loaders_error_as_cause(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text("clusters: [this is not: a kubeconfig")
    with pytest.raises(CredentialsError) as e:
        connect(str(tmp_path / "kubeconfig"), "test")
    assert e.value.__cause__ is not None and "\n" not in str(e.value)
    with pytest.raises(CredentialsError):
        connect("", "test")  # not in a pod: no service account


def test_retry_after_reads_seconds_and_dates_and_caps_hostile_values() -> None:
    assert retry_after({"Retry-After": "7"}) == 7.0
    assert 8 <= (retry_after({"Retry-After": formatdate(time.time() + 10, usegmt=True)}) or 0) <= 10
    assert retry_after({"Retry-After": "31536000"}) == MAX_RETRY_AFTER_S
    assert retry_after({"Retry-After": "-5"}) == 0.0
    assert retry_after({"Retry-After": "soon"}) is None and retry_after({"Retry-After": "nan"}) is None
    assert retry_after(None) is None and retry_after({}) is None


def test_watches_take_tokens_from_the_request_budget(apiserver: FakeApiServer, tmp_path: Path,
                                                     counted: list[tuple[str, str]]) -> None:
    kube, core = kube_for(apiserver, tmp_path, counted, qps=4.0, burst=2)
    apiserver.end_watches_at_once()
    started = time.monotonic()
    for _ in range(6):
        assert list(kube.watch_events("watch", core.list_node, resource_version=None, timeout_s=5)) == []
    assert time.monotonic() - started >= (6 - 2) / 4.0 - 0.05  # two from the burst, then four a second
    assert counted == [("watch", "200")] * 6


def test_a_stop_gives_a_request_in_flight_its_grace_then_ends_it(apiserver: FakeApiServer, tmp_path: Path,
                                                                  counted: list[tuple[str, str]]) -> None:
    kube, core = kube_for(apiserver, tmp_path, counted)
    apiserver.fail("GET", NODE, status=0, delay=8.0)  # hung (the client's read timeout is 10 s)
    failures: list[BaseException] = []

    def request() -> None:
        try:
            kube.request("get", core.read_node_with_http_info, "n1")
        except KubeError as e:
            failures.append(e)

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    kube.cancel(grace_s=0.2)
    thread.join(2)
    assert 0.15 <= time.monotonic() - started < 1.0
    assert len(failures) == 1 and isinstance(failures[0], Unreachable)
    with pytest.raises(Unreachable, match="stopping"):  # nothing new starts after a stop
        kube.request("get", core.read_node_with_http_info, "n1")


def test_a_watch_that_errs_backs_off_honours_retry_after_and_lists_again_after_410(
        apiserver: FakeApiServer, tmp_path: Path, counted: list[tuple[str, str]]) -> None:
    kube, core = kube_for(apiserver, tmp_path, counted)
    apiserver.put_object(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    lists: list[float] = []
    events: list[str] = []

    def relist() -> str | None:
        lists.append(time.monotonic())
        node = kube.request("get", core.read_node_with_http_info, "n1")
        return str(node.metadata.resource_version)

    apiserver.fail("GET", "watch=true", status=503, retry_after=1)
    watch = Watch(kube, "node n1", core.list_node, field_selector="metadata.name=n1",
                  on_event=lambda kind, obj: events.append(f"{kind} {obj['metadata']['name']}"), relist=relist)
    stopping = threading.Event()
    thread = threading.Thread(target=watch.run, args=(stopping,))
    thread.start()
    try:
        eventually(lambda: len(apiserver.watches()) >= 2, timeout=15)
        first, second = apiserver.watches()[:2]
        assert second.at - first.at >= 0.95  # Retry-After: 1 (the first backoff may be 0.5 s)
        with apiserver.state.lock:  # one step: a list between the two would read the compacted resourceVersion
            apiserver.compact()  # the next watch from the old resourceVersion gets 410 Gone
            node = apiserver.get_object(NODE)
            assert node is not None
            apiserver.put_object(NODE, node | {"metadata": node["metadata"] | {"labels": {"a": "b"}}})
        eventually(lambda: len(lists) >= 2, timeout=15)
        assert len(lists) == 2  # at start and after 410
    finally:
        stopping.set()
        kube.cancel()
        thread.join(2)
    assert not thread.is_alive()
    assert ("watch", "503") in counted
