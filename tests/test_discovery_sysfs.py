"""The sysfs readers against real directory trees: vGPU capability walk, PCI class, machine type."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfd.discovery.simulated.sysfs_tree import pci_config
from gfd.discovery.sysfs import PciFacts, VgpuParseError, read_machine_type, scan_vgpu
from gfd.model import Vgpu


def pci_function(root: Path, address: str, config: bytes, vendor: str = "0x10de", cls: str = "0x030200") -> None:
    path = root / "sys/bus/pci/devices" / address
    path.mkdir(parents=True)
    (path / "vendor").write_text(vendor + "\n")
    (path / "class").write_text(cls + "\n")
    (path / "config").write_bytes(config)


def test_vgpu_found_with_host_driver_info(tmp_path: Path) -> None:
    pci_function(tmp_path, "0000:01:00.0", pci_config(None))
    pci_function(tmp_path, "0000:02:00.0", pci_config({"version": "460.16", "branch": "r460_00"}))
    pci_function(tmp_path, "0000:00:1f.3", b"\0" * 64, vendor="0x8086")  # not NVIDIA: config never read
    assert scan_vgpu(str(tmp_path)) == Vgpu(True, "460.16", "r460_00")


def test_no_vgpu(tmp_path: Path) -> None:
    pci_function(tmp_path, "0000:01:00.0", pci_config(None))
    assert scan_vgpu(str(tmp_path)) == Vgpu(False)


def test_short_config_space_fails_the_whole_scan(tmp_path: Path) -> None:
    pci_function(tmp_path, "0000:01:00.0", pci_config(None)[:64])
    assert scan_vgpu(str(tmp_path)) is None


def test_missing_sysfs_fails_the_scan(tmp_path: Path) -> None:
    assert scan_vgpu(str(tmp_path / "nowhere")) is None


def test_unparsable_vgpu_record_is_fatal(tmp_path: Path) -> None:
    config = bytearray(pci_config({"version": "460.16", "branch": "r460_00"}))
    config[0x40 + 5] = 7  # record id != 0 ...
    config[0x40 + 6] = 0  # ... with a zero length: cannot advance
    pci_function(tmp_path, "0000:01:00.0", bytes(config))
    with pytest.raises(VgpuParseError):
        scan_vgpu(str(tmp_path))


def test_capability_loop_terminates(tmp_path: Path) -> None:
    config = bytearray(256)
    config[0x06], config[0x34] = 0x10, 0x40
    config[0x40:0x43] = bytes([0x01, 0x40, 0x08])  # points at itself
    pci_function(tmp_path, "0000:01:00.0", bytes(config))
    assert scan_vgpu(str(tmp_path)) == Vgpu(False)


@settings(max_examples=300)
@given(st.binary(min_size=256, max_size=256))
def test_fuzzed_config_space_never_crashes(tmp_path_factory: pytest.TempPathFactory, config: bytes) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    pci_function(root, "0000:01:00.0", config)
    try:
        result = scan_vgpu(str(root))
    except VgpuParseError:
        return
    assert result is not None and isinstance(result.present, bool)


def test_pci_facts_use_the_sysfs_address_of_an_nvml_bus_id(tmp_path: Path) -> None:
    pci_function(tmp_path, "0000:07:00.0", pci_config(None), cls="0x030000")
    (tmp_path / "sys/bus/pci/devices/0000:07:00.0/numa_node").write_text("1\n")
    pci_function(tmp_path, "0000:0a:00.0", pci_config(None))
    (tmp_path / "sys/bus/pci/devices/0000:0a:00.0/numa_node").write_text("-1\n")
    facts = PciFacts(str(tmp_path))
    assert facts.pci_class("00000000:07:00.0") == 0x030000
    assert facts.numa_node("00000000:07:00.0") == 1
    assert facts.numa_node("00000000:0A:00.0") is None  # -1: no NUMA affinity
    assert facts.pci_class("00000000:08:00.0") is None and facts.numa_node("00000000:08:00.0") is None


def test_machine_type(tmp_path: Path) -> None:
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_name").write_text("NVIDIA DGX A100\n")
    assert read_machine_type(str(tmp_path), "/sys/class/dmi/id/product_name") == "NVIDIA DGX A100\n"
    assert read_machine_type(str(tmp_path), "") is None
    assert read_machine_type(str(tmp_path), "/sys/nothing") is None
    own = tmp_path / "machine"
    own.write_text("p4d.24xlarge")
    assert read_machine_type(str(tmp_path), os.fspath(own)) == "p4d.24xlarge"
