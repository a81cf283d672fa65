"""Host facts Allocate needs, read once at start: IMEX channels, MIG capability minors, control devices."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

import structlog

from gfd.discovery.sysfs import CONTROL_DEVICES, device_root, host_path
from gfd.model import MigDevice
from plugin.config import PluginConfig
from plugin.resources import Resource, ResourceError

log = structlog.get_logger("plugin")
MIG_MINORS = "proc/driver/nvidia-caps/mig-minors"
CAP_NODE = "/dev/nvidia-caps/nvidia-cap{}"
IMEX_CHANNEL = "/dev/nvidia-caps-imex-channels/channel{}"


@dataclass(frozen=True)
class NodeDevices:
    """Host facts Allocate needs beyond the device model: IMEX channels, MIG capability minors and
    which control devices exist in the plugin's container."""

    imex_channels: tuple[int, ...] = ()
    mig_cap_minors: dict[str, int] = field(default_factory=dict)  # "gpu0/gi1/access" -> minor
    control_devices: tuple[str, ...] = ()
    cdi_classes: frozenset[str] = frozenset()  # the CDI specs written at start: only these are named


def read_node_devices(config: PluginConfig, resources: list[Resource], root: str = "/") -> NodeDevices:
    """`root` is where the container's / is for these reads (a simulated node's tree in tests)."""
    minors = mig_minors(root) if config.pass_device_specs or config.cdi_enabled else {}
    if config.pass_device_specs:
        for device in (d for r in resources for d in r.devices):
            if device.gpu.minor_number is None:
                raise ResourceError(f"error getting device paths: no minor number for GPU {device.gpu.uuid}")
            if device.mig is not None:
                mig_cap_nodes(device.gpu.minor_number, device.mig, minors)
    return NodeDevices(
        imex_channels=_imex_channels(config, root),
        mig_cap_minors=minors,
        control_devices=tuple(p for p in CONTROL_DEVICES if os.path.exists(host_path(root, p))),
    )


def mig_cap_nodes(gpu_minor: int | None, mig: MigDevice, minors: dict[str, int]) -> tuple[str, str]:
    """The /dev/nvidia-caps nodes of a MIG device's GPU instance and compute instance, from the driver's
    mig-minors table; ResourceError (upstream's message) when the table lacks one."""
    base = f"gpu{gpu_minor}/gi{mig.gi_id}"
    nodes = []
    for key in (f"{base}/access", f"{base}/ci{mig.ci_id}/access"):
        if key not in minors:
            raise ResourceError(f"missing MIG GPU instance capability path: {key}")
        nodes.append(CAP_NODE.format(minors[key]))
    return nodes[0], nodes[1]


def mig_minors(root: str) -> dict[str, int]:
    """`gpu0/gi1/access 21` lines; missing file = no MIG on this host."""
    try:
        with open(host_path(root, MIG_MINORS), encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    minors = {}
    for line in lines:
        key, _, minor = line.rpartition(" ")
        if key and minor.isdigit():
            minors[key] = int(minor)
    return minors


def _imex_channels(config: PluginConfig, root: str) -> tuple[int, ...]:
    found = []
    dev_root = device_root(root, config.container_driver_root)
    for channel in config.channel_ids:
        path = IMEX_CHANNEL.format(channel)
        if any(_is_char_device(host_path(base, path)) for base in (dev_root, root)):
            found.append(channel)
        elif config.imex.required or config.imex_required:
            raise ResourceError(f"error querying IMEX channels: requested IMEX channel channel{channel} does not exist")
        else:
            log.warning(f"Ignoring requested IMEX channel channel{channel} (not found)")
    return tuple(found)


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False
