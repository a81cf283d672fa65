"""gfd/discovery/events.py: XID events and GPU probes through pynvml, on the simulated library."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pynvml
import pytest

from gfd.discovery.events import EventWatcher, XidEvent, probe, probe_fully
from gfd.discovery.simulated.profiles import Fault
from gfd.model import Gpu


@pytest.fixture
def t4(opened: Callable[[str], tuple[Any, tuple[Gpu, ...]]]) -> tuple[Any, tuple[Gpu, ...]]:
    return opened("t4")


def test_an_xid_arrives_with_its_gpu_and_instance(t4: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = t4
    watcher = EventWatcher(gpus)
    assert watcher.wait(10) is None  # nothing happened: a timeout
    sim.library.inject_xid(2, 79)
    sim.library.inject_xid(1, 94, gi_id=1, ci_id=0)
    assert watcher.wait(1000) == XidEvent(gpus[2].uuid, 79)
    assert watcher.wait(1000) == XidEvent(gpus[1].uuid, 94, 1, 0)
    watcher.close()


def test_xids_written_to_the_nodes_events_file_arrive(t4: tuple[Any, tuple[Gpu, ...]], tmp_path: Any) -> None:
    """Another process's way to make a simulated GPU fail: lines appended to the profile's `events_file`."""
    sim, gpus = t4
    events = tmp_path / "xids"
    events.write_text("")
    sim.node.events_file = str(events)
    watcher = EventWatcher(gpus)
    assert watcher.wait(10) is None
    with events.open("a") as f:
        f.write("2 79\nnot an event\n1 94 1 0\n3 4")  # the last line is not complete yet
    assert watcher.wait(1000) == XidEvent(gpus[2].uuid, 79)
    assert watcher.wait(1000) == XidEvent(gpus[1].uuid, 94, 1, 0)
    assert watcher.wait(10) is None
    with events.open("a") as f:
        f.write("8\n")
    assert watcher.wait(1000) == XidEvent(gpus[3].uuid, 48)
    watcher.close()


def test_registration_problems_are_told_apart(t4: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = t4
    sim.node.faults += [Fault("nvmlDeviceGetSupportedEventTypes", pynvml.NVML_ERROR_NOT_SUPPORTED, gpu=0),
                        Fault("nvmlDeviceRegisterEvents", pynvml.NVML_ERROR_UNKNOWN, gpu=1)]
    watcher = EventWatcher(gpus)
    assert watcher.unsupported == [gpus[0].uuid]  # too old for events: stays healthy, as upstream
    assert watcher.failed == {gpus[1].uuid: "ERROR_UNKNOWN"}  # unhealthy
    watcher.close()


def test_probes_find_a_lost_or_replaced_gpu(t4: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = t4
    assert probe(gpus[0]) is None
    assert probe(dataclasses.replace(gpus[0], uuid="GPU-someone-else")) == "ERROR_GPU_NOT_FOUND"
    sim.node.faults.append(Fault("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_GPU_IS_LOST, gpu=3))
    assert probe(gpus[3]) is None  # the cheap probe does not ask for memory
    assert probe_fully(3, sim.host_root) == "ERROR_GPU_IS_LOST in nvmlDeviceGetMemoryInfo"
    sim.node.gpus[1].lost = True
    assert probe(gpus[1]) == "ERROR_GPU_IS_LOST"
