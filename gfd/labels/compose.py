"""One labelling pass: every labeler merged in upstream's order (later keys win)."""

from __future__ import annotations

import structlog

from gfd.config import Config
from gfd.labels import Labels, resources, system
from gfd.labels.errors import LabelError
from gfd.labels.valid import valid_labels
from gfd.model import DeviceModel

log = structlog.get_logger("gfd.labels")

__all__ = ["LabelError", "Labels", "compose"]


def compose(model: DeviceModel, config: Config, started_at: int) -> Labels:
    """All labels for `model`. `started_at` is the run's start (Unix seconds), not this pass's."""
    labels = system.timestamp_labels(None if config.no_timestamp else started_at)
    if model.gpus:
        labels.update(system.machine_labels(model))
        labels.update(system.version_labels(model))
        labels.update(resources.mig_capable_labels(model, config))
        labels.update(resources.mps_capable_labels(model, config))
        labels.update(resources.memory_shares_labels(model, config))
        labels.update(resources.resource_labels(model, config))
        labels.update(system.mode_labels(model))
        labels.update(system.imex_labels(model))
    labels.update(system.vgpu_labels(model))
    if len(labels) <= 1:
        log.warning("No labels generated from any source")
    return valid_labels(labels)
