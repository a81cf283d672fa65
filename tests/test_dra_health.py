"""Device health as DRA taints (plugin/dra/health.py): the checker's faults mapped to NVIDIA's taints
(dra-research §3), and the whole path on a simulated node: an XID from the simulated driver, through the
plugin's health checker, to a tainted device, a kubelet health answer, and recovery."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest

from gfd.discovery.session import NodeSource
from gfd.lifecycle import Scope
from plugin.dra import taints
from plugin.dra.devices import allocatable_devices
from plugin.dra.health import HealthFeed, device_health, xid_policy
from plugin.dra.server import HealthBoard
from plugin.health import LOST, UNMONITORED, XID, Fault, HealthChecker, HealthState
from tests.helpers import eventually

GPU = "GPU-a"


def test_faults_become_nvidias_taints() -> None:
    health = device_health({(GPU, -1, -1): Fault(XID, "XID 79", 79), ("GPU-b", -1, -1): Fault(LOST, "probe failed"),
                            ("GPU-c", 1, 0): Fault(UNMONITORED, "cannot register for events")}, None,
                           {("GPU-d", -1, -1): 13})
    assert [t.as_api() for t in health.of(GPU)] == [{"key": "gpu.nvidia.com/xid", "value": "79",
                                                     "effect": "NoSchedule"}]
    assert [t.as_api() for t in health.of("GPU-b")] == [{"key": "gpu.nvidia.com/gpu-lost", "effect": "NoSchedule"}]
    assert health.of("GPU-c") == () and [t.as_api() for t in health.of("GPU-c", 1, 0)] == [
        {"key": "gpu.nvidia.com/unmonitored", "effect": "None"}]
    assert [t.as_api() for t in health.of("GPU-d")] == [{"key": "gpu.nvidia.com/xid", "value": "13", "effect": "None"}]


def test_checks_that_cannot_run_leave_every_device_unmonitored() -> None:
    health = device_health({}, "health watcher cannot start: NVML down")
    assert health.of("GPU-any") == (taints.unmonitored(),)


def test_operator_ignored_xids_join_nvidias() -> None:
    policy = xid_policy(("48",))
    assert {x: policy.critical(x) for x in (13, 31, 48, 79)} == {13: False, 31: False, 48: False, 79: True}


@pytest.fixture
def feed(simulate: Any) -> Iterator[tuple[Any, HealthFeed, HealthBoard, list[taints.DeviceHealth]]]:
    """The simulated dgx-a100 with the plugin's checker (recovery after 0.5 s, probes every 0.1 s) feeding DRA."""
    sim = simulate("dgx-a100")
    source = NodeSource("nvml")
    source.host_root = sim.host_root
    source.open()
    model = source.read()
    state = HealthState(recovery_s=0.5)
    board = HealthBoard()
    changes: list[taints.DeviceHealth] = []
    feed = HealthFeed(state, xid_policy(("48",)), allocatable_devices(model), board, changes.append)
    checker = HealthChecker(model.gpus, state, feed.policy, 0.1, wait_ms=50, xid_seen=feed.xid_seen)
    with Scope("health") as scope:
        scope.start_thread("health", functools.partial(checker.run, scope.stopping))
        scope.start_thread("health taints", functools.partial(feed.run, scope.stopping), wake=feed.wake)
        yield sim, feed, board, changes
    source.close()


def test_an_xid_taints_its_gpu_until_it_recovers(feed: tuple[Any, HealthFeed, HealthBoard,
                                                             list[taints.DeviceHealth]]) -> None:
    sim, f, board, changes = feed
    eventually(lambda: len(changes) == 1)
    assert changes[0] == taints.HEALTHY and board.snapshot()[1]["gpu-2"] == ("Healthy", "")
    sim.library.inject_xid(2, 79)
    eventually(lambda: f.current is not None and f.current.of(sim.node.gpus[2].uuid) == (taints.xid(79),))
    assert board.snapshot()[1]["gpu-2"] == ("Unhealthy", "critical XID 79 reported by NVML")
    current = f.current
    assert current is not None and all(current.of(g.uuid) == () for g in sim.node.gpus if g is not sim.node.gpus[2])
    eventually(lambda: f.current == taints.HEALTHY, timeout=5)  # its probe passes for the recovery period
    assert board.snapshot()[1]["gpu-2"] == ("Healthy", "")


def test_an_ignored_xid_is_a_note_that_keeps_the_device_allocatable(feed: tuple[Any, HealthFeed, HealthBoard,
                                                                                list[taints.DeviceHealth]]) -> None:
    sim, f, board, _ = feed
    sim.library.inject_xid(1, 48)  # ignored by the operator's --additional-xids-to-ignore
    eventually(lambda: f.current is not None and f.current.of(sim.node.gpus[1].uuid) == (taints.xid(48, False),))
    assert board.snapshot()[1]["gpu-1"] == ("Healthy", "")
    eventually(lambda: f.current == taints.HEALTHY, timeout=5)  # the note expires with the recovery period


def test_a_gpu_whose_mps_daemon_does_not_answer_is_tainted_until_it_does(
        feed: tuple[Any, HealthFeed, HealthBoard, list[taints.DeviceHealth]]) -> None:
    """Enforced memory shares (plugin/dra/mpsshares.py) report their GPU's daemon through the same feed."""
    sim, f, board, _ = feed
    uuid = sim.node.gpus[3].uuid
    eventually(lambda: f.current == taints.HEALTHY)
    f.mps_health(uuid, "no answer in 10s")
    eventually(lambda: f.current is not None and f.current.of(uuid) == (taints.mps_not_ready(),))
    assert [t.as_api() for t in f.current.of(uuid)] == [{"key": "gfd-py.github.io/mps-not-ready",  # type: ignore[union-attr]
                                                         "effect": "NoSchedule"}]
    assert board.snapshot()[1]["gpu-3"] == ("Unhealthy", "the MPS daemon of its shares does not answer")
    f.mps_health(uuid, None)
    eventually(lambda: f.current == taints.HEALTHY)
    assert board.snapshot()[1]["gpu-3"] == ("Healthy", "")
