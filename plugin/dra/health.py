"""The device plugin's health checks (plugin/health.py: XIDs, probes, recovery) as the DRA driver reports them:
NVIDIA's device taints in the ResourceSlices (the scheduler leaves a NoSchedule-tainted device alone) and the
kubelet's health service.

- A critical XID taints its unit `gpu.nvidia.com/xid=<n>:NoSchedule`; a GPU that does not answer
  `gpu.nvidia.com/gpu-lost:NoSchedule`; a GPU whose events cannot be watched, or every device while the checks
  cannot run, `gpu.nvidia.com/unmonitored:None`.
- An XID the policy ignores (NVIDIA's list, plus `--additional-xids-to-ignore`) taints its GPU with effect None:
  a note for the operator that keeps the device allocatable, gone after the recovery period as a fault would be.
- A unit that recovers (its probe passes for the recovery period) loses its taints.
- A GPU whose MPS daemon (enforced memory shares) does not answer is tainted `gfd-py.github.io/mps-not-ready:
  NoSchedule` until the daemon started again answers (plugin/dra/mpsshares.py says so through `mps_health`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence

import structlog

from plugin.dra import taints
from plugin.dra.devices import Allocatable
from plugin.dra.server import HealthBoard
from plugin.health import DEFAULT_IGNORED_XIDS, LOST, UNMONITORED, XID, Fault, HealthState, Unit, XidPolicy

log = structlog.get_logger("plugin.dra")

_MAX_WAIT_S = 60.0  # a bound on any wait here, whatever the clock says


def xid_policy(additional_ignored: Sequence[str]) -> XidPolicy:
    """NVIDIA's XIDs that do not make a device unhealthy, and the operator's (`--additional-xids-to-ignore`)."""
    return XidPolicy(ignored=DEFAULT_IGNORED_XIDS | {int(x) for x in additional_ignored})


def device_health(faults: dict[Unit, Fault], everything: str | None, noted: dict[Unit, int] | None = None,
                  mps_down: Collection[str] = ()) -> taints.DeviceHealth:
    """The taints of the checker's faults (plugin.health.HealthState.faults), of XIDs only noted, and of GPUs
    (by UUID) whose MPS daemon does not serve their shares."""
    units: dict[Unit, tuple[taints.Taint, ...]] = {}
    for unit, fault in faults.items():
        if fault.kind == XID and fault.xid is not None:
            units[unit] = (taints.xid(fault.xid),)
        elif fault.kind == UNMONITORED:
            units[unit] = (taints.unmonitored(),)
        else:
            assert fault.kind == LOST, fault
            units[unit] = (taints.gpu_lost(),)
    for unit, number in (noted or {}).items():
        units[unit] = (*units.get(unit, ()), taints.xid(number, critical=False))
    for uuid in mps_down:
        unit = (uuid, taints.WHOLE_GPU, taints.WHOLE_GPU)
        units[unit] = (*units.get(unit, ()), taints.mps_not_ready())
    return taints.DeviceHealth(units, (taints.unmonitored(),) if everything is not None else ())


class HealthFeed:
    """Follows the checker's state and calls `on_change` with the node's device health at start and whenever it
    changes; keeps the kubelet's health board current. `xid_seen` is the checker's callback for every XID,
    critical or not. Everything here is guarded by the state's own lock and condition."""

    def __init__(self, state: HealthState, policy: XidPolicy, devices: Sequence[Allocatable], board: HealthBoard,
                 on_change: Callable[[taints.DeviceHealth], None]) -> None:
        self.state, self.policy, self.board, self.on_change = state, policy, board, on_change
        self.devices = tuple(devices)
        self._noted: dict[Unit, tuple[float, int]] = {}  # unit -> (when, the ignored XID)
        self._mps_down: dict[str, str] = {}  # GPU UUID -> why its MPS daemon does not serve
        self._notes = 0  # changes of _noted and _mps_down, so that one made while the feed computes is not missed
        self.current: taints.DeviceHealth | None = None

    def xid_seen(self, gpu_uuid: str, xid: int) -> None:
        if self.policy.critical(xid):
            return  # the checker faults the unit itself
        with self.state.changed:
            self._noted[(gpu_uuid, taints.WHOLE_GPU, taints.WHOLE_GPU)] = (time.monotonic(), xid)
            self._notes += 1
            self.state.changed.notify_all()

    def mps_health(self, gpu_uuid: str, reason: str | None) -> None:
        """The GPU's MPS daemon does not serve its shares (`reason`), or serves them again (None)."""
        with self.state.changed:
            if (self._mps_down.get(gpu_uuid) is None) == (reason is None):
                return
            if reason is None:
                del self._mps_down[gpu_uuid]
            else:
                self._mps_down[gpu_uuid] = reason
            self._notes += 1
            self.state.changed.notify_all()

    def wake(self) -> None:
        with self.state.changed:
            self.state.changed.notify_all()

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            with self.state.changed:  # a reentrant lock: faults() takes it too
                noted = self._unexpired()
                version, faults, everything = self.state.faults()
                mps_down = tuple(self._mps_down)
                seen = (version, self._notes)
            health = device_health(faults, everything, noted, mps_down)
            self.board.update(taints.kubelet_view(self.devices, health))
            if health != self.current:
                if self.current is not None:
                    log.info("device health changed", unschedulable=taints.unschedulable(self.devices, health),
                             tainted=[d.name for d in self.devices if health.of(d.gpu.uuid, *d.instance)])
                self.current = health
                self.on_change(health)
            with self.state.changed:
                if (self.state.version, self._notes) == seen and not stopping.is_set():
                    self.state.changed.wait(self._next_expiry())

    def _unexpired(self) -> dict[Unit, int]:
        """With the state's lock held: the noted XIDs younger than the recovery period."""
        now = time.monotonic()
        expired = [u for u, (t, _) in self._noted.items() if now - t >= self.state.recovery_s]
        for unit in expired:
            del self._noted[unit]
        if expired:
            self._notes += 1
        return {u: x for u, (_, x) in self._noted.items()}

    def _next_expiry(self) -> float:
        """With the state's lock held: seconds until the oldest note expires (bounded)."""
        due = [t + self.state.recovery_s - time.monotonic() for t, _ in self._noted.values()]
        return min([_MAX_WAIT_S, *(max(0.01, d) for d in due)])
