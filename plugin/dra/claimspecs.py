"""One CDI spec per prepared claim, as NVIDIA's driver writes them: `<cdi root>/k8s.gpu.nvidia.com-claim_<uid>.json`,
kind `k8s.gpu.nvidia.com/claim`, a device `<claim uid>-<device>` per allocated device with its device nodes (a MIG
device: its parent's node and its GPU- and compute-instance capability nodes), and as the spec's common edits the
same driver files, control nodes, environment (NVIDIA_VISIBLE_DEVICES=void) and hooks as the device plugin's
specs (plugin/cdi/edits.py). JSON, as the device plugin's specs; the container runtime reads both JSON and YAML,
and a YAML spec left by NVIDIA's driver for the same claim is removed too.

What is read from the node (driver files, control nodes, MIG capability minors) is read once at start; a
device's nodes once per device, at its first prepare.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from gfd.discovery.sysfs import device_root, host_path
from gfd.model import DeviceModel
from gfd.outputs import OutputError
from gfd.outputs.featurefile import write_atomically
from plugin.cdi import CdiError
from plugin.cdi.driver import DriverFiles, find_driver_files
from plugin.cdi.edits import CONTROL_NODES, HookSettings, common_edits, gpu_nodes, mig_nodes
from plugin.cdi.roots import Roots
from plugin.cdi.spec import ContainerEdits, Device, Spec
from plugin.cdi.store import SPEC_MODE
from plugin.dra.devices import Allocatable
from plugin.dra.prepare import CDI_CLASS, CDI_VENDOR, CLAIM_SPEC_PREFIX, cdi_device_name, claim_spec_file
from plugin.host import mig_minors

log = structlog.get_logger("plugin.dra")

HOOK = "nvidia-cdi-hook"
IMAGE_HOOK = f"/usr/bin/{HOOK}"  # where NVIDIA's image has it, and the NVIDIA Container Toolkit installs it
SPEC_EXTENSIONS = ("json", "yaml")  # what we write, and what NVIDIA's driver writes
# NVIDIA's DRA driver's specs have the four hooks of shared/reference/dra.md §4; nvidia-ctk's newer
# update-application-profile (the device plugin's fifth) is not among them.
DRA_DISABLED_HOOKS = frozenset({"update-application-profile"})


def prepare_cdi_root(path: str) -> None:
    """The directory the specs go to, made (0750) when missing; CdiError with NVIDIA's message when it is not a
    directory."""
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
    except FileExistsError as e:
        raise CdiError(f"path for cdi file generation is not a directory: '{path}'") from e
    except OSError as e:
        raise CdiError(f"cannot create the CDI directory '{path}': {e.strerror or e}") from e


def hook_path(configured: str, plugin_dir: str) -> str:
    """The hook the specs name (`--nvidia-cdi-hook-path`). Unset, NVIDIA's driver copies its image's hook into
    its directory under the kubelet's plugins directory (the same path on the host) and names that; ours does
    the same when this image has one, and otherwise names the NVIDIA Container Toolkit's path on the host."""
    if configured:
        return configured
    if not os.path.isfile(IMAGE_HOOK):
        log.warning("no nvidia-cdi-hook in this image: the CDI specs name the host's; set --nvidia-cdi-hook-path "
                    "where the host has another", path=IMAGE_HOOK)
        return IMAGE_HOOK
    target = os.path.join(plugin_dir, HOOK)
    temporary = f"{target}.tmp"
    try:
        shutil.copy2(IMAGE_HOOK, temporary)
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    except OSError as e:
        raise CdiError(f"cannot copy {IMAGE_HOOK} to {target}: {e.strerror or e}") from e
    return target


def dra_roots(container_driver_root: str, host_driver_root: str, host_root: str = "/") -> Roots:
    """Where the driver's files and device nodes are for our reads (`--container-driver-root`, under `host_root`,
    a simulated node's tree in tests) and as the host names them (`--nvidia-driver-root`): device nodes under
    the driver root when it has them (a driver container), else the host's /dev."""
    mounted = host_path(host_root, container_driver_root)
    driver = mounted if os.path.isdir(mounted) else host_root
    dev = device_root(host_root, container_driver_root)
    return Roots(driver, dev, host_driver_root, host_driver_root if dev == mounted else "/")


@dataclass(frozen=True)
class NodeEdits:
    """What every claim's spec shares, read from the node once (`files`: the driver's files they name)."""

    roots: Roots
    common: ContainerEdits
    mig_cap_minors: Mapping[str, int]
    files: DriverFiles

    @classmethod
    def read(cls, model: DeviceModel, roots: Roots, hook_path: str, host_root: str = "/") -> NodeEdits:
        """CdiError (one line) when the driver's files cannot be found: fatal at start, as NVIDIA's."""
        files = find_driver_files(roots.driver, model.driver_version)
        common = common_edits(files, roots.nodes(CONTROL_NODES), roots, HookSettings(hook_path, DRA_DISABLED_HOOKS))
        return cls(roots, common, mig_minors(host_root), files)


class ClaimSpecFiles:
    """The ClaimSpecs of plugin.dra.prepare: writes and removes the spec files in `cdi_root`."""

    def __init__(self, cdi_root: str, node: NodeEdits) -> None:
        self.cdi_root, self.node = cdi_root, node
        self._devices: dict[tuple[str, str], ContainerEdits] = {}  # (device name, uuid) -> its nodes

    def write(self, claim_uid: str, devices: Sequence[Allocatable],
              extra: Mapping[str, ContainerEdits] | None = None) -> None:
        spec = Spec(CDI_CLASS, tuple(Device(cdi_device_name(claim_uid, d.name), _merged(
            self._edits(d), (extra or {}).get(d.name))) for d in devices), self.node.common, CDI_VENDOR)
        try:
            # Not flushed to disk: a spec matters until the next reboot, after which the kubelet prepares its
            # claim again (and the earlier boot's specs are removed at start).
            write_atomically(os.path.join(self.cdi_root, claim_spec_file(claim_uid, SPEC_EXTENSIONS[0])),
                             spec.to_json(), SPEC_MODE, durable=False)
        except OutputError as e:
            raise CdiError(str(e)) from e

    def remove(self, claim_uid: str) -> None:
        for extension in SPEC_EXTENSIONS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.cdi_root, claim_spec_file(claim_uid, extension)))

    def remove_all(self) -> int:
        """Every claim's spec (after a reboot: the claims of the earlier boot are prepared again, or never)."""
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.cdi_root):
                if name.startswith(CLAIM_SPEC_PREFIX) and name.rsplit(".", 1)[-1] in SPEC_EXTENSIONS:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.cdi_root, name))
                        removed += 1
        return removed

    def _edits(self, device: Allocatable) -> ContainerEdits:
        key = (device.name, device.mig.uuid if device.mig else device.gpu.uuid)
        edits = self._devices.get(key)
        if edits is None:
            roots, gpu = self.node.roots, device.gpu
            nodes = gpu_nodes(gpu, roots) if device.mig is None else \
                mig_nodes(gpu, device.mig, dict(self.node.mig_cap_minors), roots)
            edits = self._devices[key] = ContainerEdits(device_nodes=nodes)
        return edits


def _merged(device: ContainerEdits, extra: ContainerEdits | None) -> ContainerEdits:
    """A device's nodes with what its claim adds to it (an enforced share: MPS's environment and mounts)."""
    if extra is None:
        return device
    return ContainerEdits(device.env + extra.env, device.device_nodes + extra.device_nodes,
                          device.mounts + extra.mounts, device.hooks + extra.hooks)
