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

from collections.abc import Callable

from gfd.model import DeviceModel
from plugin.cdi.driver import find_driver_files
from plugin.cdi.edits import CONTROL_NODES, HookSettings, common_edits, gpu_nodes, mig_nodes
from plugin.cdi.roots import Roots, resolve
from plugin.cdi.spec import ContainerEdits, Device, Spec
from plugin.config import PluginConfig
from plugin.host import IMEX_CHANNEL

# nvidia-container-toolkit internal/discover/{gdrcopy,gds,mofed}.go
GDRCOPY_NODES = ("/dev/gdrdrv",)
GDS_NODES = ("/dev/nvidia-fs*",)
GDS_FILES = ("/run/udev", "/etc/cufile.json")
MOFED_NODES = ("/dev/infiniband/uverbs*", "/dev/infiniband/rdma_cm")


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
                              ContainerEdits(device_nodes=gpu_nodes(gpu, roots))))
        for mig in gpu.mig_devices:
            devices.append(Device(f"{gpu.index}:{mig.index}" if by_index else mig.uuid,
                                  ContainerEdits(device_nodes=mig_nodes(gpu, mig, mig_cap_minors, roots))))
    every = tuple(dict.fromkeys(n for d in devices for n in d.edits.device_nodes))
    devices.append(Device("all", ContainerEdits(device_nodes=every)))
    common = common_edits(files, roots.nodes(CONTROL_NODES), roots, HookSettings.for_config(config))
    return Spec("gpu", tuple(devices), common)


def _gds_edits(roots: Roots) -> ContainerEdits:
    nodes = roots.nodes(GDS_NODES)
    if not nodes:  # nvcdi: no nvidia-fs device, no GDS mounts either
        return ContainerEdits()
    found = [p for p in (resolve(roots.driver, f) for f in GDS_FILES) if p is not None]
    return ContainerEdits(device_nodes=nodes, mounts=tuple(roots.mount(p) for p in found))
