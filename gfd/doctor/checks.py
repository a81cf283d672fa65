"""The checks. Each reads one part of the set-up and says ok, warning, failed or skipped (with why), what it
read, and what would fix it. They only read: files under the host root, NVML, and the API when credentials
are given. A check never raises: an unexpected error is its own `failed` verdict."""

from __future__ import annotations

import functools
import os
import socket
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gfd.discovery.sysfs import GPU_NODE, REQUIRED_CONTROL_DEVICES, device_root, host_path
from gfd.doctor.hostfiles import HostFileError, get, load_json, name
from gfd.doctor.runtime import read_runtime_configs
from gfd.kube.errors import Forbidden, KubeError, NotFound, Unreachable
from gfd.model import DeviceModel
from plugin.dra.config import DRIVER_NAME
from plugin.dra.devices import allocatable_devices

if TYPE_CHECKING:
    from gfd.doctor.cluster import Cluster

OK, WARNING, FAILED, SKIPPED = "ok", "warning", "failed", "skipped"
# Which node-level GPU driver doctor runs for: its checks differ (gfd's are the device plugin's).
DEVICE_PLUGIN, DRA = "device-plugin", "dra"
DEVICE_CLASSES = ("gpu.nvidia.com", "mig.nvidia.com")  # NVIDIA's, which the chart installs
# Upstream GFD and device plugin README, "Prerequisites": NVIDIA drivers >= 384.81.
MIN_DRIVER = "384.81"
TOOLKIT = ("usr/bin/nvidia-container-runtime", "usr/bin/nvidia-ctk", "usr/local/nvidia/toolkit/nvidia-ctk")
CDI_VENDOR = "k8s.device-plugin.nvidia.com"
CDI_SPEC_LIMIT = 16 << 20  # a spec for 256 GPUs with 7 MIG devices each is under 1 MiB
NODE_FEATURE_CRD = "nodefeatures.nfd.k8s-sigs.io"


@dataclass(frozen=True)
class Finding:
    verdict: str
    evidence: str  # what was read: a file and its value, an NVML answer, an API answer
    remedy: str = ""  # what would fix it (empty when nothing needs fixing)


@dataclass(frozen=True)
class Check(Finding):
    id: str = ""


@dataclass
class Context:
    """What the checks look at. NVML facts come from an already open session (`model`), or `nvml_error`."""

    host_root: str = "/"
    model: DeviceModel | None = None
    nvml_library: str = ""
    nvml_error: str = ""
    pending: dict[int, Any] = field(default_factory=dict)  # GPU index -> nvml.PendingState
    # What the host checks look at: doctor's and the program's options (gfd/doctor/cli.py) fill them; the
    # daemons' start-up subset reads none of them.
    cdi: bool = False
    cdi_spec_dir: str = ""
    device_id_strategy: str = ""
    device_plugins_dir: str = ""
    features_dir: str = ""
    node_feature_api: bool = False
    runtime_class: str = ""  # the chart's runtimeClassName, when it sets one
    cluster: Cluster | None = None  # the API, when credentials were given
    node_name: str = ""
    driver: str = DEVICE_PLUGIN
    cdi_cri: bool = False  # the runtime gets CDI device names from the kubelet (DRA, or the cdi-cri strategy)
    dra_registrar_dir: str = ""  # the kubelet's plugins_registry and plugins directories, as the DRA driver's
    dra_plugins_dir: str = ""  # options name them

    driver_root: str = ""  # where a driver container's root is mounted, if it is
    simulated: str = ""  # the --simulate profile, when the node is simulated
    # False for a simulated node given no --host-root: host_root is then the simulation's own tree (its
    # /sys, driver root and device nodes), which has no container runtime, toolkit or kubelet to check.
    host_files: bool = True

    def host(self, path: str) -> str:
        return host_path(self.host_root, path)


def _needs_nvml(check: Callable[[Context, DeviceModel], Finding]) -> Callable[[Context], Finding]:
    """A check of what NVML reported: skipped, saying so, when NVML is not loaded."""
    @functools.wraps(check)
    def checked(c: Context) -> Finding:
        return Finding(SKIPPED, "NVML not loaded") if c.model is None else check(c, c.model)

    return checked


def _reads_host(check: Callable[[Context], Finding]) -> Callable[[Context], Finding]:
    """A check of the host's files: skipped, saying so, on a simulated node with no host root to read."""
    @functools.wraps(check)
    def checked(c: Context) -> Finding:
        return check(c) if c.host_files else \
            Finding(SKIPPED, "a simulated node has no host files (--host-root names a host's to check)")

    return checked


def nvml_library(c: Context) -> Finding:
    simulated = f"simulated node (--simulate={c.simulated})" if c.simulated else ""
    if c.nvml_error:
        return Finding(FAILED, f"{simulated}: {c.nvml_error}" if simulated else c.nvml_error,
                       "install the NVIDIA driver, or mount the driver container's root (/run/nvidia/driver) at "
                       "--driver-root-ctr-path (/driver-root)")
    if simulated:
        return Finding(OK, f"{simulated}: the simulator's NVML")
    return Finding(OK, f"loaded {c.nvml_library or 'libnvidia-ml.so.1 (ordinary library search)'}")


@_needs_nvml
def driver_version(c: Context, model: DeviceModel) -> Finding:
    version = model.driver_version
    if not version:
        return Finding(SKIPPED, "no GPU answered, so NVML reported no driver version")
    if _numbers(version) < _numbers(MIN_DRIVER):
        return Finding(FAILED, f"driver {version} < {MIN_DRIVER}",
                       f"install an NVIDIA driver {MIN_DRIVER} or newer")
    return Finding(OK, f"driver {version} (needs >= {MIN_DRIVER})")


def cuda_version(c: Context) -> Finding:
    if c.model is None or not c.model.cuda_driver_version:
        return Finding(SKIPPED, "NVML not loaded or no GPU")
    v = c.model.cuda_driver_version
    return Finding(OK, f"CUDA driver API {v // 1000}.{v % 1000 // 10}")


@_needs_nvml
def device_nodes(c: Context, model: DeviceModel) -> Finding:
    wanted = [*REQUIRED_CONTROL_DEVICES, *(GPU_NODE.format(g.minor_number) for g in model.gpus
                                           if g.minor_number is not None)]
    dev_root = device_root(c.host_root, c.driver_root)
    missing = [p for p in wanted if not os.path.exists(host_path(dev_root, p))]
    if missing:
        return Finding(FAILED, f"{len(model.gpus)} GPUs; missing {', '.join(missing)}",
                       "load the nvidia and nvidia-uvm kernel modules (nvidia-modprobe -u -c=0), or mount the "
                       "host's /dev where --dev-root says")
    return Finding(OK, f"{len(model.gpus)} GPUs, {len(wanted)} device nodes present")


@_needs_nvml
def mig_pending(c: Context, model: DeviceModel) -> Finding:
    waiting = [f"GPU {i} (MIG {'on' if p.mig_current else 'off'} -> {'on' if p.mig_pending else 'off'})"
               for i, p in sorted(c.pending.items()) if p.mig_current is not None and p.mig_current != p.mig_pending]
    if waiting:
        return Finding(WARNING, f"a MIG mode change waits for a GPU reset: {', '.join(waiting)}",
                       "reset those GPUs (nvidia-smi -r -i <gpu>, with no process on them) or reboot the node")
    return Finding(OK, "no MIG mode change pending")


@_needs_nvml
def lost_gpus(c: Context, model: DeviceModel) -> Finding:
    if model.lost_gpus:
        names = ", ".join(f"GPU {g.index} {g.uuid or g.pci_bus_id}".strip() for g in model.lost_gpus)
        return Finding(FAILED, f"NVML reports GPU_IS_LOST for {names}",
                       "drain the node and reboot it (a lost GPU needs a reset or power cycle); check dmesg for XID 79")
    return Finding(OK, f"every one of {len(model.gpus)} GPUs answers")


@_needs_nvml
def row_remapping(c: Context, model: DeviceModel) -> Finding:
    failed = [i for i, p in sorted(c.pending.items()) if p.remap_failed]
    pending = [i for i, p in sorted(c.pending.items()) if p.rows_pending]
    if failed:
        return Finding(FAILED, f"row remapping failed on GPU {', '.join(map(str, failed))}",
                       "the GPU's memory has more faults than it can remap: have the GPU replaced")
    if pending:
        return Finding(WARNING, f"remapped rows wait for a reset on GPU "
                       f"{', '.join(map(str, pending))}", "reset those GPUs or reboot the node to apply the remapping")
    if not any(p.rows_pending is not None for p in c.pending.values()):
        return Finding(SKIPPED, "no GPU here remaps rows (HBM GPUs only)")
    return Finding(OK, "no remapping pending or failed")


@_reads_host
def container_runtime(c: Context) -> Finding:
    configs = read_runtime_configs(c.host_root)
    if not configs:
        return Finding(SKIPPED, f"no containerd, CRI-O or Docker configuration under "
                       f"{c.host('/etc')} (mount the host's /etc, or run doctor on the host)")
    broken = next((r for r in configs if r.error), None)
    if broken is not None:
        return Finding(FAILED, f"{broken.path}: {broken.error}",
                       f"put {broken.runtime}'s configuration at {broken.path} as a regular file (nvidia-ctk "
                       f"runtime configure --runtime={broken.runtime} writes one), then restart {broken.runtime}"
                       if broken.unreadable else f"correct {broken.path} as the evidence says, then restart "
                       f"{broken.runtime}")
    evidence = "; ".join(f"{r.runtime} ({r.path}): nvidia handler {'yes' if r.nvidia_handler else 'no'}, "
                         f"default {name(r.default)}" for r in configs)
    orphan = next((r for r in configs if r.default_has_no_handler), None)
    if orphan is not None:
        return Finding(FAILED, f"{evidence}; {orphan.runtime}'s default runtime nvidia has no handler, so "
                       f"{orphan.runtime} cannot start containers",
                       f"nvidia-ctk runtime configure --runtime={orphan.runtime} --set-as-default (it writes the "
                       f"handler too), then restart {orphan.runtime}")
    if any(r.nvidia_default for r in configs) or c.cdi:
        return Finding(OK, evidence + ("; CDI device names need no runtime handler" if c.cdi
                       and not any(r.nvidia_default for r in configs) else ""))
    first = configs[0].runtime
    if any(r.nvidia_handler for r in configs):
        if c.runtime_class:
            return Finding(OK, evidence + f"; pods use RuntimeClass {c.runtime_class}")
        return Finding(WARNING, evidence + "; not the default, and no RuntimeClass in use",
                       "set the chart value runtimeClassName=nvidia (with a RuntimeClass `nvidia`), or make it the "
                       f"default: nvidia-ctk runtime configure --runtime={first} --set-as-default")
    return Finding(FAILED, evidence,
                   f"nvidia-ctk runtime configure --runtime={first} --set-as-default, then restart {first}")


@_reads_host
def toolkit(c: Context) -> Finding:
    found = [p for p in TOOLKIT if os.path.isfile(c.host(p)) and os.access(c.host(p), os.X_OK)]
    if found:
        return Finding(OK, "found /" + ", /".join(found))
    return Finding(FAILED, f"none of /{', /'.join(TOOLKIT)} under {c.host_root}",
                   "install the NVIDIA Container Toolkit (package nvidia-container-toolkit), or the GPU Operator")


def runtime_cdi(c: Context) -> Finding:
    if not (c.cdi_cri or c.driver == DRA):
        return Finding(SKIPPED, "no CDI device names for the runtime (cdi-cri strategy or DRA driver)")
    return _runtime_cdi(c)


@_reads_host
def _runtime_cdi(c: Context) -> Finding:
    """The CRI runtime injects the CDI devices the kubelet passes (CRI CDIDevices), from the directory our
    specs are written to."""
    configs = [r for r in read_runtime_configs(c.host_root) if r.runtime != "docker"]
    if not configs:
        return Finding(SKIPPED, f"no containerd or CRI-O configuration under {c.host('/etc')} (mount the host's "
                                "/etc, or run doctor on the host)")
    findings = []
    for r in configs:
        if r.error or r.cdi is None:
            findings.append((FAILED, f"{r.path}: {r.error}", "correct it as runtime.nvidia's evidence says"))
            continue
        state = {True: "on", False: "off", None: f"not set ({r.cdi.default_note})"}[r.cdi.enabled]
        dirs = ", ".join(r.cdi.spec_dirs) or "none"
        evidence = f"{r.runtime} ({r.path}): CDI {state}, spec dirs {dirs}"
        if r.cdi.enabled is False:
            findings.append((FAILED, evidence, f"set {r.cdi.key} = true and restart {r.runtime}: without it the "
                                               "containers get none of the devices their claims name"))
        elif r.cdi.enabled is None and "off by default" in r.cdi.default_note:
            findings.append((WARNING, evidence, f"set {r.cdi.key} = true and restart {r.runtime} (containerd 1.7 "
                                                "starts containers without their CDI devices otherwise)"))
        elif c.cdi_spec_dir and os.path.normpath(c.cdi_spec_dir) not in map(os.path.normpath, r.cdi.spec_dirs):
            findings.append((FAILED, f"{evidence}; the specs are written to {c.cdi_spec_dir}",
                             f"add {c.cdi_spec_dir} to {r.runtime}'s cdi_spec_dirs, or write the specs to one of "
                             f"its directories (--cdi-root / --cdi-spec-dir)"))
        else:
            findings.append((OK, evidence, ""))
    worst = min(findings, key=lambda f: (FAILED, WARNING, OK).index(f[0]))
    return Finding(worst[0], "; ".join(f[1] for f in findings), worst[2])


def cdi_specs(c: Context) -> Finding:
    if not c.cdi:
        return Finding(SKIPPED, "no CDI device list strategy chosen")
    return _cdi_spec_file(c)


@_reads_host
def _cdi_spec_file(c: Context) -> Finding:
    path = os.path.join(c.host(c.cdi_spec_dir), f"{CDI_VENDOR}-gpu.json")
    if not os.path.lexists(path):
        return Finding(FAILED, f"{path} does not exist",
                       "start the device plugin with a CDI strategy (it writes the spec), and mount the host's "
                       "/var/run/cdi into its container")
    try:
        spec = load_json(path, CDI_SPEC_LIMIT)
        kind = get(spec, ("kind",), str, "", "an object")
        devices = get(spec, ("devices",), list, [], "an object")
        names = [get(spec, ("devices", i, "name"), str, "", "an object") for i in range(len(devices))]
        if "" in names:
            raise HostFileError(f"devices[{names.index('')}] has no name")
    except HostFileError as e:
        return Finding(FAILED, f"{path} is not a CDI spec: {e}",
                       "delete it; the device plugin writes it again at its next start")
    wanted = set() if c.model is None else {
        str(g.index) if c.device_id_strategy == "index" else g.uuid for g in c.model.gpus}
    missing = sorted(wanted.difference(names))
    if kind != f"{CDI_VENDOR}/gpu" or missing:
        return Finding(FAILED, f"{path}: kind {name(kind) if kind else '-'}; no device for {', '.join(missing) or '-'}",
                       "restart the device plugin: it writes the spec for the GPUs it finds (a stale spec names "
                       "devices that are gone)")
    return Finding(OK, f"{path}: {len(set(names))} devices, every GPU named")


@_reads_host
def device_plugins(c: Context) -> Finding:
    directory = c.host(c.device_plugins_dir)
    kubelet = os.path.join(directory, "kubelet.sock")
    if not os.path.isdir(directory):
        return Finding(FAILED, f"{directory} does not exist",
                       "mount the kubelet's device-plugins directory (hostPath /var/lib/kubelet/device-plugins; "
                       "adjust it if the kubelet runs with another --root-dir)")
    if not _is_socket(kubelet):
        return Finding(FAILED, f"{kubelet} is not a socket (the kubelet is not running "
                       "here, or uses another root directory)", "check `systemctl status kubelet` and its --root-dir")
    return Finding(OK, f"{kubelet} present")


@_reads_host
def dra_kubelet_plugin(c: Context) -> Finding:
    """The DRA driver serves its registration socket where the kubelet's plugin watcher looks, and its DRA
    socket; a socket file nobody answers is a driver that died."""
    registry = c.host(c.dra_registrar_dir)
    sockets = (os.path.join(registry, f"{DRIVER_NAME}-reg.sock"),
               os.path.join(c.host(c.dra_plugins_dir), DRIVER_NAME, "dra.sock"))
    if not os.path.isdir(registry):
        return Finding(FAILED, f"{registry} does not exist (the kubelet is not running here, or uses another "
                               "--root-dir)", "check `systemctl status kubelet` and its --root-dir; set the "
                               "chart's dra.kubeletRegistrarDirectoryPath and dra.kubeletPluginsDirectoryPath to match")
    absent = [s for s in sockets if not _is_socket(s)]
    if absent:
        return Finding(FAILED, f"no socket at {', '.join(absent)}: the DRA driver is not running on this node",
                       "install the chart with dra.enabled=true (with the device plugin on too, label the node "
                       "nvidia.com/gpu.deploy.dra-driver=true) and read the driver pod's log")
    silent = [s for s in sockets if not _answers(s)]
    if silent:
        return Finding(FAILED, f"nobody answers on {', '.join(silent)} (a driver that stopped left them)",
                       "restart the DRA driver's pod and read its log")
    return Finding(OK, f"{sockets[0]} and {sockets[1]} served")


def dra_api(c: Context) -> Finding:
    return _api(c, _resource_api)


def dra_device_classes(c: Context) -> Finding:
    return _api(c, _device_classes)


def dra_resource_slices(c: Context) -> Finding:
    if not c.node_name:
        return Finding(SKIPPED, "no node name (set NODE_NAME or --node-name)")
    return _api(c, lambda api: _slices(api, c.node_name, c.model))


def nfd_features(c: Context) -> Finding:
    if c.node_feature_api:
        return _api(c, _node_feature_crd)
    return _features_dir(c)


@_reads_host
def _features_dir(c: Context) -> Finding:
    directory = c.host(c.features_dir)
    if not os.path.isdir(directory):
        return Finding(FAILED, f"{directory} does not exist",
                       "deploy NFD (the chart's nfd.enabled) so its worker reads features.d, and mount it")
    if not os.access(directory, os.W_OK):
        return Finding(FAILED, f"{directory} is not writable", "mount it read-write")
    return Finding(OK, f"{directory} writable")


def runtime_class(c: Context) -> Finding:
    if not c.runtime_class:
        return Finding(SKIPPED, "the chart sets no runtimeClassName")
    return _api(c, lambda api: _runtime_class(api, c.runtime_class))


def node_labels(c: Context) -> Finding:
    if not c.node_name:
        return Finding(SKIPPED, "no node name (set NODE_NAME or --node-name)")
    return _api(c, lambda api: _labels(api, c.node_name))


def _api(c: Context, probe: Callable[[Cluster], tuple[str, str, str]]) -> Finding:
    """A probe of the API, or the typed error it raised as the verdict."""
    if c.cluster is None:
        return Finding(SKIPPED, "no cluster credentials (in the pod, or --kubeconfig)")
    try:
        verdict, evidence, remedy = probe(c.cluster)
    except Forbidden as e:
        return Finding(FAILED, f"the API answered {e}", "grant this ServiceAccount read access (the chart's RBAC does)")
    except Unreachable as e:  # connection refused, timeout: the API is the problem, not this check
        return Finding(FAILED, f"the API did not answer: {str(e)[:200]}",
                       "check the API server address and the network from this node")
    except KubeError as e:
        return Finding(FAILED, f"the API answered {e}")
    return Finding(verdict, evidence, remedy)


def _node_feature_crd(api: Cluster) -> tuple[str, str, str]:
    try:
        api.custom_resource_definition(NODE_FEATURE_CRD)
    except NotFound:
        return FAILED, f"CRD {NODE_FEATURE_CRD} is not served", "install NFD 0.14 or newer (the chart's nfd.enabled)"
    return OK, f"CRD {NODE_FEATURE_CRD} served", ""


def _runtime_class(api: Cluster, name: str) -> tuple[str, str, str]:
    try:
        handler = api.runtime_class(name).handler
    except NotFound:
        return FAILED, f"RuntimeClass {name} does not exist", f"kubectl apply a RuntimeClass {name} with handler nvidia"
    return OK, f"RuntimeClass {name} (handler {handler})", ""


def _labels(api: Cluster, node: str) -> tuple[str, str, str]:
    metadata = api.node(node).metadata
    labels = (metadata.labels if metadata else None) or {}
    ours = sorted(k for k in labels if k.startswith("nvidia.com/"))
    if "nvidia.com/gpu.count" not in labels:  # GFD's, on every node with a GPU it can read
        return FAILED, f"node {node}: {len(ours)} nvidia.com labels, no nvidia.com/gpu.count", \
            "check GFD's log and NFD's master: GFD writes the labels, NFD publishes them"
    return OK, f"node {node}: {len(ours)} nvidia.com labels", ""


def _resource_api(api: Cluster) -> tuple[str, str, str]:
    groups = api.api_groups()
    served = next((sorted(v.version for v in g.versions) for g in groups if g.name == "resource.k8s.io"), [])
    evidence = f"resource.k8s.io served in {', '.join(served)}" if served else "resource.k8s.io is not served"
    if "v1" not in served:
        return FAILED, evidence, "DRA's resource.k8s.io/v1 is served by Kubernetes 1.34 and newer: upgrade the cluster"
    return OK, evidence, ""


def _device_classes(api: Cluster) -> tuple[str, str, str]:
    found, missing, foreign = [], [], []
    for class_name in DEVICE_CLASSES:
        try:
            spec: Any = api.device_class(class_name).spec
        except NotFound:
            missing.append(class_name)
            continue
        selectors = " ".join(s.cel.expression for s in (spec.selectors or []) if s.cel is not None)
        mapped = f" (extendedResourceName {spec.extended_resource_name})" if spec.extended_resource_name else ""
        found.append(class_name + mapped)
        if f"'{DRIVER_NAME}'" not in selectors and f'"{DRIVER_NAME}"' not in selectors:
            foreign.append(class_name)
    evidence = "; ".join(filter(None, (f"DeviceClass {', '.join(found)}" if found else "",
                                       f"no DeviceClass {', '.join(missing)}" if missing else "")))
    if missing:
        return FAILED, evidence, "install the chart with dra.enabled=true and dra.deviceClasses=true (claims name " \
                                 "these classes)"
    if foreign:
        return WARNING, f"{evidence}; {', '.join(foreign)} selects no device of driver {DRIVER_NAME}", \
            "let the chart own the classes (dra.deviceClasses=true): claims of that class get other devices"
    return OK, evidence, ""


def _slices(api: Cluster, node: str, model: DeviceModel | None) -> tuple[str, str, str]:
    ours = [s for s in api.resource_slices(node) if s.spec.driver == DRIVER_NAME]
    names = {d.name for s in ours for d in (s.spec.devices or [])}
    if not ours:
        return FAILED, f"no ResourceSlice of {DRIVER_NAME} for node {node}", \
            "the DRA driver is not registered with the kubelet (it deletes a driver's slices when it goes) or " \
            "cannot publish: read the driver pod's log"
    evidence = f"{len(ours)} ResourceSlices of {DRIVER_NAME} for node {node}, {len(names)} devices"
    if model is not None:
        unpublished = sorted({d.name for d in allocatable_devices(model)} - names)  # what the driver publishes
        if unpublished:
            return WARNING, f"{evidence}; not published: {', '.join(unpublished[:8])}" + \
                (f" and {len(unpublished) - 8} more" if len(unpublished) > 8 else ""), \
                "the driver publishes what it found at its last read: restart its pod after a MIG change"
    return OK, evidence, ""


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


BOTH, PLUGIN_ONLY, DRA_ONLY = frozenset((DEVICE_PLUGIN, DRA)), frozenset((DEVICE_PLUGIN,)), frozenset((DRA,))
# (id, check, the drivers it is about). The DRA driver needs no runtime handler or toolkit (its CDI specs carry
# the driver's files and hooks), no device-plugin socket, and leaves features.d and RuntimeClasses to others.
CHECKS: tuple[tuple[str, Callable[[Context], Finding], frozenset[str]], ...] = (
    ("nvml.library", nvml_library, BOTH),
    ("driver.version", driver_version, BOTH),
    ("cuda.version", cuda_version, BOTH),
    ("devices.nodes", device_nodes, BOTH),
    ("gpus.mig-pending", mig_pending, BOTH),
    ("gpus.lost", lost_gpus, BOTH),
    ("gpus.row-remapping", row_remapping, BOTH),
    ("runtime.nvidia", container_runtime, PLUGIN_ONLY),
    ("runtime.cdi", runtime_cdi, BOTH),
    ("toolkit.installed", toolkit, PLUGIN_ONLY),
    ("cdi.specs", cdi_specs, PLUGIN_ONLY),
    ("kubelet.device-plugins", device_plugins, PLUGIN_ONLY),
    ("dra.kubelet-plugin", dra_kubelet_plugin, DRA_ONLY),
    ("dra.api", dra_api, DRA_ONLY),
    ("dra.device-classes", dra_device_classes, DRA_ONLY),
    ("dra.resourceslices", dra_resource_slices, DRA_ONLY),
    ("nfd.features", nfd_features, PLUGIN_ONLY),
    ("k8s.runtimeclass", runtime_class, PLUGIN_ONLY),
    ("k8s.node-labels", node_labels, BOTH),
)


def run(c: Context, ids: Collection[str] | None = None) -> list[Check]:
    """Every check about the context's driver, in order, or only those named."""
    results = []
    for check_id, check, drivers in CHECKS:
        if (ids is None and c.driver not in drivers) or (ids is not None and check_id not in ids):
            continue
        try:
            finding = check(c)
        except Exception as e:  # a bug in a check is a failed check, never a failed doctor
            finding = Finding(FAILED, f"the check itself failed: {type(e).__name__}: {e}", "report this as a bug")
        results.append(Check(finding.verdict, finding.evidence, finding.remedy, check_id))
    return results
