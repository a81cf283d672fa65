"""plugin/host.py: the node's device nodes the plugin reads for device specs."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from plugin.allocate import allocate
from plugin.config import PluginConfig
from plugin.host import read_node_devices
from plugin.resources import ResourceError, build_resources
from tests.builders import gpu, mig, model


def test_device_specs_need_minor_numbers_and_mig_capabilities(tmp_path: Any) -> None:
    config = PluginConfig(pass_device_specs=True, mig_strategy="mixed")
    no_minor = build_resources(model(dataclasses.replace(gpu(0), minor_number=None)), config)
    with pytest.raises(ResourceError, match="no minor number for GPU GPU-0000"):
        read_node_devices(config, no_minor, str(tmp_path))
    migs = build_resources(model(gpu(0, mig(0, "1g.5gb", 1))), config)
    with pytest.raises(ResourceError, match="missing MIG GPU instance capability path: gpu0/gi1/access"):
        read_node_devices(config, migs, str(tmp_path))
    caps = tmp_path / "proc/driver/nvidia-caps"
    caps.mkdir(parents=True)
    (caps / "mig-minors").write_text("gpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n")
    node = read_node_devices(config, migs, str(tmp_path))
    out = allocate(migs[0], [migs[0].devices[0].id], config, node)
    assert [d.container_path for d in out.devices] == ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap12",
                                                       "/dev/nvidia-caps/nvidia-cap13"]
