"""GPUs that answer NVML_ERROR_GPU_IS_LOST: every per-GPU call site, in discovery, oneshot and the labels."""

from __future__ import annotations

from typing import Any

import pynvml
import pytest

from gfd.cli import main
from gfd.discovery.session import NodeSource
from gfd.discovery.simulated.profiles import Fault
from gfd.labelling import PassError, oneshot_labels

# Every NVML function the reader calls with a GPU's (or one of its MIG devices') handle, with a profile
# on which the reader reaches it. (Profile-info tables are read once per product, on its first GPU:
# those two calls are faulted on GPU 0.)
PER_GPU_CALLS = [
    ("dgx-a100", "nvmlDeviceGetHandleByIndex_v2"),
    ("dgx-a100", "nvmlDeviceGetUUID"),
    ("dgx-a100", "nvmlDeviceGetName"),
    ("dgx-a100", "nvmlDeviceGetMemoryInfo"),
    ("dgx-a100", "nvmlDeviceGetCudaComputeCapability"),
    ("dgx-a100", "nvmlDeviceGetPciInfo_v3"),
    ("dgx-a100", "nvmlDeviceGetArchitecture"),
    ("dgx-a100", "nvmlDeviceGetBrand"),
    ("dgx-a100", "nvmlDeviceGetMinorNumber"),
    ("dgx-a100", "nvmlDeviceGetVirtualizationMode"),
    ("dgx-a100", "nvmlDeviceGetMigMode"),
    ("dgx-a100", "nvmlDeviceGetGpuFabricInfoV"),
    ("a100-mig-single", "nvmlDeviceGetMaxMigDeviceCount"),
    ("a100-mig-single", "nvmlDeviceGetMigDeviceHandleByIndex"),
    ("a100-mig-single", "nvmlDeviceGetAttributes_v2"),
    ("a100-mig-single", "nvmlDeviceGetGpuInstanceId"),
    ("a100-mig-single", "nvmlDeviceGetComputeInstanceId"),
    ("a100-mig-single", "nvmlDeviceGetGpuInstanceById"),
    ("a100-mig-single", "nvmlGpuInstanceGetInfo"),
    ("a100-mig-single", "nvmlDeviceGetGpuInstanceProfileInfo"),
    ("a100-mig-single", "nvmlGpuInstanceGetComputeInstanceById"),
    ("a100-mig-single", "nvmlComputeInstanceGetInfo_v2"),
    ("a100-mig-single", "nvmlGpuInstanceGetComputeInstanceProfileInfo"),
]


def _read(simulate: Any, profile: str, call: str, gpu: int) -> Any:
    sim = simulate(profile)
    sim.node.faults.append(Fault(call, pynvml.NVML_ERROR_GPU_IS_LOST, gpu=gpu))
    source = NodeSource("auto")
    source.host_root = sim.host_root
    source.open()
    try:
        return source.read(topology=True), sim, source.failed_queries
    finally:
        source.close_nvml()


@pytest.mark.parametrize(("profile", "call"), PER_GPU_CALLS)
def test_a_gpu_lost_at_any_call_site_is_reported_and_the_rest_are_read(simulate: Any, profile: str,
                                                                       call: str) -> None:
    gpu = 0 if "ProfileInfo" in call else 2
    model, sim, failed_queries = _read(simulate, profile, call, gpu)
    assert [g.index for g in model.gpus] == [i for i in range(len(sim.node.gpus)) if i != gpu]
    assert len(model.lost_gpus) == 1
    lost = model.lost_gpus[0]
    # Named from the kernel driver's /proc entry, so the device plugin can still advertise it.
    assert (lost.index, lost.uuid, lost.minor_number) == (gpu, sim.node.gpus[gpu].uuid, gpu)
    assert lost.call == call.removesuffix("_v2").removesuffix("_v3")
    assert any(e == "ERROR_GPU_IS_LOST" for _, e in failed_queries)


def test_topology_of_a_gpu_lost_between_reads_is_skipped_not_fatal(simulate: Any) -> None:
    model, _, _ = _read(simulate, "dgx1v", "nvmlDeviceGetTopologyCommonAncestor", 2)
    assert len(model.gpus) == 8 and model.links == () and model.lost_gpus == ()


def test_oneshot_keeps_upstreams_exit_status_with_one_line(simulate: Any, capsys: Any) -> None:
    sim = simulate("t4")
    sim.node.gpus[1].lost = True
    source = NodeSource("auto")
    source.host_root = sim.host_root
    with pytest.raises(PassError, match=r"GPU 1 \(GPU-[0-9a-f-]+\): ERROR_GPU_IS_LOST"):
        from gfd.config import load_config, parse_command_line

        oneshot_labels(source, load_config(parse_command_line(["--oneshot"], {})), 0)


def test_oneshot_cli_exits_1_on_a_lost_gpu(tmp_path: Any) -> None:
    profile = tmp_path / "lost.yaml"
    profile.write_text("gpus: [{model: T4, count: 2}]\nfaults: [{call: nvmlDeviceGetMemoryInfo, "
                       "error: GPU_IS_LOST, gpu: 1}]\n")
    assert main(["--oneshot", "-o", str(tmp_path / "out"), f"--simulate={profile}"], {}) == 1
    assert not (tmp_path / "out").exists()
