"""The simulated library under the real pynvml binding: marshalling, errors, call counting."""

from __future__ import annotations

from typing import Any

import pynvml
import pytest

from gfd.discovery import nvml
from gfd.discovery.errors import NvmlUnavailable
from gfd.discovery.simulated.profiles import Fault


def test_pynvml_reads_the_profile_through_its_own_bindings(simulate: Any) -> None:
    sim = simulate("dgx-a100")
    pynvml.nvmlInit()
    try:
        assert pynvml.nvmlDeviceGetCount() == 8
        h = pynvml.nvmlDeviceGetHandleByIndex(3)
        assert pynvml.nvmlDeviceGetName(h) == "NVIDIA A100-SXM4-40GB"
        assert pynvml.nvmlDeviceGetMemoryInfo(h).total == 40960 * 2**20
        assert pynvml.nvmlDeviceGetCudaComputeCapability(h) == (8, 0)
        assert pynvml.nvmlDeviceGetPciInfo(h).busId in (b"00000000:4E:00.0", "00000000:4E:00.0")
        assert pynvml.nvmlDeviceGetMigMode(h) == [0, 0]
        assert pynvml.nvmlSystemGetDriverVersion() == "550.54.15"
        assert pynvml.nvmlDeviceGetUUID(h).startswith("GPU-")
    finally:
        pynvml.nvmlShutdown()
    assert sim.library.calls["nvmlDeviceGetName"] == 1


def test_mig_devices_walk(simulate: Any) -> None:
    simulate("a100-80gb-mig-mixed")
    pynvml.nvmlInit()
    try:
        parent = pynvml.nvmlDeviceGetHandleByIndex(0)
        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
        assert pynvml.nvmlDeviceGetAttributes(mig).memorySizeMB == 40192
        gi = pynvml.nvmlDeviceGetGpuInstanceById(parent, pynvml.nvmlDeviceGetGpuInstanceId(mig))
        # The driver's profile ID (9 for 3g.40gb), not the NVML_GPU_INSTANCE_PROFILE_3_SLICE index (2).
        assert pynvml.nvmlGpuInstanceGetInfo(gi).profileId == 9
        # Where the driver put it, in memory slices: the 3g.40gb takes 4 from slice 4, which leaves the
        # 2g.20gb and the two 1g.10gb of the layout slices 0-3 (`nvidia-smi mig -lgipp`: 9 {0,4}:4).
        placement = pynvml.nvmlGpuInstanceGetInfo(gi).placement
        assert (placement.start, placement.size) == (4, 4)
        info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(parent, pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE, 1)
        assert (info.id, info.sliceCount, info.memorySizeMB) == (9, 3, 40192)
        with pytest.raises(pynvml.NVMLError_NotSupported):  # no 8-slice profile on an A100
            pynvml.nvmlDeviceGetGpuInstanceProfileInfo(parent, pynvml.NVML_GPU_INSTANCE_PROFILE_8_SLICE, 1)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetGpuInstanceProfileInfo(parent, pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT, 1)
        ci_info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
            gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, 1)
        assert (ci_info.id, ci_info.sliceCount) == (0, 1)
        with pytest.raises(pynvml.NVMLError_NotSupported):  # a 3-slice instance has no 4-slice compute instance
            pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE, 0, 1)
        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 6)
    finally:
        pynvml.nvmlShutdown()


def test_calls_before_init_are_uninitialized(simulate: Any) -> None:
    simulate("t4")
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_unknown_symbol_is_function_not_found(simulate: Any) -> None:
    simulate("t4")
    pynvml.nvmlInit()
    try:
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            pynvml.nvmlDeviceGetFanSpeed(pynvml.nvmlDeviceGetHandleByIndex(0))  # not simulated
    finally:
        pynvml.nvmlShutdown()


def test_library_missing_and_appearing(simulate: Any) -> None:
    sim = simulate("no-library")
    with pytest.raises(NvmlUnavailable) as e:
        nvml.init()
    assert e.value.library_missing
    sim.set_library_present(True)
    nvml.init()
    assert pynvml.nvmlDeviceGetCount() == 8
    nvml.shutdown()


def test_lost_gpu_and_per_gpu_faults(simulate: Any) -> None:
    sim = simulate("t4")
    sim.node.gpus[1].lost = True
    sim.node.faults.append(Fault("nvmlDeviceGetBrand", pynvml.NVML_ERROR_UNKNOWN, gpu=2))
    pynvml.nvmlInit()
    try:
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            pynvml.nvmlDeviceGetHandleByIndex(1)
        with pytest.raises(pynvml.NVMLError_Unknown):
            pynvml.nvmlDeviceGetBrand(pynvml.nvmlDeviceGetHandleByIndex(2))
        assert pynvml.nvmlDeviceGetBrand(pynvml.nvmlDeviceGetHandleByIndex(0)) == pynvml.NVML_BRAND_TESLA
    finally:
        pynvml.nvmlShutdown()


def test_a_mig_layout_that_cannot_exist_is_refused() -> None:
    """Two 4g instances need 8 memory slices from the one placement a 4g profile has (5 {0}:4)."""
    from gfd.config import ConfigError
    from gfd.discovery.simulated.profiles import build_node

    with pytest.raises(ConfigError, match=r"gpus\[0\]\.mig: MIG layout .* does not fit the GPU's 8 memory slices"):
        build_node({"gpus": [{"model": "A100-SXM4-40GB", "mig": ["4g.20gb", "4g.20gb"]}]}, "<test>")
    placed = build_node({"gpus": [{"model": "A100-SXM4-40GB", "mig": ["3g.20gb", "3g.20gb"]}]}, "<test>")
    assert [m.placement for m in placed.gpus[0].mig] == [(0, 4), (4, 4)]


PROCESSES = {"gpus": [{"model": "A100-SXM4-40GB", "mig": ["3g.20gb", "1g.5gb"]}, {"model": "A100-SXM4-40GB"},
                      {"model": "TITAN-X-Pascal"}],
             "processes": [{"gpu": 1, "pid": 4242, "used_memory_mib": 1024, "kind": "M+C"},
                           {"gpu": 1, "pid": 77, "used_memory_mib": 5},
                           {"gpu": 1, "pid": 78, "used_memory_mib": 6, "kind": "M"},
                           {"gpu": 0, "mig": 2, "pid": 99, "used_memory_mib": 3, "kind": "M+C"},
                           {"gpu": 2, "pid": 5, "used_memory_mib": 1}]}


def test_running_processes_through_pynvmls_own_wrappers(simulate: Any) -> None:
    """pynvml asks the count with a NULL buffer first and reads nvmlProcessInfo_t (pid, usedGpuMemory in bytes,
    gpuInstanceId, computeInstanceId; 0xFFFFFFFF for both without MIG), as nvml.h documents them."""
    sim = simulate(PROCESSES)
    pynvml.nvmlInit()
    try:
        def listed(handle: Any, mps: bool = False) -> list[tuple[int, int, int, int]]:
            query = pynvml.nvmlDeviceGetMPSComputeRunningProcesses if mps else \
                pynvml.nvmlDeviceGetComputeRunningProcesses
            return [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in query(handle)]

        whole, mig_gpu, pascal = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in (1, 0, 2))
        none = 0xFFFFFFFF
        assert listed(whole) == [(4242, 1024 << 20, none, none), (77, 5 << 20, none, none)]
        assert listed(whole, mps=True) == [(4242, 1024 << 20, none, none), (78, 6 << 20, none, none)]
        small = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(mig_gpu, 1)
        assert listed(small, mps=True) == [(99, 3 << 20, 2, 0)]
        assert listed(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(mig_gpu, 0)) == []
        assert listed(mig_gpu) == [(99, 3 << 20, 2, 0)]  # the parent's handle: the aggregate
        assert listed(pascal) == [(5, 1 << 20, none, none)]
        with pytest.raises(pynvml.NVMLError_NotSupported):  # "for Volta or newer fully supported devices"
            listed(pascal, mps=True)
        sim.node.gpus[1].processes.clear()  # the list is read at each call
        assert listed(whole) == []
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.parametrize(("processes", "problem"), [
    ([{"gpu": 3, "pid": 1}], r"processes\[0\]: not a process of this node"),
    ([{"gpu": 0, "pid": 0}], r"processes\[0\]: not a process of this node"),
    ([{"gpu": 0, "pid": 1, "kind": "G"}], r"processes\[0\]: not a process of this node"),
    ([{"gpu": 1, "pid": 1, "mig": 1}], r"processes\[0\]\.mig: GPU 1 has no MIG device with GPU instance 1"),
    ([{"gpu": 0, "pid": 1, "cmdline": "x"}], r"processes\[0\]: expected \{gpu, mig, pid, used_memory_mib, kind\}"),
    ([{"gpu": 0, "pid": 1}] * 4097, r"processes: expected a list of at most 4096 processes"),
])
def test_a_process_the_node_cannot_run_is_refused(processes: list[Any], problem: str) -> None:
    from gfd.config import ConfigError
    from gfd.discovery.simulated.profiles import build_node

    with pytest.raises(ConfigError, match=problem):
        build_node({**PROCESSES, "processes": processes}, "<test>")
