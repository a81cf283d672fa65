"""The whole program (CLI -> pynvml -> simulated NVML -> labels -> stdout) against machine profiles."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gfd.cli import main
from tests.expected import compute, flags, mig_attributes, resource, versions


def run(capsys: Any, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    code = main(["--oneshot", "--no-timestamp", "--output-file=-", *args], env or {})
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines == sorted(lines), "labels must be written sorted"
    return code, dict(line.split("=", 1) for line in lines), err


def sharing_file(tmp_path: Any, kind: str, name: str = "nvidia.com/gpu", replicas: int = 4,
                 rename_by_default: bool = False) -> str:
    path = tmp_path / "sharing.yaml"
    path.write_text(yaml.safe_dump({"version": "v1", "sharing": {kind: {
        "renameByDefault": rename_by_default, "resources": [{"name": name, "replicas": replicas}]}}}))
    return str(path)


A100_40 = "NVIDIA-A100-SXM4-40GB"
DGX_A100 = versions("550.54.15", "12.4") | flags(True, machine="NVIDIA-DGX-A100") | compute(8, 0, "ampere")


def test_readme_main_job_prints_the_full_dgx_a100_label_set(capsys: Any) -> None:
    code, labels, _ = run(capsys, "--simulate", "dgx-a100")
    assert code == 0
    assert labels == DGX_A100 | resource("gpu", A100_40, 8, memory=40960)


@pytest.mark.parametrize(("strategy", "extra"), [
    ("none", {}),
    ("single", {"nvidia.com/mig.strategy": "single"}),
    ("mixed", {"nvidia.com/mig.strategy": "mixed"}),
])
@pytest.mark.parametrize(("sharing", "replicas", "product", "sharing_strategy"), [
    (None, 1, A100_40, "none"),
    ("timeSlicing", 4, A100_40 + "-SHARED", "time-slicing"),
    ("mps", 4, A100_40 + "-SHARED", "mps"),
])
def test_dgx_a100_every_strategy_and_sharing(capsys: Any, tmp_path: Any, strategy: str, extra: dict[str, str],
                                              sharing: str | None, replicas: int, product: str,
                                              sharing_strategy: str) -> None:
    args = ["--simulate", "dgx-a100", f"--mig-strategy={strategy}"]
    if sharing:
        args.append(f"--config-file={sharing_file(tmp_path, sharing)}")
    code, labels, _ = run(capsys, *args)
    assert code == 0
    assert labels == DGX_A100 | extra | flags(True, mps_capable=sharing == "mps", machine="NVIDIA-DGX-A100") | \
        resource("gpu", product, 8, replicas, sharing_strategy, memory=40960)


SINGLE_1G5 = mig_attributes("gpu", 4864, 14, 1, 1, 1, 0, 0, 0, 0)


@pytest.mark.parametrize(("sharing", "product", "replicas", "strategy"), [
    (None, A100_40 + "-MIG-1g.5gb", 1, "none"),
    ("timeSlicing", A100_40 + "-MIG-1g.5gb-SHARED", 4, "time-slicing"),
])
def test_uniform_mig_single(capsys: Any, tmp_path: Any, sharing: str | None, product: str, replicas: int,
                            strategy: str) -> None:
    args = ["--simulate", "a100-mig-single", "--mig-strategy=single"]
    if sharing:
        args.append(f"--config-file={sharing_file(tmp_path, sharing)}")
    code, labels, _ = run(capsys, *args)
    assert code == 0
    assert labels == DGX_A100 | {"nvidia.com/mig.strategy": "single"} | \
        resource("gpu", product, 56, replicas, strategy) | SINGLE_1G5


def test_uniform_mig_none_labels_full_gpus_unshared(capsys: Any) -> None:
    _, labels, _ = run(capsys, "--simulate", "a100-mig-single")
    assert labels == DGX_A100 | resource("gpu", A100_40, 8, 0, "none", memory=40960)


def test_uniform_mig_with_mps_fails_like_upstream(capsys: Any, tmp_path: Any) -> None:
    code, labels, err = run(capsys, "--simulate", "a100-mig-single", f"--config-file={sharing_file(tmp_path, 'mps')}")
    assert code == 1 and labels == {}
    assert "MPS sharing is not supported for mig devices" in err


def a100_80_mixed(profile: str, count: int, memory: int, sm: int, gi: int, copy: int, dec: int, jpeg: int = 0,
                  ofa: int = 0, replicas: int = 1, strategy: str = "none", suffix: str = "") -> dict[str, str]:
    key = f"mig-{profile}"
    return resource(key, f"NVIDIA-A100-SXM4-80GB-MIG-{profile}{suffix}", count, replicas, strategy) | \
        mig_attributes(key, memory, sm, gi, gi, copy, dec, 0, jpeg, ofa)


MIXED_80 = versions("550.54.15", "12.4") | flags(True, machine="NVIDIA-DGX-A100", strategy="mixed") | \
    compute(8, 0, "ampere") | resource("gpu", "NVIDIA-A100-SXM4-80GB", 8, 0, "none", memory=81920) | \
    a100_80_mixed("3g.40gb", 2, 40192, 42, 3, 3, 2) | a100_80_mixed("2g.20gb", 4, 19968, 28, 2, 2, 1) | \
    a100_80_mixed("7g.80gb", 2, 80896, 98, 7, 7, 5, 1, 1) | a100_80_mixed("4g.40gb", 2, 40192, 56, 4, 4, 2) | \
    a100_80_mixed("1g.10gb.me", 2, 9728, 14, 1, 1, 1, 1, 1)


def test_mixed_mig_layout_mixed_strategy(capsys: Any) -> None:
    code, labels, _ = run(capsys, "--simulate", "a100-80gb-mig-mixed", "--mig-strategy=mixed")
    assert code == 0
    assert labels == MIXED_80 | a100_80_mixed("1g.10gb", 18, 9728, 14, 1, 1, 0)


def test_mixed_mig_layout_shared_profile(capsys: Any, tmp_path: Any) -> None:
    cfg = sharing_file(tmp_path, "timeSlicing", "nvidia.com/mig-1g.10gb", 2)
    _, labels, _ = run(capsys, "--simulate", "a100-80gb-mig-mixed", "--mig-strategy=mixed", "--config-file", cfg)
    assert labels == MIXED_80 | a100_80_mixed("1g.10gb", 18, 9728, 14, 1, 1, 0, replicas=2,
                                              strategy="time-slicing", suffix="-SHARED")


def test_mixed_mig_layout_single_strategy_is_invalid(capsys: Any) -> None:
    code, labels, err = run(capsys, "--simulate", "a100-80gb-mig-mixed", "--mig-strategy=single")
    assert code == 0
    assert labels == versions("550.54.15", "12.4") | flags(True, machine="NVIDIA-DGX-A100", strategy="single") | \
        compute(8, 0, "ampere") | resource("gpu", "NVIDIA-A100-SXM4-80GB-MIG-INVALID", 0, 0, "", memory=0)
    assert "more than one MIG device type present on node" in err


def reference_ex7(tmp_path: Any) -> str:
    path = tmp_path / "ex7.yaml"
    path.write_text(yaml.safe_dump({
        "machine": "NVIDIA DGX A100", "driver_version": "550.54.15", "cuda_driver_version": 12040,
        "gpus": [{"model": "A100-SXM4-40GB", "mig": ["3g.20gb", "3g.20gb"]}, {"model": "A100-SXM4-40GB"}]}))
    return str(path)


EX7_NONE = versions("550.54.15", "12.4") | compute(8, 0, "ampere") | flags(True, machine="NVIDIA-DGX-A100") | \
    resource("gpu", A100_40, 2, memory=40960)


def test_reference_ex7_mixed(capsys: Any, tmp_path: Any) -> None:
    _, labels, _ = run(capsys, "--simulate", reference_ex7(tmp_path), "--mig-strategy=mixed")
    assert labels == EX7_NONE | {"nvidia.com/mig.strategy": "mixed"} | \
        resource("mig-3g.20gb", A100_40 + "-MIG-3g.20gb", 2) | \
        mig_attributes("mig-3g.20gb", 19968, 42, 3, 3, 3, 2, 0, 0, 0)


def test_reference_ex7_single_and_none(capsys: Any, tmp_path: Any) -> None:
    _, single, _ = run(capsys, "--simulate", reference_ex7(tmp_path), "--mig-strategy=single")
    assert single == EX7_NONE | {"nvidia.com/mig.strategy": "single"} | \
        resource("gpu", A100_40 + "-MIG-INVALID", 0, 0, "", memory=0)
    _, none, _ = run(capsys, "--simulate", reference_ex7(tmp_path), "--mig-strategy=none")
    assert none == EX7_NONE


H100 = "NVIDIA-H100-80GB-HBM3"


@pytest.mark.parametrize(("profile", "expected"), [
    ("dgx-h100", versions("550.90.07", "12.4") | flags(True, machine="DGXH100") | compute(9, 0, "hopper") |
     resource("gpu", H100, 8, memory=81559)),
    ("t4", versions("535.183.01", "12.2") | flags(False, machine="g4dn.12xlarge") | compute(7, 5, "turing") |
     resource("gpu", "Tesla-T4", 4, memory=15360)),
    ("l4", versions("560.35", "12.6") | flags(False, machine="g2-standard-8") | compute(8, 9, "ada-lovelace") |
     resource("gpu", "NVIDIA-L4", 1, memory=23034)),
    ("gh200", versions("570.86.15", "12.8") | flags(True, machine="ProLiant-XD670") | compute(9, 0, "hopper") |
     resource("gpu", "NVIDIA-GH200-480GB", 1, memory=97871) |
     {"nvidia.com/gpu.clique": "7b968a6d-c8aa-45e1-9e07-e1e51be99c31.1"}),
    ("heterogeneous", versions("550.54.15", "12.4") | flags(True, machine="custom-workstation") |
     compute(8, 0, "ampere") | resource("gpu", A100_40, 2, memory=40960)),
    ("odd-names", versions("470.82.01", "11.4") | flags(False, mode="graphics", machine="Bro-Tower-Rev-2") |
     compute(6, 1, "pascal") | resource("gpu", "NVIDIA-TITAN-X-Pascal", 1, memory=12288)),
    ("vgpu-host", versions("460.32.03", "11.2") | flags(False, machine="VMware71", vgpu=True) |
     compute(7, 5, "turing") | resource("gpu", "Tesla-T4", 2, memory=15360) |
     {"nvidia.com/vgpu.host-driver-version": "460.16", "nvidia.com/vgpu.host-driver-branch": "r460_00"}),
    ("memory-fault", versions("550.90.07", "12.4") | flags(True, machine="DGXH100") | compute(9, 0, "hopper") |
     resource("gpu", H100, 1)),
    ("no-gpus", {"nvidia.com/vgpu.present": "false"}),
])
@pytest.mark.parametrize("strategy", ["none", "single", "mixed"])
def test_profiles_under_every_strategy(capsys: Any, profile: str, expected: dict[str, str], strategy: str) -> None:
    code, labels, _ = run(capsys, "--simulate", profile, f"--mig-strategy={strategy}")
    assert code == 0
    gpus = profile != "no-gpus"
    assert labels == expected | ({"nvidia.com/mig.strategy": strategy} if gpus and strategy != "none" else {})


def test_heterogeneous_choice_is_deterministic_and_prefers_the_majority(capsys: Any, tmp_path: Any) -> None:
    path = tmp_path / "het.yaml"
    path.write_text(yaml.safe_dump({"gpus": [{"model": "T4"}, {"model": "L4", "count": 2}, {"model": "T4"},
                                             {"model": "L4"}]}))
    products = set()
    for _ in range(20):
        _, labels, _ = run(capsys, "--simulate", str(path))
        products.add((labels["nvidia.com/gpu.product"], labels["nvidia.com/gpu.count"]))
    assert products == {("NVIDIA-L4", "3")}


def test_heterogeneous_tie_goes_to_the_model_of_the_lowest_index(capsys: Any, tmp_path: Any) -> None:
    path = tmp_path / "tie.yaml"
    path.write_text(yaml.safe_dump({"gpus": [{"model": "L4"}, {"model": "T4"}]}))
    _, labels, _ = run(capsys, "--simulate", str(path))
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-L4"


def test_mig_disabled_model_wins_over_a_larger_mig_enabled_one(capsys: Any, tmp_path: Any) -> None:
    path = tmp_path / "mig-vs-full.yaml"
    path.write_text(yaml.safe_dump({"gpus": [{"model": "A100-SXM4-40GB", "count": 3, "mig": ["7g.40gb"]},
                                             {"model": "T4"}]}))
    _, labels, _ = run(capsys, "--simulate", str(path))
    assert (labels["nvidia.com/gpu.product"], labels["nvidia.com/gpu.replicas"]) == ("Tesla-T4", "1")


@pytest.mark.parametrize(("fabrics", "clique"), [
    ([{"cluster_uuid": "7b968a6d-c8aa-45e1-9e07-e1e51be99c31", "clique_id": 4}, None],
     "7b968a6d-c8aa-45e1-9e07-e1e51be99c31.4"),
    ([{"cluster_uuid": "7b968a6d-c8aa-45e1-9e07-e1e51be99c31", "clique_id": 4},
      {"cluster_uuid": "7b968a6d-c8aa-45e1-9e07-e1e51be99c31", "clique_id": 5}], None),
    ([{"cluster_uuid": "7b968a6d-c8aa-45e1-9e07-e1e51be99c31", "clique_id": 4},
      {"cluster_uuid": "00000000-0000-0000-0000-000000000001", "clique_id": 4}], None),
    ([{"cluster_uuid": "7b968a6d-c8aa-45e1-9e07-e1e51be99c31", "clique_id": 4, "state": 2}, None], None),
    ([{"cluster_uuid": "00000000-0000-0000-0000-000000000000", "clique_id": 4}, None], None),
])
def test_imex_clique(capsys: Any, tmp_path: Any, fabrics: list[Any], clique: str | None) -> None:
    path = tmp_path / "fabric.yaml"
    path.write_text(yaml.safe_dump({"gpus": [{"model": "GH200", "fabric": f} if f else {"model": "GH200"}
                                             for f in fabrics]}))
    _, labels, _ = run(capsys, "--simulate", str(path))
    assert labels.get("nvidia.com/gpu.clique") == clique


def fault_profile(tmp_path: Any, call: str, error: str = "UNKNOWN", mig: bool = False) -> str:
    path = tmp_path / "fault.yaml"
    gpu: dict[str, Any] = {"model": "A100-SXM4-40GB"}
    if mig:
        gpu["mig"] = ["3g.20gb"]
    path.write_text(yaml.safe_dump({"gpus": [gpu], "faults": [{"call": call, "error": error}]}))
    return str(path)


@pytest.mark.parametrize(("call", "message"), [
    ("nvmlDeviceGetCount_v2", "error getting devices: ERROR_UNKNOWN"),
    ("nvmlDeviceGetHandleByIndex_v2", "error getting devices: ERROR_UNKNOWN"),
    ("nvmlDeviceGetName", "error getting devices: ERROR_UNKNOWN"),
    ("nvmlSystemGetDriverVersion", "error getting driver version: ERROR_UNKNOWN"),
    ("nvmlSystemGetCudaDriverVersion", "error getting CUDA driver version: ERROR_UNKNOWN"),
    ("nvmlDeviceGetCudaComputeCapability", "error getting CUDA compute capability: ERROR_UNKNOWN"),
    ("nvmlDeviceGetMigMode", "error getting MIG mode: ERROR_UNKNOWN"),
    ("nvmlDeviceGetGpuFabricInfoV", "error getting GPU fabric info: ERROR_UNKNOWN"),
])
def test_fatal_nvml_errors_fail_the_pass_with_one_line_and_no_traceback(capsys: Any, tmp_path: Any, call: str,
                                                                        message: str) -> None:
    code, labels, err = run(capsys, "--simulate", fault_profile(tmp_path, call))
    assert (code, labels) == (1, {})
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("call", "key", "value"), [
    ("nvmlDeviceGetMigMode", "nvidia.com/mig.capable", "false"),
    ("nvmlDeviceGetGpuFabricInfoV", "nvidia.com/gpu.clique", None),
])
def test_not_supported_is_not_fatal(capsys: Any, tmp_path: Any, call: str, key: str, value: str | None) -> None:
    code, labels, _ = run(capsys, "--simulate", fault_profile(tmp_path, call, "NOT_SUPPORTED"))
    assert code == 0
    assert labels.get(key) == value
    assert labels["nvidia.com/gpu.product"] == A100_40


@pytest.mark.parametrize("call", ["nvmlDeviceGetAttributes_v2", "nvmlDeviceGetGpuInstanceId",
                                  "nvmlGpuInstanceGetInfo", "nvmlComputeInstanceGetInfo_v2"])
def test_mig_query_errors_fail_only_the_mig_strategies(capsys: Any, tmp_path: Any, call: str) -> None:
    profile = fault_profile(tmp_path, call, mig=True)
    assert run(capsys, "--simulate", profile)[0] == 0
    for strategy in ("single", "mixed"):
        code, _, err = run(capsys, "--simulate", profile, f"--mig-strategy={strategy}")
        assert code == 1 and "error getting MIG devices of GPU 0: ERROR_UNKNOWN" in err


@pytest.mark.parametrize("call", ["nvmlDeviceGetUUID", "nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetBrand",
                                  "nvmlDeviceGetMinorNumber", "nvmlDeviceGetArchitecture"])
def test_facts_upstream_does_not_read_never_fail_a_pass(capsys: Any, tmp_path: Any, call: str) -> None:
    code, labels, _ = run(capsys, "--simulate", fault_profile(tmp_path, call))
    assert code == 0 and labels["nvidia.com/gpu.product"] == A100_40
    assert labels["nvidia.com/gpu.mode"] == ("unknown" if call == "nvmlDeviceGetPciInfo_v3" else "compute")


def test_library_missing_fails_by_default_like_upstream(capsys: Any) -> None:
    code, labels, err = run(capsys, "--simulate", "no-library")
    assert (code, labels) == (1, {})
    assert "failed to create resource manager: unsupported strategy auto" in err


def test_library_missing_with_explicit_nvml_strategy(capsys: Any) -> None:
    code, _, err = run(capsys, "--simulate", "no-library", "--device-discovery-strategy=nvml")
    assert code == 1
    assert "failed to initialize resource manager: ERROR_LIBRARY_NOT_FOUND" in err


def test_library_missing_without_fail_on_init_error_labels_an_empty_node(capsys: Any) -> None:
    code, labels, _ = run(capsys, "--simulate", "no-library", "--fail-on-init-error=false")
    assert (code, labels) == (0, {"nvidia.com/vgpu.present": "false"})


def test_init_error_other_than_missing_library(capsys: Any, tmp_path: Any) -> None:
    code, _, err = run(capsys, "--simulate", fault_profile(tmp_path, "nvmlInitWithFlags", "DRIVER_NOT_LOADED"))
    assert code == 1
    assert "failed to initialize resource manager: ERROR_DRIVER_NOT_LOADED" in err


def test_timestamp_is_the_run_start(capsys: Any) -> None:
    import time

    before = int(time.time())
    main(["--oneshot", "-o", "-", "--simulate", "t4"], {})
    labels = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert before <= int(labels["nvidia.com/gfd.timestamp"]) <= int(time.time())


VFIO = {
    "nvidia.com/cuda.driver-version.full": "unknown.unknown.unknown",
    "nvidia.com/cuda.driver-version.major": "unknown", "nvidia.com/cuda.driver-version.minor": "unknown",
    "nvidia.com/cuda.driver-version.revision": "unknown", "nvidia.com/cuda.driver.major": "unknown",
    "nvidia.com/cuda.driver.minor": "unknown", "nvidia.com/cuda.driver.rev": "unknown",
} | {k: v for k, v in versions("1.2.3", "0.0").items() if "runtime" in k} | \
    {"nvidia.com/gpu.family": "undefined"} | flags(False, machine="PowerEdge-XE8545") | \
    resource("gpu", "GA100-A100-SXM4-40GB", 2, memory=2**37)


@pytest.mark.parametrize("strategy", ["none", "mixed"])
def test_vfio_back_end_labels_passthrough_gpus_from_sysfs(capsys: Any, strategy: str) -> None:
    """Upstream's vfio labels: PCI-ID name, -1/-1 compute, unknown driver, CUDA 0.0, BAR bytes as memory."""
    code, labels, err = run(capsys, "--simulate", "vfio-passthrough", "--device-discovery-strategy=vfio",
                            f"--mig-strategy={strategy}")
    assert code == 0
    assert labels == VFIO | ({"nvidia.com/mig.strategy": "mixed"} if strategy == "mixed" else {})
    assert "skipping NVIDIA GPU not bound to vfio-pci" in err  # the T4 on the nvidia driver


def test_vfio_without_a_pci_id_database_names_by_device_id(tmp_path: Any) -> None:
    from gfd.discovery.simulated.profiles import load_profile
    from gfd.discovery.simulated.sysfs_tree import materialise
    from gfd.discovery.vfio import read_vfio_gpus

    materialise(load_profile("vfio-passthrough"), str(tmp_path))
    (tmp_path / "usr/share/misc/pci.ids").unlink()
    vf = tmp_path / "sys/bus/pci/devices/0000:18:00.0"
    (vf / "physfn").symlink_to(tmp_path / "sys/bus/pci/devices/0000:10:00.0")  # an SR-IOV VF: skipped
    gpus = read_vfio_gpus(str(tmp_path))
    # NVML's bus-id form (8-digit domain), so sysfs lookups work the same for both back-ends.
    assert [(g.name, g.pci_bus_id, g.memory_mib) for g in gpus] == [("Device 20b0", "00000000:10:00.0", 2**37)]
