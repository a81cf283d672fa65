"""A loopback Kubernetes API server for tests: just enough of the real semantics.

Objects carry resourceVersion and uid; GET of a missing object is 404 with a Status body; POST of an
existing name is 409 AlreadyExists; PUT with a stale resourceVersion is 409 Conflict; JSON merge
PATCH; a node watch streams events and answers 410 Gone for a too-old resourceVersion. Faults can be
queued per method and path: a status code (with Retry-After) or a delay longer than the client's
timeout. Every request is logged.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    method: str
    path_contains: str
    status: int = 500
    times: int = 1
    retry_after: float | None = None
    delay: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    body: Any
    at: float = field(default_factory=time.monotonic)


@dataclass
class State:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> object
    requests: list[Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)  # (rv, type, object)
    oldest_watchable_rv: int = 0
    watch_generation: int = 0  # bumped to end every open watch stream
    empty_watches: bool = False  # answer every watch with an empty 200 (a broken server or proxy)
    lock: threading.Condition = field(default_factory=threading.Condition)
    hooks: list[tuple[str, str, Callable[[], None]]] = field(default_factory=list)  # (method, path, action)
    rv: itertools.count = field(default_factory=lambda: itertools.count(100))  # type: ignore[type-arg]


_COLLECTION = re.compile(r"^(?P<base>/apis?/.*?/namespaces/[^/]+/[^/]+|/api/v1/nodes)$")


class FakeApiServer:
    def __init__(self) -> None:
        self.state = State()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def kubeconfig(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "test",
                       "clusters": [{"name": "test", "cluster": {"server": self.url}}],
                       "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                       "users": [{"name": "test", "user": {}}]}, f)
        return path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- test helpers -----------------------------------------------------------------------------
    def put_object(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            return _store(self.state, path, copy.deepcopy(obj), "ADDED")

    def get_object(self, path: str) -> dict[str, Any] | None:
        with self.state.lock:
            obj = self.state.objects.get(path)
            return copy.deepcopy(obj) if obj else None

    def delete_object(self, path: str) -> None:
        with self.state.lock:
            _deleted(self.state, self.state.objects.pop(path))

    def fail(self, method: str, path_contains: str, status: int = 500, times: int = 1,
             retry_after: float | None = None, delay: float = 0.0) -> None:
        """The next `times` requests whose path (with its query: `watch=true` picks watches) contains
        `path_contains` get `status` after `delay` seconds (status 0: answered normally after the delay)."""
        with self.state.lock:
            self.state.faults.append(Fault(method, path_contains, status, times, retry_after, delay))

    def before_answering(self, method: str, path_contains: str, action: Callable[[], None]) -> None:
        """Run `action` once, after the next matching request (its method starts with `method`) has taken
        effect and before its answer is sent: a test's way to act inside a client's request."""
        with self.state.lock:
            self.state.hooks.append((method, path_contains, action))

    def end_watches_at_once(self, on: bool = True) -> None:
        """Answer every watch with an empty 200 that ends at once, as a broken server or proxy does."""
        with self.state.lock:
            self.state.empty_watches = on

    def watches(self) -> list[Request]:
        return [r for r in self.requests("GET") if "watch=true" in r.path.lower()]

    def requests(self, method: str | None = None) -> list[Request]:
        with self.state.lock:
            return [r for r in self.state.requests if method is None or r.method == method]

    def clear_requests(self) -> None:
        with self.state.lock:
            self.state.requests.clear()

    def compact(self) -> None:
        """Forget the event history and end open watches: a client that watches again from its last
        resourceVersion gets 410 Gone, as from a real API server after etcd compaction."""
        with self.state.lock:
            self.state.oldest_watchable_rv = next(self.state.rv)
            self.state.events.clear()
            self.state.watch_generation += 1
            self.state.lock.notify_all()


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _store(state: State, path: str, obj: dict[str, Any], kind: str) -> dict[str, Any]:
    meta = obj.setdefault("metadata", {})
    meta["resourceVersion"] = str(next(state.rv))
    meta.setdefault("uid", f"uid-{meta['resourceVersion']}")
    meta.setdefault("creationTimestamp", "2026-11-22T00:00:00Z")
    state.objects[path] = obj
    _event(state, kind, obj)
    return copy.deepcopy(obj)


def _event(state: State, kind: str, obj: dict[str, Any]) -> None:
    state.events.append((int(obj["metadata"]["resourceVersion"]), kind, copy.deepcopy(obj)))
    state.lock.notify_all()


def _deleted(state: State, obj: dict[str, Any]) -> None:
    """As a real API server: the DELETED event carries a new resourceVersion (so watchers see it)."""
    obj["metadata"]["resourceVersion"] = str(next(state.rv))
    _event(state, "DELETED", obj)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


class _Handler(BaseHTTPRequestHandler):
    state: State
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a slow-response fault beyond its timeout)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._body() if self.command in ("POST", "PUT", "PATCH") else None
        state = self.state
        with state.lock:
            state.requests.append(Request(self.command, self.path, copy.deepcopy(body)))
            fault = next((f for f in state.faults if f.method == self.command and f.path_contains in self.path),
                         None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    state.faults.remove(fault)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status:
                headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else None
                self._send(fault.status, _status(fault.status, "Injected", "injected fault"), headers)
                return
        if self.command == "GET" and "watch=true" in query.lower():
            if state.empty_watches:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._watch(path, query)
            return
        with state.lock:
            code, reply = self._dispatch(path, body)
            hook = next((h for h in state.hooks if self.command.startswith(h[0]) and h[1] in self.path), None)
            if hook is not None:
                state.hooks.remove(hook)
        if hook is not None:
            hook[2]()
        self._send(code, reply)

    def _dispatch(self, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        state, method = self.state, self.command
        if method == "POST":
            if not _COLLECTION.match(path):
                return 405, _status(405, "MethodNotAllowed", path)
            name = body["metadata"]["name"]
            item = f"{path}/{name}"
            if item in state.objects:
                return 409, _status(409, "AlreadyExists", f'"{name}" already exists')
            body["metadata"]["namespace"] = path.split("/namespaces/")[1].split("/")[0] \
                if "/namespaces/" in path else None
            return 201, _store(state, item, body, "ADDED")
        current = state.objects.get(path)
        if current is None:
            return 404, _status(404, "NotFound", f"{path} not found")
        if method == "GET":
            return 200, copy.deepcopy(current)
        if method == "DELETE":
            del state.objects[path]
            _deleted(state, current)
            return 200, _status(200, "", "deleted") | {"status": "Success"}
        if method == "PUT":
            sent_rv = (body.get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", "the object has been modified; please apply your changes "
                                                     "to the latest version and try again")
            body["metadata"]["uid"] = current["metadata"]["uid"]
            return 200, _store(state, path, body, "MODIFIED")
        if method == "PATCH":
            return 200, _store(state, path, _merge(copy.deepcopy(current), body), "MODIFIED")
        return 405, _status(405, "MethodNotAllowed", method)

    def _watch(self, path: str, query: str) -> None:
        """Stream events newer than resourceVersion for objects at or below `path`, until timeout."""
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        since = int(params.get("resourceVersion") or 0)
        field_name = params.get("fieldSelector", "").replace("metadata.name%3D", "").replace("metadata.name=", "")
        deadline = time.monotonic() + float(params.get("timeoutSeconds", 5))
        state = self.state
        with state.lock:
            # The generation is read with the resourceVersion check, under one lock: a compact() between the
            # two would let this watch outlive the compaction without a 410 (a test's race, not the server's).
            generation = state.watch_generation
            gone = since and since < state.oldest_watchable_rv
        self._stream_start()
        if gone:
            self._chunk({"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {since}")})
            self._chunk(None)
            return
        sent = since
        try:
            while time.monotonic() < deadline:
                with state.lock:
                    if state.watch_generation != generation:
                        break
                    pending = [(rv, t, o) for rv, t, o in state.events if rv > sent and
                               (not field_name or o["metadata"]["name"] == field_name)]
                    if not pending:
                        state.lock.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                        continue
                for rv, kind, obj in pending:
                    self._chunk({"type": kind, "object": obj})
                    sent = rv
            self._chunk(None)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _stream_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, event: dict[str, Any] | None) -> None:
        data = b"" if event is None else json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle
