"""The plugin's side of MPS: it serves an MPS resource only once that resource's control daemon has started
(`.started` written after its limits were set) and answers, and it reports the resource's devices
Unhealthy while the daemon does not answer (upstream only checks once, before serving)."""

from __future__ import annotations

import threading
import time

import structlog

from plugin.health import HealthState
from plugin.mps import control
from plugin.mps.root import MpsRoot
from plugin.resources import Resource

log = structlog.get_logger("plugin.mps")
CHECK_S = 1.0
WAIT_LOG_S = 5.0


def wait_until_ready(root: MpsRoot, resources: list[Resource], stop: threading.Event) -> bool:
    """False when `stop` is set first."""
    logged = 0.0
    for resource in resources:
        while (reason := control.not_ready(root, resource.name)) is not None:
            if time.monotonic() - logged >= WAIT_LOG_S:
                log.info("Waiting for MPS daemon to be ready", resource=resource.name, reason=reason)
                logged = time.monotonic()
            if stop.wait(0.2):
                return False
        log.info("MPS daemon is ready", resource=resource.name)
    return True


class MpsWatch:
    """Reports an MPS resource's devices unhealthy while its daemon does not answer; `run` is a thread of
    the plugin's run scope."""

    def __init__(self, root: MpsRoot, resources: list[Resource], state: HealthState) -> None:
        self.root, self.resources, self.state = root, resources, state

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(CHECK_S):
            for resource in self.resources:
                reason = control.not_ready(self.root, resource.name)
                if reason is None:
                    self.state.clear_resource(resource.name)
                else:
                    self.state.fault_resource(resource.name, reason)
