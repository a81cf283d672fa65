"""plugin/resources.py: the resources the plugin advertises and the configurations it refuses."""

from __future__ import annotations

import dataclasses

import pytest

from plugin.config import PluginConfig
from plugin.resources import ResourceError, build_resources
from tests.builders import gpu, mig, model, shared


def test_resource_errors_as_upstream() -> None:
    with pytest.raises(ResourceError, match=r"MIG profile '1c\.3g\.20gb' does not match any resource patterns"):
        build_resources(model(gpu(0, mig(0, "1c.3g.20gb", 1, gi_slices=3, ci_slices=1))),
                        PluginConfig(mig_strategy="mixed"))
    with pytest.raises(ResourceError, match="all devices on the node must be configured with the same migEnabled"):
        build_resources(model(gpu(0, mig(0, "1g.5gb", 1)), gpu(1)), PluginConfig(mig_strategy="single"))
    with pytest.raises(ResourceError, match="device 0 has no MIG devices configured"):
        build_resources(model(dataclasses.replace(gpu(0), mig_enabled=True)), PluginConfig(mig_strategy="single"))
    with pytest.raises(ResourceError, match="sharing using MPS is not supported for MIG devices"):
        build_resources(model(gpu(0, mig(0, "1g.5gb", 1))),
                        PluginConfig(mig_strategy="single", sharing=shared(2, "mps"), mps_root="/m"))


def test_none_strategy_exposes_mig_enabled_gpus_as_full_gpus() -> None:
    resources = build_resources(model(gpu(0, mig(0, "1g.5gb", 1)), gpu(1)), PluginConfig())
    assert [(r.name, [d.id for d in r.devices]) for r in resources] == [("nvidia.com/gpu", ["GPU-0000", "GPU-0001"])]
