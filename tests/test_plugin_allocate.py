"""plugin/allocate.py: what Allocate answers for each device-list strategy."""

from __future__ import annotations

from plugin.allocate import allocate
from plugin.config import PluginConfig
from plugin.host import NodeDevices
from plugin.resources import build_resources
from tests.builders import gpu, model


def test_imex_channels_in_every_strategy() -> None:
    resource = build_resources(model(gpu(0)), PluginConfig())[0]
    node = NodeDevices(imex_channels=(0,), control_devices=("/dev/nvidiactl",))
    config = PluginConfig(device_list_strategy=("envvar", "volume-mounts", "cdi-cri"), pass_device_specs=True,
                          nvidia_dev_root="/host")
    out = allocate(resource, ["GPU-0000"], config, node)
    assert out.envs == {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices", "NVIDIA_IMEX_CHANNELS": "0"}
    assert [m.container_path for m in out.mounts] == ["/var/run/nvidia-container-devices/GPU-0000",
                                                       "/var/run/nvidia-container-devices/imex/0"]
    assert out.cdi_devices == ["k8s.device-plugin.nvidia.com/gpu=GPU-0000",
                               "k8s.device-plugin.nvidia.com/imex-channel=0"]
    assert [(d.container_path, d.host_path) for d in out.devices] == [
        ("/dev/nvidiactl", "/host/dev/nvidiactl"), ("/dev/nvidia0", "/host/dev/nvidia0"),
        ("/dev/nvidia-caps-imex-channels/channel0", "/host/dev/nvidia-caps-imex-channels/channel0")]


def test_cdi_only_with_modes_and_custom_prefix() -> None:
    resource = build_resources(model(gpu(0)), PluginConfig())[0]
    config = PluginConfig(device_list_strategy=("cdi-annotations",), cdi_annotation_prefix="custom.io/",
                          gdrcopy_enabled=True, device_id_strategy="index")
    out = allocate(resource, ["GPU-0000"], config, NodeDevices(cdi_classes=frozenset({"gpu", "gdrcopy"})))
    assert out.envs == {"NVIDIA_GDRCOPY": "enabled"}
    (key, value), = out.annotations.items()
    assert key.startswith("custom.io/nvidia-device-plugin_")
    assert value == "k8s.device-plugin.nvidia.com/gpu=0,k8s.device-plugin.nvidia.com/gdrcopy=all"
    # Enabled, but no /dev/gdrdrv on the node, so no spec was written: the name is left out, as upstream.
    out = allocate(resource, ["GPU-0000"], config, NodeDevices(cdi_classes=frozenset({"gpu"})))
    assert list(out.annotations.values()) == ["k8s.device-plugin.nvidia.com/gpu=0"]
