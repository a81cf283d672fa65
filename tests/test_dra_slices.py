"""ResourceSlices as a pure function (plugin/dra/slices.py). Expected devices are written from NVIDIA's
driver as shared/reference/dra.md and /work/notes/dra-research.md §3 describe it, not from our code; the
objects are also checked by the real API server (tests/test_dra_apiserver.py), and published by the program on
NVIDIA's mock NVML (tests/test_nvml_mock.py)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gfd.discovery.simulated.profiles import PROFILE_DIR
from gfd.model import Fabric, MigDevice
from plugin.dra import taints
from plugin.dra.devices import mig_device_name
from plugin.dra.sharing import ConsumableShares
from plugin.dra.slices import Pool, pool, semver
from plugin.dra.topology import pcie_root, pcie_roots
from tests import builders
from tests.helpers import simulated_model

ROOT = Path(__file__).resolve().parent.parent
PROFILES = sorted(p.stem for p in Path(PROFILE_DIR).glob("*.yaml") if p.stem not in ("no-library",))
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
GI = 1024**3


def a100_mig(index: int, placement: tuple[int, int] | None, profile: str = "1g.5gb", gi: int = 7) -> MigDevice:
    """A 1g.5gb GPU instance of an A100-40GB as NVML reports it (GI profile id 19: `nvidia-smi mig -lgip`)."""
    return replace(builders.mig(index, profile, gi), gi_profile_id=19, placement=placement)


def devices(p: Pool) -> list[dict[str, Any]]:
    return [d for content in p.contents for d in content.get("devices", ())]


def by_name(p: Pool) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in devices(p)}


def test_a_full_gpu_is_the_device_nvidia_publishes() -> None:
    model = replace(builders.model(builders.gpu(0)), driver_version="550.163.01", cuda_driver_version=12040)
    p = pool(model, "node-1", pcie_roots={"0000:00:00.0": "pci0000:00"})
    assert p.specs(3) == [{"driver": "gpu.nvidia.com", "nodeName": "node-1",
                           "pool": {"name": "node-1", "generation": 3, "resourceSliceCount": 1},
                           "devices": [{
                               "name": "gpu-0",
                               "attributes": {
                                   "type": {"string": "gpu"},
                                   "uuid": {"string": "GPU-0000"},
                                   "productName": {"string": "NVIDIA A100-SXM4-40GB"},
                                   "brand": {"string": "Nvidia"},
                                   "architecture": {"string": "Ampere"},
                                   "cudaComputeCapability": {"version": "8.0.0"},
                                   "driverVersion": {"version": "550.163.1"},
                                   "cudaDriverVersion": {"version": "12.4.0"},
                                   "resource.kubernetes.io/pciBusID": {"string": "0000:00:00.0"},
                                   "resource.kubernetes.io/pcieRoot": {"string": "pci0000:00"},
                                   "resource.kubernetes.io/numaNode": {"int": 0},
                                   "gfd-py.github.io/index": {"int": 0},
                               },
                               "capacity": {"memory": {"value": "40Gi"}},
                           }]}]


def test_devices_are_named_by_minor_and_facts_the_node_lacks_are_left_out() -> None:
    gpus = [replace(builders.gpu(i), minor_number=7 - i, numa_node=None, pci_bus_id="", memory_mib=None)
            for i in range(3)]
    got = devices(pool(builders.model(*gpus), "n"))
    assert [d["name"] for d in got] == ["gpu-5", "gpu-6", "gpu-7"]
    for d in got:
        assert not {"resource.kubernetes.io/pciBusID", "resource.kubernetes.io/numaNode",
                    "resource.kubernetes.io/pcieRoot"} & set(d["attributes"])
        assert "capacity" not in d  # NVIDIA leaves memory out when NVML does not report it


def test_nvml_bus_ids_are_spelled_as_go_nvlib_does() -> None:
    gpu = replace(builders.gpu(0), pci_bus_id="00000000:B7:00.0")
    attributes = devices(pool(builders.model(gpu), "n"))[0]["attributes"]
    assert attributes["resource.kubernetes.io/pciBusID"] == {"string": "0000:b7:00.0"}


@pytest.mark.parametrize(("text", "version"), [("550.163.01", "550.163.1"), ("550.54.15", "550.54.15"),
                                                ("535.104", "535.104.0"), ("12", "12.0.0"), ("1.2.3.4", None),
                                                ("550.x", None), ("", None)])
def test_driver_versions_read_as_semver(text: str, version: str | None) -> None:
    assert semver(text) == version


def test_version_attributes_nvidia_cannot_parse_are_left_out() -> None:
    model = replace(builders.model(builders.gpu(0)), driver_version="r550")
    assert "driverVersion" not in devices(pool(model, "n"))[0]["attributes"]


def test_fabric_attached_gpus_carry_their_clique_under_our_domain() -> None:
    gpu = replace(builders.gpu(0), fabric=Fabric("a8d3e1c2-0000-4000-8000-000000000001", 3))
    attributes = devices(pool(builders.model(gpu), "n"))[0]["attributes"]
    assert attributes["gfd-py.github.io/clique"] == {"string": "a8d3e1c2-0000-4000-8000-000000000001.3"}
    ours = [name for name in attributes if "/" in name and not name.startswith("resource.kubernetes.io/")]
    assert all(name.startswith("gfd-py.github.io/") for name in ours)


def test_mig_devices_are_named_by_profile_id_and_placement_as_nvidia_names_them() -> None:
    assert mig_device_name(0, a100_mig(0, (0, 1))) == "gpu-0-mig-1g5gb-19-0"
    assert mig_device_name(3, a100_mig(0, (6, 1), "1g.5gb+me")) == "gpu-3-mig-1g5gb-me-19-6"
    # Without the placement (not read from NVML), the GPU- and compute-instance ids keep names unique.
    assert mig_device_name(0, a100_mig(0, None, gi=9)) == "gpu-0-mig-1g5gb-9-0"


def test_a_mig_gpu_is_published_as_its_mig_devices_consuming_its_counters() -> None:
    gpu = builders.gpu(0, a100_mig(0, (0, 1), gi=7), a100_mig(1, (1, 1), gi=8))
    p = pool(builders.model(gpu, builders.gpu(1)), "n")
    counters, device_slice = p.contents
    assert counters["sharedCounters"] == [{"name": "gpu-0-counter-set", "counters": {
        "multiprocessors": {"value": "28"}, "copy-engines": {"value": "2"}, "decoders": {"value": "0"},
        "encoders": {"value": "0"}, "jpeg-engines": {"value": "0"}, "ofa-engines": {"value": "0"},
        "memory": {"value": "9728Mi"}, "memory-slice-0": {"value": "1"}, "memory-slice-1": {"value": "1"}}}]
    assert "devices" not in counters and "sharedCounters" not in device_slice  # API >= 1.35: one or the other
    named = by_name(p)
    assert sorted(named) == ["gpu-0-mig-1g5gb-19-0", "gpu-0-mig-1g5gb-19-1", "gpu-1"]  # no gpu-0: MIG is on
    mig = named["gpu-0-mig-1g5gb-19-1"]
    assert {k: v for k, v in mig["attributes"].items() if k in ("type", "uuid", "parentUUID", "profile")} == {
        "type": {"string": "mig"}, "uuid": {"string": "MIG-1g.5gb-8-1"}, "parentUUID": {"string": "GPU-0000"},
        "profile": {"string": "1g.5gb"}}
    assert mig["attributes"]["productName"] == {"string": "NVIDIA A100-SXM4-40GB"}
    assert mig["capacity"] == {"multiprocessors": {"value": "14"}, "copyEngines": {"value": "1"},
                               "decoders": {"value": "0"}, "encoders": {"value": "0"}, "jpegEngines": {"value": "0"},
                               "ofaEngines": {"value": "0"}, "memory": {"value": "4864Mi"},
                               "memorySlice1": {"value": "1"}}
    assert mig["consumesCounters"] == [{"counterSet": "gpu-0-counter-set", "counters": {
        "multiprocessors": {"value": "14"}, "copy-engines": {"value": "1"}, "decoders": {"value": "0"},
        "encoders": {"value": "0"}, "jpeg-engines": {"value": "0"}, "ofa-engines": {"value": "0"},
        "memory": {"value": "4864Mi"}, "memory-slice-1": {"value": "1"}}}]


def test_every_mig_device_of_a_layout_fits_its_counter_set_at_once() -> None:
    """What the scheduler checks: the devices' consumption summed per counter never exceeds the set."""
    for profile in ("a100-mig-single", "a100-80gb-mig-mixed"):
        p = simulated_pool(profile)
        sets = {s["name"]: s["counters"] for c in p.contents for s in c.get("sharedCounters", ())}
        used: dict[tuple[str, str], int] = {}
        for d in devices(p):
            for consumption in d.get("consumesCounters", ()):
                for name, counter in consumption["counters"].items():
                    key = (consumption["counterSet"], name)
                    used[key] = used.get(key, 0) + to_int(counter["value"])
        assert used and all(to_int(sets[s][n]["value"]) == total for (s, n), total in used.items())


def test_slices_stay_within_the_api_limits_on_a_large_mig_node() -> None:
    """16 GPUs x 7 MIG devices: at most 8 counter sets and 64 devices per slice (devices consuming counters)."""
    gpus = [builders.gpu(i, *(a100_mig(j, (j, 1), gi=7 + j) for j in range(7))) for i in range(16)]
    p = pool(builders.model(*gpus), "n")
    sizes = [(len(c.get("sharedCounters", ())), len(c.get("devices", ()))) for c in p.contents]
    assert sizes == [(8, 0), (8, 0), (0, 64), (0, 48)]
    assert [s["pool"]["resourceSliceCount"] for s in p.specs(1)] == [4] * 4


def test_without_counters_or_taints_a_slice_takes_128_devices() -> None:
    p = pool(builders.model(*(builders.gpu(i) for i in range(130))), "n")
    assert [len(c["devices"]) for c in p.contents] == [128, 2]
    tainted = pool(builders.model(*(builders.gpu(i) for i in range(130))), "n",
                   health=taints.DeviceHealth({("GPU-0000", -1, -1): (taints.gpu_lost(),)}))
    assert [len(c["devices"]) for c in tainted.contents] == [64, 64, 2]


def test_a_node_without_gpus_has_an_empty_pool() -> None:
    assert pool(builders.model(), "n").specs(1) == []


def test_unhealthy_devices_carry_nvidias_taints() -> None:
    gpu0 = builders.gpu(0)
    gpu1 = builders.gpu(1, a100_mig(0, (0, 1), gi=7), a100_mig(1, (1, 1), gi=8))
    health = taints.DeviceHealth({("GPU-0000", -1, -1): (taints.xid(79),),
                                  ("GPU-0001", 8, 0): (taints.xid(94, critical=False),)})
    named = by_name(pool(builders.model(gpu0, gpu1), "n", health=health))
    assert named["gpu-0"]["taints"] == [{"key": "gpu.nvidia.com/xid", "value": "79", "effect": "NoSchedule"}]
    assert named["gpu-1-mig-1g5gb-19-1"]["taints"] == [{"key": "gpu.nvidia.com/xid", "value": "94",
                                                        "effect": "None"}]
    assert "taints" not in named["gpu-1-mig-1g5gb-19-0"]
    # A whole-GPU fault taints its MIG devices; the health checks being down taints every device.
    lost = taints.DeviceHealth({("GPU-0001", -1, -1): (taints.gpu_lost(),)}, everything=(taints.unmonitored(),))
    for d in devices(pool(builders.model(gpu0, gpu1), "n", health=lost)):
        keys = [t["key"] for t in d["taints"]]
        assert keys == (["gpu.nvidia.com/unmonitored"] if d["name"] == "gpu-0" else
                        ["gpu.nvidia.com/unmonitored", "gpu.nvidia.com/gpu-lost"])


@pytest.mark.parametrize(("setting", "memory", "shares"), [
    ("memory", {"value": "40Gi", "requestPolicy": {
        "default": "40Gi", "validRange": {"min": "1Mi", "max": "40Gi", "step": "1Mi"}}}, None),
    ("unlimited", {"value": "40Gi", "requestPolicy": {
        "default": "0", "validRange": {"min": "0", "max": "40Gi", "step": "1Mi"}}}, None),
    ("4", {"value": "40Gi", "requestPolicy": {
        "default": "0", "validRange": {"min": "0", "max": "40Gi", "step": "1Mi"}}},
     {"value": "4", "requestPolicy": {"default": "1", "validRange": {"min": "1", "max": "4", "step": "1"}}}),
])
def test_consumable_shares_have_nvidias_shape(setting: str, memory: dict[str, Any],
                                              shares: dict[str, Any] | None) -> None:
    gpu = builders.gpu(0)
    device = devices(pool(builders.model(gpu), "n", ConsumableShares.parse(setting)))[0]
    assert device["allowMultipleAllocations"] is True
    assert device["capacity"]["memory"] == memory
    assert device["capacity"].get("shares") == shares


def test_enforced_memory_shares_add_a_compute_capacity_that_memory_only_claims_do_not_consume() -> None:
    """--share-enforcement=mps: NVIDIA's memory shape unchanged, plus `compute` in percent of SMs with default 0,
    so a claim written for NVIDIA's driver (naming memory only) consumes none of it and several still fit."""
    enforced = ConsumableShares.parse("memory", "mps")
    (device,) = devices(pool(builders.model(builders.gpu(0)), "n", enforced))
    nvidias = devices(pool(builders.model(builders.gpu(0)), "n", ConsumableShares.parse("memory")))[0]
    assert device["capacity"]["memory"] == nvidias["capacity"]["memory"]
    assert device["capacity"]["compute"] == {"value": "100", "requestPolicy": {
        "default": "0", "validRange": {"min": "0", "max": "100", "step": "1"}}}
    assert device["attributes"]["gfd-py.github.io/shareEnforcement"] == {"string": "mps"}
    assert "compute" not in nvidias["capacity"] and "gfd-py.github.io/shareEnforcement" not in nvidias["attributes"]


@pytest.mark.parametrize("setting", ["disabled", "unlimited", "4"])
def test_enforcement_changes_nothing_but_memory_shares(setting: str) -> None:
    """Time-slicing shares stay NVIDIA's (counted, not enforced), and without shares there is nothing to enforce."""
    model = simulated_model("a100-80gb-mig-mixed")
    assert pool(model, "n", ConsumableShares.parse(setting, "mps")) == pool(model, "n", ConsumableShares.parse(setting))


def test_under_enforcement_mig_devices_and_gpus_of_unknown_memory_are_not_shared() -> None:
    """MPS is not offered on MIG devices here (README, "MPS and MIG"), and a share is sized by memory: such
    devices are published whole, so that every share the node offers is enforced."""
    unknown = replace(builders.gpu(1), memory_mib=None)
    mig = builders.gpu(2, a100_mig(0, (0, 1)))
    got = by_name(pool(builders.model(builders.gpu(0), unknown, mig), "n", ConsumableShares.parse("memory", "mps")))
    assert got["gpu-0"]["allowMultipleAllocations"] is True
    for name in ("gpu-1", "gpu-2-mig-1g5gb-19-0"):
        assert "allowMultipleAllocations" not in got[name]
        assert "requestPolicy" not in got[name].get("capacity", {}).get("memory", {})
        assert "compute" not in got[name].get("capacity", {})
    assert got["gpu-2-mig-1g5gb-19-0"]["capacity"]["memory"] == {"value": "4864Mi"}


def test_shared_memory_is_rounded_down_to_whole_mebibytes() -> None:
    """The API server wants max and default to be multiples of the 1Mi step."""
    capacity = ConsumableShares.parse("memory").memory_capacity(40 * GI + 1000)
    assert capacity["value"] == capacity["requestPolicy"]["default"] == "40Gi"


@pytest.mark.parametrize("text", ["", "0", "-1", "+2", "mps", "1.5", "Memory"])
def test_bad_consumable_shares_are_refused_with_nvidias_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid value for --consumable-shares: .* \(must be 'disabled', "):
        ConsumableShares.parse(text)


def test_pcie_roots_come_from_the_sysfs_device_path(tmp_path: Path) -> None:
    """The kernel's layout: /sys/bus/pci/devices/<bdf> links into /sys/devices/pci<domain>:<bus>/..."""
    device = tmp_path / "sys/devices/pci0000:00/0000:00:01.0/0000:07:00.0"
    device.mkdir(parents=True)
    links = tmp_path / "sys/bus/pci/devices"
    links.mkdir(parents=True)
    (links / "0000:07:00.0").symlink_to("../../../devices/pci0000:00/0000:00:01.0/0000:07:00.0")
    (links / "0000:0f:00.0").mkdir()  # a directory, as in a simulated tree: nothing to read
    assert pcie_root("00000000:07:00.0", str(tmp_path)) == "pci0000:00"
    assert pcie_roots(["00000000:07:00.0", "00000000:0F:00.0", "00000000:99:00.0"], str(tmp_path)) == \
        {"00000000:07:00.0": "pci0000:00"}


def simulated_pool(profile: str) -> Pool:
    return pool(simulated_model(profile), "node-1")


@pytest.mark.parametrize("profile", PROFILES)
def test_every_simulated_node_gives_valid_devices(profile: str) -> None:
    model = simulated_model(profile)
    for shares in ("disabled", "memory", "3"):
        got = devices(pool(model, "node-1", ConsumableShares.parse(shares)))
        names = [d["name"] for d in got]
        assert len(set(names)) == len(names)
        for d in got:
            assert DNS_LABEL.fullmatch(d["name"]), d["name"]
            assert len(d["attributes"]) + len(d.get("capacity", {})) <= 32, d["name"]
            assert all(len(v) == 1 and len(str(next(iter(v.values())))) <= 64 for v in d["attributes"].values())
    expected = sum(len(g.mig_devices) if g.mig_enabled else 1 for g in model.gpus)
    assert len(devices(pool(model, "node-1"))) == expected


def test_the_mixed_mig_node_publishes_each_layout() -> None:
    named = by_name(simulated_pool("a100-80gb-mig-mixed"))
    profiles = sorted(d["attributes"]["profile"]["string"] for d in named.values())
    assert profiles == sorted(["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"] * 2 + ["7g.80gb"] * 2 +
                              ["1g.10gb"] * 14 + ["4g.40gb", "2g.20gb", "1g.10gb+me"] * 2)
    assert all(d["attributes"]["type"] == {"string": "mig"} for d in named.values())
    assert any(name.startswith("gpu-6-mig-1g10gb-me-") for name in named)


def test_mig_devices_read_through_nvml_carry_nvidias_names_and_memory_slices() -> None:
    """The simulated driver's placements (`nvidia-smi mig -lgipp`: 3g.40gb 9 {0,4}:4, 2g.20gb 14 {0,2,4}:2,
    1g.10gb 19 {0..6}:1) read through NVML: GPU 0's 3g.40gb sits on slices 4-7, its 2g.20gb on 0-1."""
    named = by_name(simulated_pool("a100-80gb-mig-mixed"))
    gpu0 = {name: d for name, d in named.items() if name.startswith("gpu-0-")}
    assert sorted(gpu0) == ["gpu-0-mig-1g10gb-19-2", "gpu-0-mig-1g10gb-19-3", "gpu-0-mig-2g20gb-14-0",
                            "gpu-0-mig-3g40gb-9-4"]
    slices = {name: sorted(k for k in d["capacity"] if k.startswith("memorySlice")) for name, d in gpu0.items()}
    assert slices == {"gpu-0-mig-1g10gb-19-2": ["memorySlice2"], "gpu-0-mig-1g10gb-19-3": ["memorySlice3"],
                      "gpu-0-mig-2g20gb-14-0": ["memorySlice0", "memorySlice1"],
                      "gpu-0-mig-3g40gb-9-4": [f"memorySlice{i}" for i in range(4, 8)]}
    assert sorted(n for n in named if n.startswith("gpu-2-")) == ["gpu-2-mig-7g80gb-0-0"]


def to_int(value: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": GI}
    return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)
