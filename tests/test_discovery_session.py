"""gfd/discovery/session.py: which NVML a process uses, its opening and closing, and one read."""

from __future__ import annotations

from pathlib import Path

import pynvml
import pytest

from gfd.config import ConfigError
from gfd.discovery.errors import NvmlUnavailable
from gfd.discovery.session import NodeSource
from gfd.discovery.simulated.profiles import Fault


def test_a_simulated_source_reads_its_profile_and_removes_it_on_close() -> None:
    with NodeSource("auto", "t4", driver_root="/driver-root") as source:
        assert source.driver_root == ""  # a simulation is never looked for under a driver root
        assert source.simulation is not None and not source.ready
        source.open()
        assert source.ready
        assert [g.name for g in source.read().gpus] == ["Tesla T4"] * 4
        source.close_nvml()  # NVML closed, the source still usable: open again for the next pass
        assert not source.ready
        source.open()
        assert len(source.read().gpus) == 4
    assert source.simulation is None and not source.ready


def test_failed_queries_are_those_of_the_last_read() -> None:
    with NodeSource("auto", "t4") as source:
        source.open()
        assert not source.failed_queries
        assert source.simulation is not None
        source.simulation.node.faults.append(Fault("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_UNKNOWN, gpu=1))
        model = source.read()
        assert model.gpus[1].memory_mib is None  # a warning upstream: the pass goes on
        assert source.failed_queries == (("nvmlDeviceGetMemoryInfo", "ERROR_UNKNOWN"),)
        source.simulation.node.faults.clear()
        source.read()
        assert not source.failed_queries


def test_without_nvml_the_failure_is_worded_as_upstream_by_strategy_then_explained() -> None:
    """Upstream's line first (scripts grep it), then in brackets the NVML error and where the library was looked
    for."""
    cause = "no libnvidia-ml.so.1 on the library search path: no NVIDIA driver here, or its root not mounted"
    with NodeSource("auto", "no-library") as source:
        with pytest.raises(NvmlUnavailable) as e:
            source.open()
        assert source.init_failure(e.value).startswith(
            f"failed to create resource manager: unsupported strategy auto (ERROR_LIBRARY_NOT_FOUND: {cause}; ")
    with NodeSource("nvml", "no-library") as source:
        with pytest.raises(NvmlUnavailable) as e:
            source.open()
        assert source.init_failure(e.value).startswith(
            f"error creating labeler: failed to initialize resource manager: ERROR_LIBRARY_NOT_FOUND ({cause}; ")
        assert source.read().gpus == ()  # NVML closed: a GPU-less model (upstream's null manager)


def _refused(name: str) -> NvmlUnavailable:
    """nvmlInit's refusal as discovery raises it (gfd.discovery.nvml.translated)."""
    return NvmlUnavailable(name, "nvmlInit", name)


def test_a_missing_library_names_the_driver_root_it_was_looked_for_in(tmp_path: Path) -> None:
    source = NodeSource("auto", driver_root=str(tmp_path))
    explained = source.explain(_refused("ERROR_LIBRARY_NOT_FOUND"))
    assert explained.startswith(f"no libnvidia-ml.so.1 under the driver root {tmp_path} (--driver-root-ctr-path) "
                                "or on the library search path")
    assert NodeSource("auto", driver_root="/").explain(_refused("ERROR_LIBRARY_NOT_FOUND")).startswith(
        "no libnvidia-ml.so.1 on the library search path")  # `/` is the container's own root: not a mount
    assert source.explain(_refused("ERROR_DRIVER_NOT_LOADED")) == \
        "the NVIDIA kernel module is not loaded on this node"


def test_vfio_needs_no_nvml_and_tegra_is_not_implemented() -> None:
    with NodeSource("vfio", "vfio-passthrough") as source:
        assert source.ready
        assert source.read().gpus
    with pytest.raises(ConfigError, match="'tegra' is not implemented yet"):
        NodeSource("tegra")
