"""gfd/labels/system.py: the node-wide labels, from models built directly."""

from __future__ import annotations

import dataclasses

import pytest

from gfd.labels.errors import LabelError
from gfd.labels.system import imex_labels, machine_labels, mode_labels, version_labels, vgpu_labels
from gfd.model import Fabric, Gpu, Vgpu
from tests.builders import gpu, model


@pytest.mark.parametrize(("driver", "expected"), [
    ("550.54.15", ("550", "54", "15")),
    ("535.104", ("535", "104", "")),
])
def test_driver_versions_with_and_without_a_revision(driver: str, expected: tuple[str, str, str]) -> None:
    labels = version_labels(dataclasses.replace(model(gpu(0)), driver_version=driver, cuda_driver_version=12040))
    got = (labels["nvidia.com/cuda.driver.major"], labels["nvidia.com/cuda.driver.minor"],
           labels["nvidia.com/cuda.driver.rev"])
    assert got == expected
    assert labels["nvidia.com/cuda.driver-version.full"] == driver
    assert labels["nvidia.com/cuda.runtime-version.full"] == "12.4"


def test_a_driver_version_upstream_cannot_parse_fails_the_pass() -> None:
    with pytest.raises(LabelError, match=r'Version "550" does not match format "X\.Y\[\.Z\]"'):
        version_labels(dataclasses.replace(model(gpu(0)), driver_version="550"))


def test_machine_type_is_sanitised_or_unknown() -> None:
    assert machine_labels(dataclasses.replace(model(gpu(0)), machine_type="DGX A100 920-23687-2530-000\n")) == {
        "nvidia.com/gpu.machine": "DGX-A100-920-23687-2530-000"}
    assert machine_labels(model(gpu(0))) == {"nvidia.com/gpu.machine": "unknown"}


def test_mode_is_unknown_unless_every_gpu_has_the_same_known_class() -> None:
    assert mode_labels(model(gpu(0), gpu(1))) == {"nvidia.com/gpu.mode": "compute"}
    graphics = dataclasses.replace(gpu(1), pci_class=0x030000)
    assert mode_labels(model(graphics)) == {"nvidia.com/gpu.mode": "graphics"}
    assert mode_labels(model(gpu(0), graphics)) == {"nvidia.com/gpu.mode": "unknown"}
    assert mode_labels(model(dataclasses.replace(gpu(0), pci_class=0x038000))) == {"nvidia.com/gpu.mode": "unknown"}


def test_clique_only_when_every_attached_gpu_agrees() -> None:
    def on(index: int, cluster: str, clique: int) -> Gpu:
        return dataclasses.replace(gpu(index), fabric=Fabric(cluster, clique))

    assert imex_labels(model(gpu(0))) == {}
    assert imex_labels(model(on(0, "c1", 7), on(1, "c1", 7))) == {"nvidia.com/gpu.clique": "c1.7"}
    assert imex_labels(model(on(0, "c1", 7), on(1, "c1", 8))) == {}
    assert imex_labels(model(on(0, "c1", 7), on(1, "c2", 7))) == {}


def test_vgpu_labels_follow_the_pci_scan() -> None:
    assert vgpu_labels(model(gpu(0))) == {}  # the scan failed: no vgpu labels, as upstream
    assert vgpu_labels(dataclasses.replace(model(gpu(0)), vgpu=Vgpu(False))) == {"nvidia.com/vgpu.present": "false"}
    host = Vgpu(True, "550.54.16", "r550_00")
    assert vgpu_labels(dataclasses.replace(model(gpu(0)), vgpu=host)) == {
        "nvidia.com/vgpu.present": "true", "nvidia.com/vgpu.host-driver-version": "550.54.16",
        "nvidia.com/vgpu.host-driver-branch": "r550_00"}
