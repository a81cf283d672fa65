"""gfd/discovery/nvml.py: the calls made outside a node read (MPS compute modes, doctor's pending
states, telemetry handles) report a lost GPU the one way the reader does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gfd.discovery import nvml
from gfd.discovery.errors import DiscoveryError, GpuLost
from gfd.model import Gpu


@pytest.fixture
def a100(opened: Callable[[str], tuple[Any, tuple[Gpu, ...]]]) -> tuple[Any, tuple[Gpu, ...]]:
    return opened("a100-mig-single")


def test_a_lost_gpu_is_gpulost_wherever_its_handle_is_asked_for(a100: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = a100
    assert nvml.gpu_handle(1) is not None
    sim.node.gpus[1].lost = True
    with pytest.raises(GpuLost) as lost:
        nvml.gpu_handle(1)
    assert lost.value.call == "nvmlDeviceGetHandleByIndex"
    with pytest.raises(DiscoveryError, match="error setting compute mode DEFAULT on GPU 1: ERROR_GPU_IS_LOST"):
        nvml.set_compute_mode(1, "DEFAULT")
    states = nvml.pending_states(gpus)
    assert 1 not in states and set(states) == {g.index for g in gpus} - {1}


def test_pending_states_say_what_waits_for_a_reset(a100: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = a100
    sim.node.gpus[0].mig_pending = False  # MIG on now, off after the next reset
    states = nvml.pending_states(gpus)
    assert (states[0].mig_current, states[0].mig_pending) == (1, 0)
    assert (states[1].mig_current, states[1].mig_pending) == (1, 1)
    assert states[0].rows_pending is False and states[0].remap_failed is False
