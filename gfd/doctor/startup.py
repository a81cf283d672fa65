"""The doctor's checks a daemon runs once at start, from inside its container: those that need no host
root and no API (the container sees NVML and /dev, not the host's /etc or the kubelet's files unless
mounted). Each failure or warning is one log line with its remedy; every verdict is a metric. A daemon never
refuses to start over them."""

from __future__ import annotations

import structlog
from prometheus_client import Gauge

from gfd.discovery import nvml
from gfd.doctor.checks import FAILED, WARNING, Check, Context, run
from gfd.model import DeviceModel

log = structlog.get_logger("gfd.doctor")
NODE_CHECKS = ("nvml.library", "driver.version", "cuda.version", "devices.nodes", "gpus.mig-pending",
               "gpus.lost", "gpus.row-remapping")


def check_at_start(model: DeviceModel, gauge: Gauge, ids: tuple[str, ...] = NODE_CHECKS,
                   context: Context | None = None) -> list[Check]:
    """NVML is open (the daemon just read `model` through it)."""
    c = context or Context()
    c.model = model
    c.pending = nvml.pending_states(model.gpus)
    results = run(c, ids)
    for r in results:
        gauge.labels(check=r.id, verdict=r.verdict).set(1)
        if r.verdict in (FAILED, WARNING):
            log.warning("set-up check", check=r.id, verdict=r.verdict, evidence=r.evidence, remedy=r.remedy)
    return results
