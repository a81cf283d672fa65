"""One CDI spec per class the plugin's Allocate can name, as upstream's handler builds them with nvcdi
(k8s-device-plugin internal/cdi/cdi.go; nvidia-container-toolkit pkg/nvcdi, internal/discover).

- `gpu`: a device per GPU and per MIG device, named by the device-ID strategy (UUID, or index and
  `<gpu>:<mig>`), plus `all`; the driver's files, control devices and hooks as the spec's common edits.
- `imex-channel`: a device per configured channel.
- `gdrcopy`, `gds`, `mofed`: one `all` device each, only when enabled and only when the node has the files.

Paths are found under the driver root as the plugin sees it (`--driver-root-ctr-path`) and written as the
host sees them (`--driver-root`, `--dev-root`): nvcdi's root transform.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass

from gfd.discovery.sysfs import CONTROL_DEVICES, GPU_NODE, device_root, host_path
from gfd.model import DeviceModel, Gpu, MigDevice
from plugin.cdi import CdiError
from plugin.cdi.driver import DriverFiles, find_driver_files, resolve
from plugin.cdi.spec import ContainerEdits, Device, DeviceNode, Hook, Mount, Spec
from plugin.config import CDI_HOOKS, PluginConfig
from plugin.host import IMEX_CHANNEL, mig_cap_nodes
from plugin.resources import ResourceError

CONTROL_NODES = tuple(reversed(CONTROL_DEVICES))  # in nvcdi's order
# nvidia-container-toolkit internal/discover/{gdrcopy,gds,mofed}.go
GDRCOPY_NODES = ("/dev/gdrdrv",)
GDS_NODES = ("/dev/nvidia-fs*",)
GDS_FILES = ("/run/udev", "/etc/cufile.json")
MOFED_NODES = ("/dev/infiniband/uverbs*", "/dev/infiniband/rdma_cm")


@dataclass(frozen=True)
class Roots:
    """Where the driver and /dev are for the plugin's reads, and where they are on the host."""

    driver: str  # e.g. /driver-root (or / when no driver root is mounted)
    dev: str
    host_driver: str  # --driver-root, e.g. /run/nvidia/driver
    host_dev: str  # --dev-root, defaulting to the driver root

    @classmethod
    def for_config(cls, config: PluginConfig, host_root: str = "/") -> Roots:
        """`host_root` is / in production (a simulated node's tree in tests)."""
        mounted = host_path(host_root, config.container_driver_root)
        driver = mounted if os.path.isdir(mounted) else host_root
        return cls(driver, device_root(host_root, config.container_driver_root), config.nvidia_driver_root,
                   config.dev_root)

    def mount(self, path: str) -> Mount:
        return Mount(host_path(self.host_driver, path), path)

    def node(self, path: str) -> DeviceNode:
        host = host_path(self.host_dev, path)
        return DeviceNode(path, "" if host == path else host)

    def nodes(self, patterns: tuple[str, ...]) -> tuple[DeviceNode, ...]:
        """The device nodes that exist, for glob patterns such as /dev/nvidia-fs*."""
        found = []
        for pattern in patterns:
            for match in sorted(glob.glob(host_path(self.dev, pattern))):
                found.append(self.node("/" + os.path.relpath(match, self.dev)))
        return tuple(found)


def build_specs(model: DeviceModel, config: PluginConfig, imex_channels: tuple[int, ...],
                mig_cap_minors: dict[str, int], roots: Roots) -> list[Spec]:
    specs = [_gpu_spec(model, config, mig_cap_minors, roots)]
    if imex_channels:
        specs.append(Spec("imex-channel", tuple(
            Device(str(c), ContainerEdits(device_nodes=(roots.node(IMEX_CHANNEL.format(c)),)))
            for c in imex_channels)))
    optional: dict[str, tuple[bool, Callable[[], ContainerEdits]]] = {
        "gdrcopy": (config.gdrcopy_enabled, lambda: ContainerEdits(device_nodes=roots.nodes(GDRCOPY_NODES))),
        "gds": (config.gds_enabled, lambda: _gds_edits(roots)),
        "mofed": (config.mofed_enabled, lambda: ContainerEdits(device_nodes=roots.nodes(MOFED_NODES)))}
    for cdi_class, (enabled, find) in optional.items():
        edits = find() if enabled else ContainerEdits()  # the node is searched only for an enabled class
        if edits:  # an empty class is left out, and so is its name in Allocate
            specs.append(Spec(cdi_class, (Device("all", edits),)))
    return specs


def _gpu_spec(model: DeviceModel, config: PluginConfig, mig_cap_minors: dict[str, int], roots: Roots) -> Spec:
    files = find_driver_files(roots.driver, model.driver_version)  # first: the most fundamental failure
    by_index = config.device_id_strategy == "index"
    devices = []
    for gpu in model.gpus:
        devices.append(Device(str(gpu.index) if by_index else gpu.uuid,
                              ContainerEdits(device_nodes=(_gpu_node(gpu, roots),))))
        for mig in gpu.mig_devices:
            devices.append(Device(f"{gpu.index}:{mig.index}" if by_index else mig.uuid,
                                  ContainerEdits(device_nodes=_mig_nodes(gpu, mig, mig_cap_minors, roots))))
    every = tuple(dict.fromkeys(n for d in devices for n in d.edits.device_nodes))
    devices.append(Device("all", ContainerEdits(device_nodes=every)))
    return Spec("gpu", tuple(devices), _common_edits(files, config, roots))


def _gpu_node(gpu: Gpu, roots: Roots) -> DeviceNode:
    if gpu.minor_number is None:
        raise CdiError(f"failed to create CDI spec: no minor number for GPU {gpu.uuid}")
    return _required(GPU_NODE.format(gpu.minor_number), roots)


def _mig_nodes(gpu: Gpu, mig: MigDevice, minors: dict[str, int], roots: Roots) -> tuple[DeviceNode, ...]:
    gpu_node = _gpu_node(gpu, roots)
    try:
        caps = mig_cap_nodes(gpu.minor_number, mig, minors)
    except ResourceError as e:
        raise CdiError(f"failed to create CDI spec: {e}") from e
    return gpu_node, *(_required(path, roots) for path in caps)


def _required(path: str, roots: Roots) -> DeviceNode:
    if not os.path.exists(host_path(roots.dev, path)):
        raise CdiError(f"failed to create CDI spec: device node {host_path(roots.dev, path)} does not exist")
    return roots.node(path)


def _common_edits(files: DriverFiles, config: PluginConfig, roots: Roots) -> ContainerEdits:
    libcuda_dirs = [os.path.dirname(p) for p in files.libraries if os.path.basename(p).startswith("libcuda.so.")]
    return ContainerEdits(
        env=(f"NVIDIA_CTK_LIBCUDA_DIR={':'.join(dict.fromkeys(libcuda_dirs))}",),
        device_nodes=roots.nodes(CONTROL_NODES),
        mounts=tuple(roots.mount(p) for p in (*files.libraries, *files.ipc, *files.firmware, *files.binaries)),
        hooks=_hooks(files, config),
    )


def _hooks(files: DriverFiles, config: PluginConfig) -> tuple[Hook, ...]:
    """nvidia-container-toolkit internal/discover/hooks.go: `nvidia-ctk hook <name>` or `nvidia-cdi-hook <name>`."""
    disabled = set(config.cdi_disable_hooks)
    if "all" in disabled:
        return ()
    path = config.nvidia_cdi_hook_path
    program = os.path.basename(path)
    fixed = (program, "hook") if program == "nvidia-ctk" else (program,)
    links = [arg for soname, lib in files.sonames if soname.split(".so", 1)[1]
             for arg in ("--link", f"{soname}::{os.path.dirname(lib)}/{soname.split('.so', 1)[0]}.so")]
    args = {
        "create-symlinks": tuple(links),
        "enable-cuda-compat": (f"--host-driver-version={files.version}",),
        "update-ldcache": tuple(a for d in files.library_dirs for a in ("--folder", d)),
        "disable-device-node-modification": (),
    }
    return tuple(Hook(path, (*fixed, name, *args[name])) for name in CDI_HOOKS[1:]
                 if name not in disabled and (args[name] or name != "create-symlinks"))


def _gds_edits(roots: Roots) -> ContainerEdits:
    nodes = roots.nodes(GDS_NODES)
    if not nodes:  # nvcdi: no nvidia-fs device, no GDS mounts either
        return ContainerEdits()
    found = [p for p in (resolve(roots.driver, f) for f in GDS_FILES) if p is not None]
    return ContainerEdits(device_nodes=nodes, mounts=tuple(roots.mount(p) for p in found))
