"""gfd/resources.py: one grouping of devices into resources, read by GFD's labels and the plugin alike."""

from __future__ import annotations

import dataclasses

import pytest
import structlog

from gfd.config import Config
from gfd.labels.resources import resource_labels
from gfd.model import DeviceModel
from gfd.resources import check_single, resource_groups
from plugin.config import PluginConfig
from plugin.resources import ResourceError, build_resources
from tests.builders import gpu, mig, model

# Two MIG GPUs (two 1g.5gb on GPU 0, one 3g.20gb on GPU 1) and a full GPU.
NODE = model(gpu(0, mig(0, "1g.5gb", 7), mig(1, "1g.5gb", 8)), gpu(1, mig(0, "3g.20gb", 2, gi_slices=3, ci_slices=3)),
             gpu(2))


@pytest.mark.parametrize(("strategy", "expected"), [
    ("none", [("gpu", ["GPU-0000", "GPU-0001", "GPU-0002"])]),
    ("single", [("gpu", ["MIG-1g.5gb-7-0", "MIG-1g.5gb-8-1", "MIG-3g.20gb-2-0", "GPU-0002"])]),
    ("mixed", [("mig-1g.5gb", ["MIG-1g.5gb-7-0", "MIG-1g.5gb-8-1"]), ("mig-3g.20gb", ["MIG-3g.20gb-2-0"]),
               ("gpu", ["GPU-0002"])]),
])
def test_groups_per_strategy(strategy: str, expected: list[tuple[str, list[str]]]) -> None:
    groups = resource_groups(NODE, strategy)
    assert [(g.key, [(m.mig or m.gpu).uuid for m in g.members]) for g in groups] == expected


def test_the_plugin_advertises_the_groups_and_gfd_counts_them() -> None:
    """The same grouping behind both programs: every resource the plugin advertises under `mixed` has the
    count GFD labels for it."""
    plugin = {r.name: len(r.devices) for r in build_resources(NODE, PluginConfig(mig_strategy="mixed"))}
    labels = resource_labels(NODE, Config(mig_strategy="mixed"))
    assert plugin == {"nvidia.com/mig-1g.5gb": 2, "nvidia.com/mig-3g.20gb": 1, "nvidia.com/gpu": 1}
    for name, count in plugin.items():
        if name != "nvidia.com/gpu":  # GFD's gpu.count is per GPU model, MIG-enabled GPUs included
            assert labels[f"{name}.count"] == str(count)


def test_a_compute_instance_profile_is_labelled_by_gfd_and_refused_by_the_plugin() -> None:
    """Upstream's two behaviours (reference device-plugin.md §3): GFD's mixed strategy labels every MIG
    profile; the plugin's default resource patterns only cover profiles with as many compute slices as
    GPU slices, so a `1c.3g.20gb` device stops it at start."""
    node = model(gpu(0, mig(0, "1c.3g.20gb", 1, gi_slices=3, ci_slices=1), mig(1, "1g.5gb", 2)))
    labels = resource_labels(node, Config(mig_strategy="mixed"))
    assert labels["nvidia.com/mig-1c.3g.20gb.count"] == "1"
    assert labels["nvidia.com/mig-1c.3g.20gb.slices.ci"] == "1"
    assert labels["nvidia.com/mig-1g.5gb.count"] == "1"
    with pytest.raises(ResourceError, match=r"^MIG profile '1c\.3g\.20gb' does not match any resource patterns$"):
        build_resources(node, PluginConfig(mig_strategy="mixed"))


def test_single_advertises_compute_instance_profiles_too() -> None:
    """The plugin's `single` pattern is `*` (reference config.md §5): a node of 1c.3g.20gb devices is served."""
    node = model(gpu(0, mig(0, "1c.3g.20gb", 1, 0, gi_slices=3, ci_slices=1),
                     mig(1, "1c.3g.20gb", 1, 1, gi_slices=3, ci_slices=1)))
    (resource,) = build_resources(node, PluginConfig(mig_strategy="single"))
    assert (resource.name, [d.index for d in resource.devices]) == ("nvidia.com/gpu", ["0:0", "0:1"])
    assert resource_labels(node, Config(mig_strategy="single"))["nvidia.com/gpu.count"] == "2"


@pytest.mark.parametrize(("node", "gfd_reason", "plugin_error"), [
    (model(gpu(0, mig(0, "1g.5gb", 1)), gpu(1)), "devices with MIG enabled and disable detected",
     "all devices on the node must be configured with the same migEnabled value"),
    (model(gpu(0, mig(0, "1g.5gb", 1)), dataclasses.replace(gpu(1), mig_enabled=True)),
     "at least one MIG device is enabled but empty", "device 1 has no MIG devices configured"),
    (model(gpu(0, mig(0, "1g.5gb", 1)), gpu(1, mig(0, "3g.20gb", 2, gi_slices=3, ci_slices=3))),
     "more than one MIG device type present on node", "more than one MIG device type present on node"),
    # Both conditions: each program reports the one its upstream checks first.
    (model(dataclasses.replace(gpu(0), mig_enabled=True), gpu(1)), "at least one MIG device is enabled but empty",
     "all devices on the node must be configured with the same migEnabled value"),
])
def test_a_broken_single_node_is_invalid_for_gfd_and_refused_by_the_plugin(node: DeviceModel, gfd_reason: str,
                                                                           plugin_error: str) -> None:
    assert check_single(node) is not None
    with structlog.testing.capture_logs() as logged:
        labels = resource_labels(node, Config(mig_strategy="single"))
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB-MIG-INVALID"
    assert labels["nvidia.com/gpu.count"] == "0"
    assert [e["event"] for e in logged if e["log_level"] == "warning"] == [
        f"Invalid configuration detected for mig-strategy=single: {gfd_reason}"]
    with pytest.raises(ResourceError, match=f"^{plugin_error}$"):
        build_resources(node, PluginConfig(mig_strategy="single"))


def test_a_valid_single_node() -> None:
    node = model(gpu(0, mig(0, "1g.5gb", 1), mig(1, "1g.5gb", 2)), gpu(1, mig(0, "1g.5gb", 1)))
    check = check_single(node)
    assert check is not None
    assert (check.mixed_modes, check.empty, check.profiles, check.device_types) == (False, (), 1, 1)
    assert check_single(model(gpu(0), gpu(1))) is None  # no MIG: single means full GPUs
    labels = resource_labels(node, Config(mig_strategy="single"))
    assert labels["nvidia.com/gpu.count"] == "3"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    assert [len(r.devices) for r in build_resources(node, PluginConfig(mig_strategy="single"))] == [3]


def test_one_profile_name_with_two_attribute_sets_is_valid_for_gfd_and_refused_by_the_plugin() -> None:
    """GFD's single strategy compares MIG profile names (reference gfd-labels.md §5 rule 4), the plugin the
    devices' attributes as well: a 1g.10gb with 16 SMs (H100 SXM) beside one with 14 (H100 PCIe)."""
    sxm = dataclasses.replace(mig(0, "1g.10gb", 1), multiprocessors=16)
    node = model(gpu(0, sxm), gpu(1, mig(0, "1g.10gb", 1)))
    check = check_single(node)
    assert check is not None and (check.profiles, check.device_types) == (1, 2)
    labels = resource_labels(node, Config(mig_strategy="single"))
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB-MIG-1g.10gb"
    assert labels["nvidia.com/gpu.count"] == "2"
    with pytest.raises(ResourceError, match=r"^more than one MIG device type present on node$"):
        build_resources(node, PluginConfig(mig_strategy="single"))
