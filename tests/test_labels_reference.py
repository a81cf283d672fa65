"""The worked examples of shared/reference/gfd-labels.md §5, as whole label sets.

Upstream's tests use mocks below go-nvlib (e.g. a MIG device named `1g.100gb` with 100 MiB), which
no NVML can report, so these build the device model directly: the labelers are pure functions of it.
"""

from __future__ import annotations

import dataclasses

import pytest

from gfd.config import Config, ReplicatedResource, ReplicatedResources, Sharing
from gfd.labels.compose import compose
from gfd.labels.errors import LabelError
from gfd.model import DeviceModel, Gpu, MigDevice, Vgpu
from tests.expected import mig_attributes

TS = 1795344118
COMMON = {
    "nvidia.com/cuda.driver-version.full": "400.300",
    "nvidia.com/cuda.driver-version.major": "400",
    "nvidia.com/cuda.driver-version.minor": "300",
    "nvidia.com/cuda.driver-version.revision": "",
    "nvidia.com/cuda.driver.major": "400",
    "nvidia.com/cuda.driver.minor": "300",
    "nvidia.com/cuda.driver.rev": "",
    "nvidia.com/cuda.runtime-version.full": "8.0",
    "nvidia.com/cuda.runtime-version.major": "8",
    "nvidia.com/cuda.runtime-version.minor": "0",
    "nvidia.com/cuda.runtime.major": "8",
    "nvidia.com/cuda.runtime.minor": "0",
    "nvidia.com/gfd.timestamp": str(TS),
    "nvidia.com/gpu.machine": "product-name",
}
VGPU = {"nvidia.com/vgpu.host-driver-branch": "r460_00", "nvidia.com/vgpu.host-driver-version": "460.16",
        "nvidia.com/vgpu.present": "true"}


def mig(profile: str, gi: int, ci: int, gb: int, **attrs: int) -> MigDevice:
    return MigDevice(index=0, uuid="MIG-x", gi_id=1, ci_id=0, gi_profile_id=0, ci_profile_id=0, profile=profile,
                     memory_mib=gb, multiprocessors=attrs.get("sm", 0), gi_slices=gi, ci_slices=ci,
                     copy_engines=attrs.get("copy", 0), decoders=attrs.get("dec", 0), encoders=attrs.get("enc", 0),
                     jpeg_engines=attrs.get("jpeg", 0), ofa_engines=attrs.get("ofa", 0))


def gpu(index: int, *migs: MigDevice, mig_enabled: bool = False) -> Gpu:
    # Upstream's mocks: compute 8.0 for MIG-disabled GPUs, 0.0 for MIG-enabled ones; class 0.
    enabled = mig_enabled or bool(migs)
    return Gpu(index=index, uuid=f"GPU-{index}", name="MOCKMODEL", memory_mib=300,
               compute_capability=(0, 0) if enabled else (8, 0), architecture="ampere", brand="nvidia",
               pci_bus_id=f"0000:0{index}:00.0", pci_device_id=0, minor_number=index, numa_node=None, pci_class=0,
               mig_capable=enabled, mig_enabled=enabled, mig_devices=tuple(migs))


def node(*gpus: Gpu) -> DeviceModel:
    return DeviceModel(driver_version="400.300", cuda_driver_version=8000, gpus=tuple(gpus),
                       machine_type="product-name\n", vgpu=Vgpu(True, "460.16", "r460_00"))


def shared(kind: str, name: str = "nvidia.com/gpu", replicas: int = 2, rename_by_default: bool = False) -> Sharing:
    entries = ReplicatedResources(
        (ReplicatedResource(name, replicas, f"{name}.shared" if rename_by_default else ""),), rename_by_default)
    return Sharing(mps=entries) if kind == "mps" else Sharing(time_slicing=entries)


def labels(model: DeviceModel, **config: object) -> dict[str, str]:
    return compose(model, Config(**config), TS)  # type: ignore[arg-type]


EX1 = {
    "nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.count": "1",
    "nvidia.com/gpu.family": "ampere", "nvidia.com/gpu.memory": "300", "nvidia.com/gpu.mode": "unknown",
    "nvidia.com/gpu.product": "MOCKMODEL", "nvidia.com/gpu.replicas": "1",
    "nvidia.com/gpu.sharing-strategy": "none", "nvidia.com/mig.capable": "false", "nvidia.com/mps.capable": "false",
}


def test_ex1_one_full_gpu() -> None:
    assert labels(node(gpu(0))) == COMMON | VGPU | EX1


def test_ex2_time_slicing_two_gpus() -> None:
    expected = COMMON | VGPU | EX1 | {"nvidia.com/gpu.count": "2", "nvidia.com/gpu.product": "MOCKMODEL-SHARED",
                                      "nvidia.com/gpu.replicas": "2",
                                      "nvidia.com/gpu.sharing-strategy": "time-slicing"}
    assert labels(node(gpu(0), gpu(1)), sharing=shared("ts")) == expected


def test_ex2_rename_by_default_drops_the_suffix_but_not_the_keys() -> None:
    out = labels(node(gpu(0), gpu(1)), sharing=shared("ts", rename_by_default=True))
    assert out["nvidia.com/gpu.product"] == "MOCKMODEL"
    assert out["nvidia.com/gpu.replicas"] == "2"
    assert not any(".shared" in k for k in out)


def test_ex2_mps() -> None:
    expected = COMMON | VGPU | EX1 | {"nvidia.com/gpu.product": "MOCKMODEL-SHARED", "nvidia.com/gpu.replicas": "2",
                                      "nvidia.com/gpu.sharing-strategy": "mps", "nvidia.com/mps.capable": "true"}
    assert labels(node(gpu(0)), sharing=shared("mps")) == expected


def test_ex2_mps_with_a_mig_enabled_gpu_fails_the_pass() -> None:
    with pytest.raises(LabelError, match="MPS sharing is not supported for mig devices"):
        labels(node(gpu(0, mig("1g.5gb", 1, 0, 5))), sharing=shared("mps"))


def test_mps_wins_when_both_sharing_kinds_are_configured() -> None:
    both = Sharing(time_slicing=shared("ts", replicas=4).time_slicing, mps=shared("mps", replicas=3).mps)
    out = labels(node(gpu(0)), sharing=both)
    assert (out["nvidia.com/gpu.replicas"], out["nvidia.com/gpu.sharing-strategy"]) == ("3", "mps")


EX3_MIG = mig("1g.100gb", 1, 2, 100, sm=12, copy=13, dec=14, enc=15, jpeg=16, ofa=17)


def test_ex3_single_with_uniform_mig() -> None:
    expected = COMMON | VGPU | {
        "nvidia.com/gpu.count": "2", "nvidia.com/gpu.mode": "unknown",
        "nvidia.com/gpu.product": "MOCKMODEL-MIG-1g.100gb", "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none", "nvidia.com/mig.capable": "true",
        "nvidia.com/mig.strategy": "single", "nvidia.com/mps.capable": "false",
    } | mig_attributes("gpu", 100, 12, 1, 2, 13, 14, 15, 16, 17)
    assert labels(node(gpu(0, EX3_MIG), gpu(1, EX3_MIG)), mig_strategy="single") == expected


def test_ex3_single_shared_gets_the_suffix() -> None:
    m = mig("3g.20gb", 3, 3, 20)
    out = labels(node(gpu(0, m), gpu(1, m)), mig_strategy="single", sharing=shared("ts"))
    assert out["nvidia.com/gpu.product"] == "MOCKMODEL-MIG-3g.20gb-SHARED"
    assert (out["nvidia.com/gpu.replicas"], out["nvidia.com/gpu.sharing-strategy"]) == ("2", "time-slicing")


EX4 = {
    "nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.count": "0",
    "nvidia.com/gpu.family": "ampere", "nvidia.com/gpu.memory": "0", "nvidia.com/gpu.mode": "unknown",
    "nvidia.com/gpu.product": "MOCKMODEL-MIG-INVALID", "nvidia.com/gpu.replicas": "0",
    "nvidia.com/gpu.sharing-strategy": "", "nvidia.com/mig.capable": "true", "nvidia.com/mig.strategy": "single",
    "nvidia.com/mps.capable": "false",
}


def test_ex4_single_with_mig_enabled_and_disabled_is_invalid() -> None:
    assert labels(node(gpu(0, mig("1g.100gb", 1, 0, 100)), gpu(1)), mig_strategy="single") == COMMON | VGPU | EX4


def test_ex4_single_with_two_profiles_is_invalid_without_compute_labels() -> None:
    model = node(gpu(0, mig("1g.100gb", 1, 0, 100), mig("3g.100gb", 3, 0, 100)))
    expected = {k: v for k, v in EX4.items() if "compute" not in k and "family" not in k}
    assert labels(model, mig_strategy="single") == COMMON | VGPU | expected


def test_single_with_an_empty_mig_enabled_gpu_is_invalid() -> None:
    out = labels(node(gpu(0, mig_enabled=True), gpu(1, EX3_MIG)), mig_strategy="single")
    assert out["nvidia.com/gpu.product"] == "MOCKMODEL-MIG-INVALID"


def _mixed_block(profile: str, memory: int, gi: int, **extra: str) -> dict[str, str]:
    key = f"mig-{profile}"
    base = {f"nvidia.com/{key}.count": "1", f"nvidia.com/{key}.product": f"MOCKMODEL-MIG-{profile}",
            f"nvidia.com/{key}.replicas": "1", f"nvidia.com/{key}.sharing-strategy": "none"}
    return base | mig_attributes(key, memory, 0, gi, 0, 0, 0, 0, 0, 0) | extra


EX5 = {
    "nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "300", "nvidia.com/gpu.mode": "unknown",
    "nvidia.com/gpu.product": "MOCKMODEL", "nvidia.com/gpu.replicas": "0", "nvidia.com/gpu.sharing-strategy": "none",
    "nvidia.com/mig.capable": "true", "nvidia.com/mig.strategy": "mixed", "nvidia.com/mps.capable": "false",
} | _mixed_block("1g.5gb", 5, 1) | _mixed_block("3g.20gb", 20, 3)


def test_ex5_mixed() -> None:
    model = node(gpu(0, mig("3g.20gb", 3, 0, 20), mig("1g.5gb", 1, 0, 5)))
    assert labels(model, mig_strategy="mixed") == COMMON | VGPU | EX5


def test_ex5_mixed_with_a_full_gpu_and_shared_mig_profile() -> None:
    model = node(gpu(0, mig("3g.20gb", 3, 0, 20), mig("1g.5gb", 1, 0, 5)), gpu(1))
    out = labels(model, mig_strategy="mixed", sharing=shared("ts", "nvidia.com/mig-1g.5gb", 3))
    assert out == COMMON | VGPU | EX5 | {
        "nvidia.com/gpu.count": "2", "nvidia.com/gpu.replicas": "1", "nvidia.com/gpu.compute.major": "8",
        "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.family": "ampere",
        "nvidia.com/mig-1g.5gb.product": "MOCKMODEL-MIG-1g.5gb-SHARED", "nvidia.com/mig-1g.5gb.replicas": "3",
        "nvidia.com/mig-1g.5gb.sharing-strategy": "time-slicing",
    }


@pytest.mark.parametrize("strategy", ["none", "single", "mixed"])
def test_ex6_zero_gpus(strategy: str) -> None:
    assert labels(node(), mig_strategy=strategy) == {"nvidia.com/gfd.timestamp": str(TS)} | VGPU


def test_no_timestamp_removes_only_the_timestamp() -> None:
    assert labels(node(gpu(0)), no_timestamp=True) == {k: v for k, v in (COMMON | VGPU | EX1).items()
                                                      if k != "nvidia.com/gfd.timestamp"}


def test_bad_driver_version_fails_with_upstream_message() -> None:
    model = dataclasses.replace(node(gpu(0)), driver_version="550")
    with pytest.raises(LabelError, match=r'Version "550" does not match format "X.Y\[.Z\]"'):
        labels(model)


@pytest.mark.parametrize(("cc", "family"), [
    ((1, 3), "tesla"), ((2, 1), "fermi"), ((3, 5), "kepler"), ((5, 2), "maxwell"), ((6, 1), "pascal"),
    ((7, 0), "volta"), ((7, 5), "turing"), ((8, 6), "ampere"), ((8, 9), "ada-lovelace"), ((9, 0), "hopper"),
    ((10, 0), "blackwell"), ((12, 0), "blackwell"), ((13, 0), "rubin"), ((4, 0), "undefined"),
    ((11, 0), "undefined"), ((14, 0), "undefined"), ((-1, -1), "undefined"),
])
def test_family_table(cc: tuple[int, int], family: str) -> None:
    model = node(dataclasses.replace(gpu(0), compute_capability=cc))
    assert labels(model)["nvidia.com/gpu.family"] == family


@pytest.mark.parametrize(("classes", "mode"), [
    ((0x030000,), "graphics"), ((0x030200,), "compute"), ((0x068000,), "unknown"),
    ((0x030000, 0x030200), "unknown"), ((None,), "unknown"), ((0x030200, None), "unknown"),
])
def test_gpu_mode(classes: tuple[int | None, ...], mode: str) -> None:
    model = node(*(dataclasses.replace(gpu(i), pci_class=c) for i, c in enumerate(classes)))
    assert labels(model)["nvidia.com/gpu.mode"] == mode


def test_machine_type_unreadable_is_unknown_and_blank_is_empty() -> None:
    assert labels(dataclasses.replace(node(gpu(0)), machine_type=None))["nvidia.com/gpu.machine"] == "unknown"
    assert labels(dataclasses.replace(node(gpu(0)), machine_type=" \n"))["nvidia.com/gpu.machine"] == ""
