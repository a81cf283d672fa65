"""Per-claim CDI specs (plugin/dra/claimspecs.py) on simulated nodes: the file, kind and device names NVIDIA's
driver uses (shared/reference/dra.md §4), each allocated device's nodes, and the device plugin's common edits;
every spec valid against the CDI schema. A container runtime reads them in the end-to-end tier."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gfd.discovery.session import NodeSource
from plugin.cdi import CdiError
from plugin.cdi.spec import IPC_OPTIONS, ContainerEdits, Mount
from plugin.dra.claimspecs import ClaimSpecFiles, NodeEdits, dra_roots
from plugin.dra.devices import allocatable_devices
from plugin.dra.prepare import claim_spec_file

UID = "0b6a3f4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
HOOK = "/var/lib/kubelet/plugins/gpu.nvidia.com/nvidia-cdi-hook"


class Node:
    """A simulated node read as the DRA driver reads it, with its spec writer."""

    def __init__(self, profile: str, cdi_root: Path, host_driver_root: str = "/") -> None:
        self.source = NodeSource("nvml", profile)
        self.source.open()
        self.model = self.source.read()
        self.devices = {d.name: d for d in allocatable_devices(self.model)}
        roots = dra_roots("/driver-root", host_driver_root, self.source.host_root)
        self.specs = ClaimSpecFiles(str(cdi_root), NodeEdits.read(self.model, roots, HOOK, self.source.host_root))
        self.cdi_root = cdi_root

    def spec(self, uid: str = UID) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.cdi_root / claim_spec_file(uid, "json")).read_text())
        return loaded


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    opened: list[Node] = []

    def _open(profile: str, host_driver_root: str = "/") -> Node:
        n = Node(profile, tmp_path / "cdi", host_driver_root)
        opened.append(n)
        return n

    yield _open
    for n in opened:
        n.source.close()


def test_a_claims_spec_has_nvidias_name_kind_and_devices(node: Any, validator: jsonschema.Draft7Validator) -> None:
    n = node("dgx-a100")
    n.specs.write(UID, [n.devices["gpu-3"], n.devices["gpu-5"]])
    assert os.listdir(n.cdi_root) == [f"k8s.gpu.nvidia.com-claim_{UID}.json"]
    spec = n.spec()
    validator.validate(spec)
    assert spec["kind"] == "k8s.gpu.nvidia.com/claim"
    assert [d["name"] for d in spec["devices"]] == [f"{UID}-gpu-3", f"{UID}-gpu-5"]
    assert [[node["path"] for node in d["containerEdits"]["deviceNodes"]] for d in spec["devices"]] == [
        ["/dev/nvidia3"], ["/dev/nvidia5"]]
    # The device plugin's common edits, with NVIDIA's DRA hooks.
    edits = spec["containerEdits"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in edits["env"]
    assert [d["path"] for d in edits["deviceNodes"]] == ["/dev/nvidia-modeset", "/dev/nvidia-uvm-tools",
                                                          "/dev/nvidia-uvm", "/dev/nvidiactl"]
    assert [(h["path"], h["args"][1]) for h in edits["hooks"]] == [
        (HOOK, "create-symlinks"), (HOOK, "enable-cuda-compat"), (HOOK, "update-ldcache"),
        (HOOK, "disable-device-node-modification")]
    assert any(m["containerPath"].endswith(f"libcuda.so.{n.model.driver_version}") for m in edits["mounts"])


def test_a_mig_device_gets_its_parent_and_capability_nodes(node: Any, validator: jsonschema.Draft7Validator) -> None:
    n = node("a100-80gb-mig-mixed")
    device = n.devices["gpu-0-mig-3g40gb-9-4"]
    n.specs.write(UID, [device])
    spec = n.spec()
    validator.validate(spec)
    caps = n.specs.node.mig_cap_minors
    gi, ci = device.mig.gi_id, device.mig.ci_id
    assert [d["path"] for d in spec["devices"][0]["containerEdits"]["deviceNodes"]] == [
        "/dev/nvidia0", f"/dev/nvidia-caps/nvidia-cap{caps[f'gpu0/gi{gi}/access']}",
        f"/dev/nvidia-caps/nvidia-cap{caps[f'gpu0/gi{gi}/ci{ci}/access']}"]


def test_paths_are_written_as_the_host_names_them(node: Any) -> None:
    """The simulated driver root has its own /dev (a driver container's): its nodes are under the host's driver
    root, as are the driver's files."""
    n = node("t4", "/run/nvidia/driver")
    n.specs.write(UID, [n.devices["gpu-0"]])
    spec = n.spec()
    assert spec["devices"][0]["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidia0", "hostPath": "/run/nvidia/driver/dev/nvidia0"}]
    assert all(m["hostPath"] == "/run/nvidia/driver" + m["containerPath"] for m in spec["containerEdits"]["mounts"])


def test_the_host_dev_is_used_when_the_driver_root_has_none(tmp_path: Path) -> None:
    (tmp_path / "driver-root").mkdir()
    roots = dra_roots("/driver-root", "/run/nvidia/driver", str(tmp_path))
    assert (roots.driver, roots.dev, roots.host_driver, roots.host_dev) == (
        str(tmp_path / "driver-root"), str(tmp_path), "/run/nvidia/driver", "/")


def test_remove_takes_our_spec_and_nvidias_and_a_missing_one_is_no_error(node: Any) -> None:
    n = node("t4")
    n.specs.write(UID, [n.devices["gpu-0"]])
    (n.cdi_root / claim_spec_file(UID, "yaml")).write_text("{}\n")  # left by NVIDIA's driver before a switch
    n.specs.remove(UID)
    assert os.listdir(n.cdi_root) == []
    n.specs.remove(UID)


def test_an_unwritable_cdi_root_is_one_line(node: Any, tmp_path: Path) -> None:
    n = node("t4")
    n.specs.cdi_root = str(tmp_path / "file")
    (tmp_path / "file").write_text("")
    with pytest.raises(CdiError) as e:
        n.specs.write(UID, [n.devices["gpu-0"]])
    assert "\n" not in str(e.value) and str(tmp_path / "file") in str(e.value)


def test_after_a_reboot_every_claims_spec_goes_and_nothing_else(node: Any) -> None:
    n = node("t4")
    n.specs.write(UID, [n.devices["gpu-0"]])
    (n.cdi_root / claim_spec_file("other-uid", "yaml")).write_text("{}\n")
    (n.cdi_root / "k8s.device-plugin.nvidia.com-gpu.json").write_text("{}\n")  # the device plugin's
    assert n.specs.remove_all() == 2
    assert os.listdir(n.cdi_root) == ["k8s.device-plugin.nvidia.com-gpu.json"]


def test_an_enforced_share_adds_its_mps_edits_to_its_device(node: Any, validator: jsonschema.Draft7Validator) -> None:
    n = node("dgx-h100")
    mps = ContainerEdits(env=("CUDA_MPS_PIPE_DIRECTORY=/mps/GPU-x/pipe", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4096M"),
                         mounts=(Mount("/run/nvidia/mps/GPU-x/pipe", "/mps/GPU-x/pipe", IPC_OPTIONS),
                                 Mount("/run/nvidia/mps/shm", "/dev/shm", IPC_OPTIONS)))
    n.specs.write(UID, [n.devices["gpu-1"], n.devices["gpu-2"]], {"gpu-1": mps})
    spec = n.spec()
    validator.validate(spec)
    first, second = (d["containerEdits"] for d in spec["devices"])
    assert [d["path"] for d in first["deviceNodes"]] == ["/dev/nvidia1"]
    assert first["env"] == list(mps.env) and [m["containerPath"] for m in first["mounts"]] == [
        "/mps/GPU-x/pipe", "/dev/shm"]
    assert "env" not in second and "mounts" not in second
