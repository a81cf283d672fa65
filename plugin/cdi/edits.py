"""The container edits of a GPU, as nvcdi makes them (nvidia-container-toolkit pkg/nvcdi, internal/discover):
pure functions of what was read on the node, so that the device plugin's `gpu` spec and the DRA driver's
per-claim specs carry the same edits.

What a container gets is the common edits (driver files, control nodes, environment, hooks) plus, per device,
its device nodes. Reading the node is the caller's, once:

    roots = Roots.for_config(config)                                    # where things are, read and on the host
    files = find_driver_files(roots.driver, model.driver_version)       # reads the driver root
    common = common_edits(files, roots.nodes(CONTROL_NODES), roots, HookSettings.for_config(config))
    gpu_edits = ContainerEdits(device_nodes=gpu_nodes(gpu, roots))      # reads /dev (numbers, mode)
    mig_edits = ContainerEdits(device_nodes=mig_nodes(gpu, mig, mig_cap_minors, roots))
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gfd.discovery.sysfs import CONTROL_DEVICES, GPU_NODE, host_path
from gfd.model import Gpu, MigDevice
from plugin.cdi import CdiError
from plugin.cdi.driver import DriverFiles
from plugin.cdi.roots import Roots
from plugin.cdi.spec import IPC_OPTIONS, ContainerEdits, DeviceNode, Hook
from plugin.config import CDI_HOOKS, PluginConfig
from plugin.host import mig_cap_nodes
from plugin.resources import ResourceError

CONTROL_NODES = tuple(reversed(CONTROL_DEVICES))  # in nvcdi's order
# nvcdi (#395): the legacy NVIDIA runtime hook injects nothing more, even for an image that sets
# NVIDIA_VISIBLE_DEVICES=all (every CUDA base image does): the container gets only what CDI gave it.
VISIBLE_DEVICES_VOID = "NVIDIA_VISIBLE_DEVICES=void"


@dataclass(frozen=True)
class HookSettings:
    path: str  # --nvidia-cdi-hook-path: nvidia-ctk (hooks under `hook`) or nvidia-cdi-hook
    disabled: frozenset[str] = frozenset()  # --cdi-disable-hooks, `all` for every one

    @classmethod
    def for_config(cls, config: PluginConfig) -> HookSettings:
        return cls(config.nvidia_cdi_hook_path, frozenset(config.cdi_disable_hooks))


def common_edits(files: DriverFiles, control_nodes: tuple[DeviceNode, ...], roots: Roots,
                 hooks: HookSettings) -> ContainerEdits:
    """What every container with one of these GPUs gets (`roots` only names the host paths of the files)."""
    return ContainerEdits(
        env=(f"NVIDIA_CTK_LIBCUDA_DIR={':'.join(files.libcuda_dirs)}", VISIBLE_DEVICES_VOID),
        device_nodes=control_nodes,
        mounts=(*(roots.mount(p) for p in files.libraries), *(roots.mount(p, IPC_OPTIONS) for p in files.ipc),
                *(roots.mount(p) for p in (*files.firmware, *files.binaries))),
        hooks=hook_edits(files, hooks),
    )


def hook_edits(files: DriverFiles, settings: HookSettings) -> tuple[Hook, ...]:
    """internal/discover/hooks.go: `nvidia-ctk hook <name>` or `nvidia-cdi-hook <name>`, every one in the
    container's namespace before pivot_root; create-symlinks only when there is a link to make."""
    if "all" in settings.disabled:
        return ()
    program = os.path.basename(settings.path)
    fixed = (program, "hook") if program == "nvidia-ctk" else (program,)
    args = {
        "create-symlinks": tuple(a for target, link in files.links for a in ("--link", f"{target}::{link}")),
        "enable-cuda-compat": (f"--host-driver-version={files.version}",),
        "update-ldcache": tuple(a for d in files.library_dirs for a in ("--folder", d)),
        "disable-device-node-modification": (),
        "update-application-profile": (),
    }
    return tuple(Hook(settings.path, (*fixed, name, *args[name])) for name in CDI_HOOKS[1:]
                 if name not in settings.disabled and (args[name] or name != "create-symlinks"))


def gpu_nodes(gpu: Gpu, roots: Roots) -> tuple[DeviceNode, ...]:
    if gpu.minor_number is None:
        raise CdiError(f"failed to create CDI spec: no minor number for GPU {gpu.uuid}")
    return (_required(GPU_NODE.format(gpu.minor_number), roots),)


def mig_nodes(gpu: Gpu, mig: MigDevice, cap_minors: dict[str, int], roots: Roots) -> tuple[DeviceNode, ...]:
    """The parent GPU's node and the GPU and compute instances' capability nodes."""
    parent = gpu_nodes(gpu, roots)
    try:
        caps = mig_cap_nodes(gpu.minor_number, mig, cap_minors)
    except ResourceError as e:
        raise CdiError(f"failed to create CDI spec: {e}") from e
    return (*parent, *(_required(path, roots) for path in caps))


def _required(path: str, roots: Roots) -> DeviceNode:
    if not os.path.exists(host_path(roots.dev, path)):
        raise CdiError(f"failed to create CDI spec: device node {host_path(roots.dev, path)} does not exist")
    return roots.node(path)
