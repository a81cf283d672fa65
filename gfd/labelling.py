"""One labelling pass: read the node and compose its labels. The daemon (gfd/daemon.py) runs it every
interval with its scheduling, backoff and metrics around it; oneshot and the bench run it once with
upstream's per-pass semantics (`oneshot_labels`)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from gfd.config import Config
from gfd.discovery.errors import DiscoveryError, NvmlUnavailable
from gfd.discovery.session import NodeSource
from gfd.labels.compose import Labels, compose
from gfd.labels.errors import LabelError
from gfd.model import DeviceModel

log = structlog.get_logger("gfd")


@dataclass(frozen=True)
class Pass:
    model: DeviceModel
    labels: Labels | None  # None when upstream would fail the pass: `problem` says why
    problem: str = ""
    failed_queries: tuple[tuple[str, str], ...] = ()  # (NVML function, error), fatal or not


def label_node(source: NodeSource, config: Config, started_at: int) -> Pass:
    """Read the node from an opened source (or one whose NVML failed to open: no GPUs) and compose its
    labels. DiscoveryError when NVML fails during the read: what to do then is the caller's."""
    model = source.read()
    try:
        return Pass(model, compose(model, config, started_at), failed_queries=source.failed_queries)
    except LabelError as e:
        return Pass(model, None, str(e), source.failed_queries)


class PassError(Exception):
    """The pass failed; upstream exits 1 with this message."""


def oneshot_labels(source: NodeSource, config: Config, started_at: int) -> Labels:
    """Upstream's pass: open NVML, label, close. An NVML that cannot be opened is fatal or, with
    failOnInitError=false, gives a GPU-less node (upstream's null manager); a lost GPU fails the pass."""
    try:
        source.open()
    except NvmlUnavailable as e:
        if config.fail_on_init_error:
            raise PassError(source.init_failure(e)) from e
        log.warning("Failed to initialize resource manager; using empty manager", error=str(e))
    try:
        result = label_node(source, config, started_at)
    except DiscoveryError as e:
        raise PassError(str(e)) from e
    finally:
        source.close_nvml()
    if result.model.lost_gpus:  # upstream's oneshot fails on a lost GPU; its exit status is kept
        raise PassError(lost_summary(result.model))
    if result.labels is None:
        raise PassError(result.problem)
    return result.labels


def lost_summary(model: DeviceModel) -> str:
    return "error getting devices: " + "; ".join(
        f"GPU {g.index}{f' ({g.uuid})' if g.uuid else ''}: ERROR_GPU_IS_LOST in {g.call}" for g in model.lost_gpus)
