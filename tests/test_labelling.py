"""gfd/labelling.py: the one labelling pass (read, compose) and upstream's oneshot semantics around it."""

from __future__ import annotations

from typing import Any

import pytest

from gfd.config import Config, load_config, parse_command_line
from gfd.discovery.session import NodeSource
from gfd.labelling import PassError, label_node, oneshot_labels


def config(*argv: str, mps_file: str = "") -> Config:
    return load_config(parse_command_line([*argv, *([f"--config-file={mps_file}"] if mps_file else [])], {}))


def test_a_pass_reads_the_node_and_composes_its_labels() -> None:
    cfg = config("--simulate=t4", "--no-timestamp")
    with NodeSource.for_gfd(cfg) as source:
        source.open()
        result = label_node(source, cfg, 0)
    assert len(result.model.gpus) == 4
    assert result.labels is not None and result.labels["nvidia.com/gpu.count"] == "4"
    assert result.problem == ""


def test_a_pass_upstream_would_fail_keeps_its_model_and_says_why(write_yaml: Any) -> None:
    mps = write_yaml({"version": "v1", "sharing": {"mps": {"resources": [{"name": "nvidia.com/gpu", "replicas": 2}]}}})
    cfg = config("--simulate=a100-mig-single", "--mig-strategy=single", mps_file=mps)
    with NodeSource.for_gfd(cfg) as source:
        source.open()
        result = label_node(source, cfg, 0)
    assert result.labels is None
    assert result.model.gpus  # the daemon still counts its NVML errors and notes lost GPUs
    assert "MPS sharing is not supported for mig devices" in result.problem
    with NodeSource.for_gfd(cfg) as source, pytest.raises(PassError, match="MPS sharing is not supported"):
        oneshot_labels(source, cfg, 0)


def test_oneshot_without_nvml_fails_or_labels_a_gpu_less_node() -> None:
    with NodeSource.for_gfd(cfg := config("--simulate=no-library")) as source, \
            pytest.raises(PassError, match="failed to create resource manager"):
        oneshot_labels(source, cfg, 0)
    cfg = config("--simulate=no-library", "--fail-on-init-error=false", "--no-timestamp")
    with NodeSource.for_gfd(cfg) as source:
        labels = oneshot_labels(source, cfg, 0)
        assert not source.ready  # NVML is closed after the pass, as upstream's per-pass init/shutdown
    assert labels == {"nvidia.com/vgpu.present": "false"}  # upstream's null manager: no GPU labels
