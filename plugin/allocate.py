"""Allocate responses, as upstream builds them (internal/plugin/server.go, internal/rm/rm.go)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from gfd.discovery.sysfs import GPU_NODE, host_path
from plugin.cdi.spec import VENDOR
from plugin.config import PluginConfig
from plugin.host import IMEX_CHANNEL, NodeDevices, mig_cap_nodes
from plugin.mps.root import CONTAINER_ROOT, MpsRoot
from plugin.resources import PluginDevice, Resource

DEVICE_LIST_DIR = "/var/run/nvidia-container-devices"


class AllocateError(Exception):
    """A request the plugin refuses; the message is upstream's, surfaced to the user by the kubelet."""


@dataclass
class Mount:
    container_path: str
    host_path: str


@dataclass
class DeviceSpec:
    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass
class ContainerAllocation:
    envs: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    devices: list[DeviceSpec] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    cdi_devices: list[str] = field(default_factory=list)


def validate(resource: Resource, ids: list[str]) -> list[PluginDevice]:
    devices = []
    for device_id in ids:
        device = resource.device(device_id)
        if device is None:
            raise AllocateError(f'invalid allocation request for "{resource.name}": invalid request: '
                                f"unknown device: {device_id}")
        devices.append(device)
    if resource.replicas > 1 and len(ids) > 1 and resource.fail_requests_greater_than_one:
        raise AllocateError(f'invalid allocation request for "{resource.name}": invalid request: '
                            f"maximum request size for shared resources is 1; found {len(ids)}")
    return devices


def allocate(resource: Resource, ids: list[str], config: PluginConfig, node: NodeDevices) -> ContainerAllocation:
    devices = validate(resource, ids)
    # Replicas name their device; the container sees each physical device once, in request order.
    by_index = config.device_id_strategy == "index"
    visible = list(dict.fromkeys(d.index if by_index else d.uuid for d in devices))
    out = ContainerAllocation()
    strategies = config.device_list_strategy
    if any(s.startswith("cdi-") for s in strategies):
        _cdi(out, visible, config, node)
    if resource.mps:
        _mps(out, resource, config)
    for enabled, env in ((config.gdrcopy_enabled, "NVIDIA_GDRCOPY"), (config.gds_enabled, "NVIDIA_GDS"),
                         (config.mofed_enabled, "NVIDIA_MOFED")):
        if enabled:
            out.envs[env] = "enabled"
    if config.cdi_only:
        return out
    if "envvar" in strategies:
        out.envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(visible)
        if node.imex_channels:
            out.envs["NVIDIA_IMEX_CHANNELS"] = ",".join(map(str, node.imex_channels))
    if "volume-mounts" in strategies:
        out.envs["NVIDIA_VISIBLE_DEVICES"] = DEVICE_LIST_DIR
        out.mounts += [Mount(f"{DEVICE_LIST_DIR}/{v}", "/dev/null") for v in visible]
        out.mounts += [Mount(f"{DEVICE_LIST_DIR}/imex/{c}", "/dev/null") for c in node.imex_channels]
    if config.pass_device_specs:
        out.devices = _device_specs(devices, config, node)
    return out


def _cdi(out: ContainerAllocation, visible: list[str], config: PluginConfig, node: NodeDevices) -> None:
    names = [f"{VENDOR}/gpu={v}" for v in visible]
    names += [f"{VENDOR}/imex-channel={c}" for c in node.imex_channels]
    # An enabled class whose spec was empty (no gdrdrv, nvidia-fs or infiniband nodes) is not named, as upstream.
    names += [f"{VENDOR}/{kind}=all" for kind in ("gdrcopy", "gds", "mofed") if kind in node.cdi_classes]
    if not names:
        return
    if "cdi-annotations" in config.device_list_strategy:
        # A fresh key per response, as upstream: the runtime merges annotations by key.
        out.annotations[f"{config.cdi_annotation_prefix}nvidia-device-plugin_{uuid.uuid4()}"] = ",".join(names)
    if "cdi-cri" in config.device_list_strategy:
        out.cdi_devices += names


def _mps(out: ContainerAllocation, resource: Resource, config: PluginConfig) -> None:
    pipe = MpsRoot(CONTAINER_ROOT).pipe_dir(resource.name)  # where clients look, as upstream: /mps/<resource>/pipe
    host = MpsRoot(config.mps_root)
    out.envs["CUDA_MPS_PIPE_DIRECTORY"] = pipe
    out.mounts += [Mount(pipe, host.pipe_dir(resource.name)), Mount("/dev/shm", host.shm)]


def _device_specs(devices: list[PluginDevice], config: PluginConfig, node: NodeDevices) -> list[DeviceSpec]:
    paths = list(node.control_devices)
    for d in devices:  # the requested IDs as sent: duplicates (replicas of one GPU) are kept, as upstream
        paths.append(GPU_NODE.format(d.gpu.minor_number))
        if d.mig is not None:
            paths += mig_cap_nodes(d.gpu.minor_number, d.mig, node.mig_cap_minors)
    paths += [IMEX_CHANNEL.format(c) for c in node.imex_channels]
    return [DeviceSpec(p, host_path(config.dev_root, p)) for p in paths]
