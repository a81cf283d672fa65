"""Device health: XID events, probes and recovery, feeding ListAndWatch.

Beyond upstream (which never recovers and marks every device on a lost GPU): a fault marks only its
unit (a GPU with its replicas and MIG devices, or one MIG device); a unit whose probe passes with no new
fault for the recovery period is healthy again; a periodic probe finds GPUs lost without any XID; and a
watcher that cannot start reports every device unhealthy instead of silently checking nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from gfd.discovery.errors import WatchError
from gfd.discovery.events import ALL_INSTANCES, EventWatcher, XidEvent, probe, probe_fully
from gfd.model import Gpu
from plugin.resources import PluginDevice, Resource

log = structlog.get_logger("plugin.health")

DEFAULT_IGNORED_XIDS = frozenset({13, 31, 43, 45, 68, 109})
Unit = tuple[str, int, int]  # (GPU UUID, GI id, CI id); -1/-1 is the whole GPU


@dataclass(frozen=True)
class XidPolicy:
    """Which XIDs mark a device unhealthy (upstream DP_DISABLE_HEALTHCHECKS / DP_ENABLE_HEALTHCHECKS)."""

    enabled: bool = True
    ignored: frozenset[int] = DEFAULT_IGNORED_XIDS
    forced: frozenset[int] = frozenset()
    all_forced: bool = False

    @classmethod
    def of(cls, disable_healthchecks: Sequence[str], enable_healthchecks: Sequence[str]) -> XidPolicy:
        disable = [v.lower() for v in disable_healthchecks]
        enable = [v.lower() for v in enable_healthchecks]
        all_forced = "all" in enable
        # Upstream quirk kept: `all`/`xids` in DISABLE turns the checker off unless ENABLE says `all`.
        enabled = all_forced or not ({"all", "xids"} & set(disable))
        ignored = DEFAULT_IGNORED_XIDS | {int(v) for v in disable if v.isdigit()}
        forced = frozenset(int(v) for v in enable if v.isdigit())
        return cls(enabled, frozenset(ignored), forced, all_forced)

    def critical(self, xid: int) -> bool:
        return self.all_forced or xid in self.forced or xid not in self.ignored


class HealthState:
    """Which units are unhealthy; ListAndWatch streams wait on `changed`."""

    def __init__(self, recovery_s: float) -> None:
        self.recovery_s = recovery_s
        self.changed = threading.Condition()
        self.version = 0
        self._faults: dict[Unit, tuple[float, str]] = {}  # unit -> (time of the last fault, reason)
        self._all_reason: str | None = None
        self._resource_faults: dict[str, str] = {}  # resource name -> reason (its MPS daemon is down)

    def healthy(self, device: PluginDevice) -> bool:
        if self._all_reason is not None:
            return False
        gpu_unit: Unit = (device.gpu.uuid, -1, -1)
        return gpu_unit not in self._faults and device.unit not in self._faults

    def snapshot(self, resource: Resource) -> tuple[int, list[tuple[PluginDevice, bool]]]:
        with self.changed:
            down = resource.name in self._resource_faults
            return self.version, [(d, not down and self.healthy(d)) for d in resource.devices]

    def fault_resource(self, name: str, reason: str) -> None:
        """Every device of the resource, whatever its GPU's health (a daemon it depends on is down)."""
        with self.changed:
            if name not in self._resource_faults:
                log.error("resource marked unhealthy", resource=name, reason=reason)
                self._resource_faults[name] = reason
                self._bump()

    def clear_resource(self, name: str) -> None:
        with self.changed:
            was = self._resource_faults.pop(name, None)
            if was is not None:
                log.info("resource healthy again", resource=name, was=was)
                self._bump()

    def fault(self, unit: Unit, reason: str) -> None:
        with self.changed:
            new = unit not in self._faults
            self._faults[unit] = (time.monotonic(), reason)
            if new:
                log.warning("device marked unhealthy", gpu=unit[0], gi=unit[1], ci=unit[2], reason=reason)
                self._bump()

    def fault_all(self, reason: str) -> None:
        with self.changed:
            if self._all_reason is None:
                log.error("all devices marked unhealthy", reason=reason)
                self._all_reason = reason
                self._bump()

    def clear_all(self) -> None:
        with self.changed:
            if self._all_reason is not None:
                log.info("health checks running again", was=self._all_reason)
                self._all_reason = None
                self._bump()

    def recover(self, still_failing: set[str]) -> None:
        """Units without a fault for the recovery period, on GPUs that answer probes, are healthy again."""
        now = time.monotonic()
        with self.changed:
            for unit, (since, reason) in list(self._faults.items()):
                if unit[0] not in still_failing and now - since >= self.recovery_s:
                    del self._faults[unit]
                    log.info("device healthy again", gpu=unit[0], gi=unit[1], ci=unit[2], was=reason)
                    self._bump()

    def _bump(self) -> None:
        self.version += 1
        self.changed.notify_all()


class HealthChecker:
    """Watches XID events and probes GPUs; owns nothing but the watcher and the state it updates. `run`
    is a thread of the plugin's run scope, until its `stopping` is set."""

    def __init__(self, gpus: tuple[Gpu, ...], state: HealthState, policy: XidPolicy, probe_s: float,
                 wait_ms: int = 500, rediscover: Rediscovery | None = None,
                 xid_seen: Callable[[str, int], None] | None = None) -> None:
        """`xid_seen`: told of every XID, critical or not (GPU telemetry reports the last one)."""
        self.rediscover, self.xid_seen = rediscover, xid_seen
        self.gpus, self.state, self.policy = gpus, state, policy
        self.probe_s, self.wait_ms = probe_s, wait_ms
        self.by_uuid = {g.uuid: g for g in gpus}

    def run(self, stopping: threading.Event) -> None:
        if not self.policy.enabled:
            log.info("health checks disabled (DP_DISABLE_HEALTHCHECKS)")
            return
        while not stopping.is_set():
            watcher = self._start_watcher()
            if watcher is None:
                stopping.wait(1.0)  # retried: devices recover once a watcher runs again
                continue
            try:
                self._watch(watcher, stopping)
            except WatchError as e:
                self.state.fault_all(str(e))
            finally:
                watcher.close()

    def _start_watcher(self) -> EventWatcher | None:
        try:
            watcher = EventWatcher(self.gpus)
        except WatchError as e:
            self.state.fault_all(f"health watcher cannot start: {e}")
            return None
        self.state.clear_all()
        for uuid in watcher.unsupported:
            log.warning("device is too old to support health checking", gpu=uuid)
        for uuid, error in watcher.failed.items():
            self.state.fault((uuid, -1, -1), f"cannot register for events: {error}")
        return watcher

    def _watch(self, watcher: EventWatcher, stopping: threading.Event) -> None:
        next_probe = 0.0
        while not stopping.is_set():
            if time.monotonic() >= next_probe:
                self.probe_all()
                next_probe = time.monotonic() + self.probe_s
            event = watcher.wait(min(self.wait_ms, max(1, int((next_probe - time.monotonic()) * 1000))))
            if event is not None:
                self.on_xid(event)

    def on_xid(self, event: XidEvent) -> None:
        if self.xid_seen is not None:
            self.xid_seen(event.gpu_uuid, event.xid)
        if not self.policy.critical(event.xid):
            log.info("ignoring XID", xid=event.xid, gpu=event.gpu_uuid)
            return
        gpu = self.by_uuid.get(event.gpu_uuid)
        # nvml.h: gi/ci are 0xFFFFFFFF unless the XID is attributable to a MIG instance. On a GPU without MIG
        # any XID is the whole GPU's, whatever the ids say (NVIDIA's mock NVML reports 0/0 there).
        whole_gpu = event.gi_id == ALL_INSTANCES or event.ci_id == ALL_INSTANCES or \
            (gpu is not None and not gpu.mig_enabled)
        unit: Unit = (event.gpu_uuid, -1, -1) if whole_gpu else (event.gpu_uuid, event.gi_id, event.ci_id)
        self.state.fault(unit, f"XID {event.xid}")

    def probe_all(self) -> None:
        failing = set()
        rediscover = self.rediscover
        lost = rediscover.lost if rediscover is not None else frozenset()
        for gpu in self.gpus:
            error = probe_fully(gpu.index, rediscover.host_root) if rediscover is not None and gpu.uuid in lost \
                else probe(gpu)
            if error is not None:
                failing.add(gpu.uuid)
                self.state.fault((gpu.uuid, -1, -1), f"probe failed: {error}")
        if rediscover is not None and lost - failing:
            log.info("a GPU lost at start answers every query again; reading the node again", gpus=sorted(lost))
            rediscover.callback()
            self.rediscover = None
            return
        self.state.recover(failing)


@dataclass(frozen=True)
class Rediscovery:
    """GPUs (by UUID) lost before the plugin could read them, and what to call once one of them can be
    read completely again."""

    lost: frozenset[str]
    callback: Callable[[], None]
    host_root: str
