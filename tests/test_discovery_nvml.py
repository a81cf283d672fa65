"""gfd/discovery/nvml.py: the calls made outside a node read (MPS compute modes, doctor's pending
states, telemetry handles) report a lost GPU the one way the reader does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pynvml
import pytest

from gfd.discovery import nvml
from gfd.discovery.errors import DiscoveryError, GpuLost
from gfd.discovery.simulated.profiles import Fault
from gfd.discovery.sysfs import PciFacts
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


def test_nvml_errors_are_translated_with_their_answer_kept_as_data(a100: tuple[Any, tuple[Gpu, ...]]) -> None:
    """Issue 22: NVML's code is data on the error (the daemon used to parse it back out of the message),
    the pynvml error is the cause, and none leaves gfd/discovery raw."""
    sim, _gpus = a100
    sim.node.gpus[1].lost = True
    with pytest.raises(DiscoveryError) as lost:  # GpuLost is a DiscoveryError
        nvml.gpu_handle(1)
    assert isinstance(lost.value, GpuLost) and isinstance(lost.value.__cause__, pynvml.NVMLError_GpuIsLost)
    assert (lost.value.error, lost.value.code) == ("ERROR_GPU_IS_LOST", pynvml.NVML_ERROR_GPU_IS_LOST)
    sim.node.faults.append(Fault("nvmlDeviceSetComputeMode", pynvml.NVML_ERROR_NO_PERMISSION))
    with pytest.raises(DiscoveryError) as refused:
        nvml.set_compute_mode(0, "EXCLUSIVE_PROCESS")
    assert str(refused.value) == "error setting compute mode EXCLUSIVE_PROCESS on GPU 0: ERROR_NO_PERMISSION"
    assert (refused.value.call, refused.value.error, refused.value.code) == \
        ("nvmlDeviceSetComputeMode", "ERROR_NO_PERMISSION", pynvml.NVML_ERROR_NO_PERMISSION)
    assert isinstance(refused.value.__cause__, pynvml.NVMLError)
    with pytest.raises(DiscoveryError) as absent:  # not a raw pynvml error for the callers outside a read
        nvml.gpu_handle(99)
    assert absent.value.call == "nvmlDeviceGetHandleByIndex" and absent.value.error == "ERROR_INVALID_ARGUMENT"


def test_a_fatal_query_in_a_read_keeps_an_unnamed_code_as_data(a100: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, _gpus = a100
    sim.node.faults.append(Fault("nvmlDeviceGetCount_v2", 123))  # a code this pynvml has no name for
    with pytest.raises(DiscoveryError) as failed:
        nvml.NvmlReader().read_gpus(PciFacts(sim.host_root))
    assert str(failed.value) == "error getting devices: ERROR_123"
    assert (failed.value.call, failed.value.error, failed.value.code) == ("nvmlDeviceGetCount", "ERROR_123", 123)
