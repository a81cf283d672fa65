"""plugin/dra/shares.py: a share's limits from what the scheduler recorded it consumed (consumedCapacity, as the
real API server returns it: canonical quantities, every capacity of the device present), which shares MPS holds
to them, and the node's share records."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin.dra.checkpoint import PREPARE_COMPLETED, PreparedClaim, PreparedDevice
from plugin.dra.claims import AllocationResult, ClaimRef, PodRef
from plugin.dra.devices import Allocatable, allocatable_devices
from plugin.dra.shares import Share, ShareLimits, gpu_limits, gpu_modes, node_shares, share_limits
from plugin.dra.sharing import ConsumableShares, quantity
from tests import builders

ENFORCED, COUNTED = ConsumableShares.parse("memory", "mps"), ConsumableShares.parse("memory")
GPU = builders.gpu(0)  # 40 GiB (builders' A100)
GPU_MIB = 40960
MIG = builders.model(builders.gpu(1, builders.mig(0, "1g.5gb", 7)))


def device(gpu_memory_mib: int | None = None) -> Allocatable:
    return Allocatable("gpu-0", GPU if gpu_memory_mib is None else replace(GPU, memory_mib=gpu_memory_mib))


def result(**consumed: str) -> AllocationResult:
    return AllocationResult("gpu", "gpu.nvidia.com", "node", "gpu-0", share_id="0b7c", consumed_capacity=consumed)


def test_a_share_is_limited_to_the_memory_and_compute_it_consumed() -> None:
    limits = share_limits(result(memory="30Gi", compute="25"), device(80 * 1024), ENFORCED)
    assert limits == ShareLimits(GPU.uuid, 30 * 1024, 25, True)


def test_a_claim_that_named_only_memory_consumed_no_compute_and_gets_no_thread_limit() -> None:
    assert share_limits(result(memory="4Gi", compute="0"), device(80 * 1024), ENFORCED) == \
        ShareLimits(GPU.uuid, 4096, 0, True)


def test_amounts_that_are_not_whole_units_are_rounded_up() -> None:
    """The device's policy (step 1Mi, step 1) already rounds up; a quantity that is not whole (written by another
    allocator) is still never rounded down below what was allocated."""
    assert share_limits(result(memory="1500000k", compute="30500m"), device(80 * 1024), ENFORCED) == \
        ShareLimits(GPU.uuid, 1431, 31, True)


def test_a_claim_that_consumed_the_whole_gpu_gets_it_without_mps() -> None:
    """A claim naming no amount consumes the policy's default, the whole memory (NVIDIA's `memory` shape)."""
    whole = quantity(GPU_MIB * 1024 * 1024)
    assert share_limits(result(memory=whole, compute="0"), device(), ENFORCED) == \
        ShareLimits(GPU.uuid, GPU_MIB, 0, False)


def test_only_enforced_memory_shares_of_full_gpus_are_held_by_mps() -> None:
    assert share_limits(result(memory="4Gi"), device(), COUNTED) == ShareLimits(GPU.uuid, 4096, 0, False)
    (mig,) = allocatable_devices(MIG)
    assert share_limits(result(memory="1Gi"), mig, ENFORCED) == ShareLimits(mig.mig.uuid, 1024, 0, False)  # type: ignore[union-attr]
    # A GPU whose memory NVML did not tell: nothing to size a share by.
    assert share_limits(result(memory="4Gi"), Allocatable("gpu-0", replace(GPU, memory_mib=None)), ENFORCED) == \
        ShareLimits(GPU.uuid, 4096, 0, False)


def test_a_result_without_a_share_id_or_for_admin_access_is_no_share() -> None:
    assert share_limits(replace(result(memory="4Gi"), share_id=None), device(), ENFORCED) is None
    assert share_limits(replace(result(memory="4Gi"), admin_access=True), device(), ENFORCED) is None


def test_time_slicing_shares_consume_no_memory_and_are_counted_only() -> None:
    n = ConsumableShares.parse("4", "mps")
    assert share_limits(result(memory="0", shares="1"), device(), n) == ShareLimits(GPU.uuid, 0, 0, False)


def test_a_quantity_that_is_not_one_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        share_limits(result(memory="lots"), device(), ENFORCED)


@given(st.integers(1, 80 * 1024 * 1024 * 1024), st.integers(0, 100))
def test_a_limit_never_falls_below_what_was_consumed(memory: int, compute: int) -> None:
    limits = share_limits(result(memory=str(memory), compute=str(compute)), device(80 * 1024), ENFORCED)
    assert limits is not None and limits.memory_mib is not None
    assert limits.memory_mib * 1024 * 1024 >= memory > (limits.memory_mib - 1) * 1024 * 1024
    assert limits.compute_percent == compute


def test_a_claims_shares_of_one_gpu_add_up_and_compute_stops_at_the_whole_gpu() -> None:
    a, b = ShareLimits("GPU-a", 1024, 60, True), ShareLimits("GPU-a", 2048, 70, True)
    assert gpu_limits([a, b, ShareLimits("GPU-b", 512, 0, False)]) == {"GPU-a": ShareLimits("GPU-a", 3072, 100, True)}


def test_a_gpus_mode_is_its_shares_and_enforced_wins() -> None:
    """Prepare keeps a GPU's shares in one mode; were they mixed, the GPU's daemon runs, so it counts as enforced."""
    shares = [ShareLimits("GPU-a", 1024, 0, False), ShareLimits("GPU-a", 1024, 0, True), ShareLimits("GPU-b", 1, 0)]
    assert gpu_modes(shares) == {"GPU-a": True, "GPU-b": False} and gpu_modes([]) == {}


def test_the_nodes_shares_name_claim_pods_device_and_share() -> None:
    limits = ShareLimits(GPU.uuid, 4096, 0, True)
    claim = PreparedClaim("uid-1", "team-a", "train", PREPARE_COMPLETED, (
        PreparedDevice(("gpu",), "node", "gpu-0", ("k8s.gpu.nvidia.com/claim=uid-1-gpu-0",), "0b7c", share=limits),
        PreparedDevice(("nic",), "node", "gpu-1", ("k8s.gpu.nvidia.com/claim=uid-1-gpu-1",))),
        (PodRef("train-0", "pod-uid"),))
    assert node_shares([claim]) == [Share(ClaimRef("team-a", "train", "uid-1"), (PodRef("train-0", "pod-uid"),),
                                          "gpu-0", "0b7c", limits, "node")]
