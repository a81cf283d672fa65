"""The one way our programs build a Kubernetes client and send it requests.

`connect()` builds the official client from a kubeconfig or the pod's service account, with our user
agent, request timeouts and urllib3's retries off (the callers own retries and backoff). Every request,
watches included, goes through `Kube`: it takes a token from the --kube-api-qps/--kube-api-burst bucket,
counts the request by what the server answered (a watch when its answer's headers arrive, never before it
is sent), and turns every failure into a typed `gfd.kube.errors.KubeError` chained to its cause. A stop
cancels the client as Go's context does: requests in flight get a short grace, then their connections
are shut, so no thread stays blocked on a hung API server.

What of the official client is loaded, and why here: `import kubernetes.<anything>` first runs the package's
`__init__`, which imports all of it (config with oauthlib and requests, dynamic with jsonschema, stream,
watch, utils, leaderelection, informer): 596 modules, +35 MiB RSS and 230-350 ms on our 2-CPU CI machine
(python 3.11, kubernetes 37.0.2). Our programs use its ApiClient (REST transport, auth, errors) and config
loaders, so that `__init__` (and `kubernetes.config`'s) runs only if something asks for a name it defines
(`defer_package_init`). Their few API calls go through `CoreV1Objects` and `CustomObjects`, which answer
dicts, instead of the generated API classes: CoreV1Api's module is 13 MiB and 310-430 ms to import (V1Pod's
models 7 MiB more), CustomObjectsApi's 1.5 MiB and 30-40 ms (218 M instructions: pydantic wrapping each of
its methods). Import the official classes from here, never `from kubernetes import ...` in our programs:
tests/test_imports.py fails when a program loads the rest again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import structlog
import urllib3
from urllib3.exceptions import HTTPError

from gfd import __version__
from gfd.kube.errors import CredentialsError, KubeError, Unreachable, from_api_exception, from_transport_error


def defer_package_init(name: str) -> None:
    """Register the package `name` without running its `__init__`: its submodules import as usual, and the
    `__init__` runs on the first use of a name that only it defines (PEP 562), so code that wants the whole
    package still gets it. Nothing to do when the package was imported already."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package", name=name)
    package = importlib.util.module_from_spec(spec)
    lock, ran = threading.RLock(), list[bool]()

    def __getattr__(attribute: str) -> Any:
        with lock:  # one thread runs __init__; the others wait for it
            if not ran:
                ran.append(True)  # first: the __init__'s own `from . import x` looks names up here again
                spec.loader.exec_module(package)  # type: ignore[union-attr]
        try:
            return package.__dict__[attribute]
        except KeyError:
            # from None: a module's own "no attribute" answer; the dict's KeyError would read as a bug here
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}") from None

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)


defer_package_init("kubernetes")
defer_package_init("kubernetes.config")

from kubernetes.client.api_client import ApiClient  # noqa: E402
from kubernetes.client.configuration import Configuration  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from kubernetes.config.incluster_config import load_incluster_config  # noqa: E402

__all__ = ["ApiClient", "CoreV1Objects", "CustomObjects", "Kube", "connect", "defer_package_init"]

log = structlog.get_logger("gfd.kube")

REQUEST_TIMEOUT = (5.0, 10.0)  # connect, read (seconds): a hung API server must not hold a loop
DEFAULT_QPS, DEFAULT_BURST = 5.0, 10  # client-go's defaults, and upstream GFD's --kube-api-qps/--kube-api-burst
CANCEL_GRACE_S = 0.5  # what a request in flight at a stop gets to finish before its connection is shut
MAX_EVENT_BYTES = 16 << 20  # one watch event (etcd stores objects of at most 1.5 MiB): a bound, not a limit
Count = Callable[[str, str], None]  # (verb, HTTP status or "error"): e.g. a Prometheus counter's inc


class TokenBucket:
    """Client-side rate limit (upstream's --kube-api-qps / --kube-api-burst, client-go's token bucket)."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps, self.capacity = qps, max(1, burst)
        self.tokens = float(self.capacity)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self, cancelled: threading.Event) -> None:
        """Wait for a token; Unreachable when `cancelled` is set first."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.qps)
            self.updated = now
            wait = 0.0 if self.tokens >= 1 or self.qps <= 0 else (1 - self.tokens) / self.qps
            self.tokens -= 1
        if (wait and cancelled.wait(wait)) or cancelled.is_set():
            raise Unreachable("cancelled: the program is stopping")


class Kube:
    """One API connection: the official `ApiClient` (for building APIs on it), and `request` /
    `watch_events`, the only ways our code sends it a request."""

    def __init__(self, api_client: Any, qps: float = DEFAULT_QPS, burst: int = DEFAULT_BURST,
                 timeout: tuple[float, float] = REQUEST_TIMEOUT, count: Count | None = None) -> None:
        self.api_client = api_client
        self.bucket = TokenBucket(qps, burst)
        self.timeout = timeout
        self.count = count
        self.cancelled = threading.Event()
        self._inflight = 0
        self._idle = threading.Condition()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()
        _track_connections(api_client.rest_client.pool_manager, self._connections)

    def request(self, verb: str, call: Callable[..., tuple[Any, int, Any]], *args: Any,
                timeout: tuple[float, float] | float | None = None, **kwargs: Any) -> Any:
        """Send one request and return its decoded answer. `call` is an API method's `*_with_http_info`
        form (it returns the status that is counted); `verb` names it in the count."""
        self.bucket.take(self.cancelled)
        with self._idle:
            self._inflight += 1
        try:
            data, status, _headers = call(*args, _request_timeout=timeout or self.timeout, **kwargs)
        except ApiException as e:
            raise self._failed(verb, from_api_exception(e)) from e
        except (HTTPError, OSError) as e:
            raise self._failed(verb, from_transport_error(e)) from e
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()
        self._count(verb, str(status))
        return data

    def watch_events(self, verb: str, list_call: Callable[..., Any], *args: Any, resource_version: str | None,
                     timeout_s: int, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """One watch request of an API's list method: its events as decoded dicts ({"type", "object"}) until
        the server ends it. An ERROR event is raised as its typed error (410: Gone)."""
        self.bucket.take(self.cancelled)
        try:
            response = list_call(*args, watch=True, resource_version=resource_version, timeout_seconds=timeout_s,
                                 allow_watch_bookmarks=True, _preload_content=False,
                                 _request_timeout=(self.timeout[0], timeout_s + 30), **kwargs)
        except ApiException as e:
            raise self._failed(verb, from_api_exception(e)) from e
        except (HTTPError, OSError) as e:
            raise self._failed(verb, from_transport_error(e)) from e
        self._count(verb, str(response.status))  # the server answered: its status, when it arrived
        self._streams.add(response)
        try:
            if self.cancelled.is_set():
                return
            for line in _lines(response):
                try:
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                except (ValueError, KeyError, TypeError) as e:
                    raise KubeError(f"malformed watch event: {type(e).__name__}: {str(e)[:200]}") from e
                if not isinstance(obj, dict) or not isinstance(obj.get("metadata") or {}, dict):
                    raise KubeError("malformed watch event: its object is not a Kubernetes object")
                if kind == "ERROR":
                    raise from_api_exception(_Status(obj))
                yield {"type": kind, "object": obj}
        except (HTTPError, OSError) as e:
            raise from_transport_error(e) from e
        finally:
            self._streams.discard(response)
            response.release_conn()

    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """The program is stopping: no new request starts, open watches end now, requests in flight get
        `grace_s` to finish before their connections are shut (their callers get Unreachable)."""
        self.cancelled.set()
        for response in list(self._streams):
            _shut(getattr(response, "connection", None))
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, grace_s)
        for connection in list(self._connections):
            _shut(connection)

    def close(self) -> None:
        self.cancel(0.0)
        self.api_client.close()

    def _failed(self, verb: str, error: KubeError) -> KubeError:
        self._count(verb, str(error.status) if error.status else "error")
        return error

    def _count(self, verb: str, code: str) -> None:
        if self.count is not None:
            self.count(verb, code)


def connect(kubeconfig: str, agent: str, qps: float = DEFAULT_QPS, burst: int = DEFAULT_BURST,
            count: Count | None = None, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> Kube:
    """A client from `kubeconfig`, or the pod's service account when it is empty. `agent` names the program
    in the User-Agent. CredentialsError (one line) when neither can be read."""
    configuration = Configuration()
    try:
        if kubeconfig:
            # Here, not at the top: a pod reads its service account; the kubeconfig loader brings oauthlib and
            # requests (+5 MiB, ~40 ms) for a developer's or a test's kubeconfig only.
            from kubernetes.config.kube_config import load_kube_config

            load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except Exception as e:  # the loader parses operator input: ConfigException, OSError, YAML and shape errors
        raise CredentialsError(" ".join(str(e).split())[:1000] or type(e).__name__) from e
    configuration.retries = 0  # the callers own retries and backoff
    api_client = ApiClient(configuration)
    api_client.user_agent = f"{agent}/{__version__} (linux) python-kubernetes"
    return Kube(api_client, qps, burst, timeout, count)


class _Objects:
    """Requests whose objects are dicts, built, sent and decoded by the official `ApiClient` exactly as its
    generated API classes do (path quoting, auth, headers, errors), without their modules: those validate
    every argument with pydantic and build models at import (see the module docstring for the figures)."""

    def __init__(self, api_client: ApiClient) -> None:
        self.api_client = api_client

    def _call(self, method: str, path: str, path_params: dict[str, str], body: Any = None,
              _request_timeout: Any = None, _preload_content: bool = True, **query: Any) -> Any:
        """(object, status, headers), as a `*_with_http_info` method; a non-2xx answer raises ApiException.
        `_preload_content=False` returns the raw response (a watch). `query`: the API's parameters in the
        client's snake_case (resource_version=...)."""
        params = [(_camel(key), value) for key, value in query.items() if value is not None]
        request = self.api_client.param_serialize(method, path, path_params=path_params, query_params=params,
                                                  header_params={"Accept": "application/json"}, body=body,
                                                  auth_settings=["BearerToken"])
        response: Any = self.api_client.call_api(*request, _request_timeout=_request_timeout)
        if not _preload_content and 200 <= response.status <= 299:
            return response.response
        response.read()
        answer = self.api_client.response_deserialize(response, {"2XX": "object"})  # raises for non-2xx
        return answer.data, answer.status_code, response.getheaders()


class CoreV1Objects(_Objects):
    """The core-group (/api/v1) calls our programs make, named and called as `CoreV1Api`'s (`Kube.request`
    and `Watch` take them), answering dicts instead of models."""

    def read_namespaced_pod_with_http_info(self, name: str, namespace: str, **options: Any) -> Any:
        return self._call("GET", "/api/v1/namespaces/{namespace}/pods/{name}",
                          {"namespace": namespace, "name": name}, **options)

    def read_node_with_http_info(self, name: str, **options: Any) -> Any:
        return self._call("GET", "/api/v1/nodes/{name}", {"name": name}, **options)

    def list_node(self, **options: Any) -> Any:
        return self._call("GET", "/api/v1/nodes", {}, **options)


class CustomObjects(_Objects):
    """The calls our programs make on objects of a named API group (custom resources, and built-in kinds
    outside the core group), named and called as `CustomObjectsApi`'s."""

    _COLLECTION = "/apis/{group}/{version}/namespaces/{namespace}/{plural}"

    def get_namespaced_custom_object_with_http_info(self, group: str, version: str, namespace: str, plural: str,
                                                    name: str, **options: Any) -> Any:
        return self._call("GET", self._COLLECTION + "/{name}", _params(group, version, namespace, plural, name),
                          **options)

    def create_namespaced_custom_object_with_http_info(self, group: str, version: str, namespace: str, plural: str,
                                                       body: dict[str, Any], **options: Any) -> Any:
        return self._call("POST", self._COLLECTION, _params(group, version, namespace, plural), body, **options)

    def replace_namespaced_custom_object_with_http_info(self, group: str, version: str, namespace: str,
                                                        plural: str, name: str, body: dict[str, Any],
                                                        **options: Any) -> Any:
        return self._call("PUT", self._COLLECTION + "/{name}", _params(group, version, namespace, plural, name),
                          body, **options)

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                      **options: Any) -> Any:
        return self._call("GET", self._COLLECTION, _params(group, version, namespace, plural), **options)

    # Cluster-scoped objects (ResourceSlices), and a cluster-wide list or watch of namespaced ones (ResourceClaims).
    _CLUSTER = "/apis/{group}/{version}/{plural}"

    def create_cluster_custom_object_with_http_info(self, group: str, version: str, plural: str,
                                                    body: dict[str, Any], **options: Any) -> Any:
        return self._call("POST", self._CLUSTER, _params(group, version, None, plural), body, **options)

    def replace_cluster_custom_object_with_http_info(self, group: str, version: str, plural: str, name: str,
                                                     body: dict[str, Any], **options: Any) -> Any:
        return self._call("PUT", self._CLUSTER + "/{name}", _params(group, version, None, plural, name), body,
                          **options)

    def delete_cluster_custom_object_with_http_info(self, group: str, version: str, plural: str, name: str,
                                                    **options: Any) -> Any:
        return self._call("DELETE", self._CLUSTER + "/{name}", _params(group, version, None, plural, name),
                          **options)

    def list_cluster_custom_object_with_http_info(self, group: str, version: str, plural: str,
                                                  **options: Any) -> Any:
        return self._call("GET", self._CLUSTER, _params(group, version, None, plural), **options)

    list_cluster_custom_object = list_cluster_custom_object_with_http_info  # a watch's call (Kube.watch_events)


def _params(group: str, version: str, namespace: str | None, plural: str, name: str | None = None) -> dict[str, str]:
    params = {"group": group, "version": version, "plural": plural}
    params |= {} if namespace is None else {"namespace": namespace}
    return params if name is None else params | {"name": name}


def _camel(name: str) -> str:
    """A parameter's name on the wire: the client's snake_case, `_continue` for `continue` (a Python keyword)."""
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name.lstrip("_"))


class _Status:
    """An ERROR watch event's Status object, in the shape `from_api_exception` reads."""

    def __init__(self, status: Any) -> None:
        status = status if isinstance(status, dict) else {}
        self.status = status.get("code") or 500
        self.reason = f"{status.get('reason', '')}: {status.get('message', '')}"
        self.headers = None


def _lines(response: Any) -> Iterator[bytes]:
    """The stream's lines (one event each), each bounded: a server that never sends a newline cannot grow
    our buffer without limit."""
    pending = b""
    for chunk in response.stream(64 << 10, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
        if len(pending) > MAX_EVENT_BYTES:
            raise KubeError(f"watch event longer than {MAX_EVENT_BYTES} bytes")
    if pending.strip():
        yield pending


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it (close would not)


def _track_connections(pool_manager: Any, connections: weakref.WeakSet[Any]) -> None:
    """Make the client's connection pools remember each connection they open, so that `cancel` can shut
    them (urllib3 keeps no list of the connections in use)."""

    def tracked(base: type[urllib3.HTTPConnectionPool]) -> type[urllib3.HTTPConnectionPool]:
        class Tracked(base):  # type: ignore[valid-type,misc]
            def _new_conn(self) -> Any:
                connection = super()._new_conn()
                connections.add(connection)
                return connection

        Tracked.__name__ = Tracked.__qualname__ = base.__name__  # error messages name urllib3's pool
        return Tracked

    pool_manager.pool_classes_by_scheme = {"http": tracked(urllib3.HTTPConnectionPool),
                                           "https": tracked(urllib3.HTTPSConnectionPool)}

