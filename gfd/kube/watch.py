"""The one watch loop: every watch of the API server (NodeFeature deletions, config-manager's node, the DRA
driver's) runs through `Watch.run`.

A watch that errs, or that the server ends sooner than `MIN_WATCH_S` (a proxy or a broken server that
answers every watch with an empty 200), backs off exponentially with jitter up to a cap, and waits at
least what a Retry-After asked for; a watch that ran its full course is opened again at once. 410 Gone
lists again. Each watch request takes a token from the client's --kube-api-qps bucket like any request.
The loop ends when `stopping` is set (a stop also cancels the client, ending a watch in progress).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from gfd.backoff import Backoff
from gfd.kube.client import Kube
from gfd.kube.errors import Gone, KubeError

log = structlog.get_logger("gfd.kube")

MIN_WATCH_S = 1.0  # client-go's reflector treats a shorter watch without events as a failure
WATCH_TIMEOUT_S = 300  # the server ends a watch after this; it is opened again at once
BACKOFF_CAP_S = 30.0
EventHandler = Callable[[str, dict[str, Any]], None]  # (ADDED | MODIFIED | DELETED, the object as a dict)


class Watch:
    """Follow objects of one API list method (`list_call`, e.g. `CoreV1Api.list_node`), with `args` and
    `field_selector` choosing them. `on_event(type, object)` is called for every change; `relist()` reads
    the current state (and acts on it) and returns the resourceVersion to watch from: at start unless
    `resource_version` is given, and after 410 Gone."""

    def __init__(self, kube: Kube, name: str, list_call: Callable[..., Any], *args: Any, on_event: EventHandler,
                 relist: Callable[[], str | None], resource_version: str | None = None, field_selector: str = "",
                 timeout_s: int = WATCH_TIMEOUT_S, min_duration_s: float = MIN_WATCH_S,
                 backoff: Backoff | None = None) -> None:
        self.kube, self.name, self.list_call, self.args = kube, name, list_call, args
        self.on_event, self.relist = on_event, relist
        self.resource_version = resource_version
        self.field_selector, self.timeout_s, self.min_duration_s = field_selector, timeout_s, min_duration_s
        self.backoff = backoff or Backoff(initial=1.0, cap=BACKOFF_CAP_S)

    def run(self, stopping: threading.Event, until: float | None = None) -> None:
        """Watch until `stopping` is set (or the monotonic time `until`)."""
        version, listed = self.resource_version, self.resource_version is not None
        while not stopping.is_set() and (until is None or time.monotonic() < until):
            if not listed:
                try:
                    version, listed = self.relist(), True
                except KubeError as e:
                    self._pause(stopping, e, "list")
                    continue
            timeout = self.timeout_s if until is None else max(1, min(self.timeout_s, int(until - time.monotonic())))
            started = time.monotonic()
            error: KubeError | None = None
            try:
                for event in self.kube.watch_events("watch", self.list_call, *self.args, resource_version=version,
                                                    timeout_s=timeout, field_selector=self.field_selector or None):
                    obj = event["object"]
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event["type"] != "BOOKMARK":
                        self.on_event(event["type"], obj)
                    if stopping.is_set():
                        return
            except Gone as e:
                log.info("watch expired (410 Gone); listing again", watch=self.name)
                error, listed = e, False
            except KubeError as e:
                error = e
            if stopping.is_set():
                return
            if error is None and time.monotonic() - started >= self.min_duration_s:
                self.backoff.reset()  # a watch that ran its course: open the next one now
                continue
            self._pause(stopping, error, "watch")

    def _pause(self, stopping: threading.Event, error: KubeError | None, what: str) -> None:
        delay = self.backoff.next_delay()
        if error is not None and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        if error is None:  # debug: a server that ends every watch at once would fill the log otherwise
            log.debug("watch ended too soon; backing off", watch=self.name, retry_in_s=round(delay, 2))
        elif not isinstance(error, Gone):
            log.warning(f"{what} failed; retrying", watch=self.name, error=str(error), retry_in_s=round(delay, 2))
        stopping.wait(delay)
