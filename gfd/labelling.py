"""One labelling pass with upstream's per-pass semantics: open NVML, read the node, compose labels."""

from __future__ import annotations

import structlog

from gfd.config import Config
from gfd.discovery.errors import DiscoveryError, NvmlUnavailable
from gfd.discovery.session import NodeSource
from gfd.labels.compose import Labels, compose
from gfd.labels.errors import LabelError
from gfd.model import DeviceModel

log = structlog.get_logger("gfd")


class PassError(Exception):
    """The pass failed; upstream exits 1 with this message."""


def read_model(source: NodeSource, config: Config) -> DeviceModel:
    """Open NVML, read, close. An NVML that cannot be opened is fatal or, with
    failOnInitError=false, gives a GPU-less model (upstream's null manager)."""
    try:
        source.open()
    except NvmlUnavailable as e:
        if config.fail_on_init_error:
            raise PassError(source.init_failure(e)) from None
        log.warning("Failed to initialize resource manager; using empty manager", error=str(e))
        return _read(source)
    try:
        return _read(source)
    finally:
        source.close_nvml()


def _read(source: NodeSource) -> DeviceModel:
    try:
        model = source.read()
    except DiscoveryError as e:
        raise PassError(str(e)) from None
    if model.lost_gpus:  # upstream's oneshot fails on a lost GPU; its exit status is kept
        raise PassError(lost_summary(model))
    return model


def lost_summary(model: DeviceModel) -> str:
    return "error getting devices: " + "; ".join(
        f"GPU {g.index}{f' ({g.uuid})' if g.uuid else ''}: ERROR_GPU_IS_LOST in {g.call}" for g in model.lost_gpus)


def labels_for(model: DeviceModel, config: Config, started_at: int) -> Labels:
    try:
        return compose(model, config, started_at)
    except LabelError as e:
        raise PassError(str(e)) from None
