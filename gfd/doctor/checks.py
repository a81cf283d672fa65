"""The checks. Each reads one part of the set-up and says ok, warning, failed or skipped (with why), what it
read, and what would fix it. They only read: files under the host root, NVML, and the API when credentials
are given. A check never raises: an unexpected error is its own `failed` verdict."""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from gfd.discovery.sysfs import GPU_NODE, REQUIRED_CONTROL_DEVICES, device_root, host_path
from gfd.doctor.hostfiles import HostFileError, get, load_json, name
from gfd.doctor.runtime import read_runtime_configs
from gfd.model import DeviceModel

OK, WARNING, FAILED, SKIPPED = "ok", "warning", "failed", "skipped"
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
    api: Any = None  # a kubernetes ApiClient, when credentials were given
    node_name: str = ""

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
    socket = os.path.join(directory, "kubelet.sock")
    if not os.path.isdir(directory):
        return Finding(FAILED, f"{directory} does not exist",
                       "mount the kubelet's device-plugins directory (hostPath /var/lib/kubelet/device-plugins; "
                       "adjust it if the kubelet runs with another --root-dir)")
    try:
        is_socket = stat.S_ISSOCK(os.stat(socket).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        return Finding(FAILED, f"{socket} is not a socket (the kubelet is not running "
                       "here, or uses another root directory)", "check `systemctl status kubelet` and its --root-dir")
    return Finding(OK, f"{socket} present")


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


def _api(c: Context, probe: Callable[[Any], tuple[str, str, str]]) -> Finding:
    if c.api is None:
        return Finding(SKIPPED, "no cluster credentials (in the pod, or --kubeconfig)")
    from kubernetes.client.exceptions import ApiException

    try:
        verdict, evidence, remedy = probe(c.api)
    except ApiException as e:
        return Finding(FAILED, f"the API answered {e.status} {e.reason}",
                       "grant this ServiceAccount read access (the chart's RBAC does)" if e.status == 403 else "")
    except Exception as e:  # connection refused, timeout: the API is the problem, not this check
        return Finding(FAILED, f"the API did not answer: {type(e).__name__}: {str(e)[:200]}",
                       "check the API server address and the network from this node")
    return Finding(verdict, evidence, remedy)


def _node_feature_crd(api: Any) -> tuple[str, str, str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.ApiextensionsV1Api(api).read_custom_resource_definition(NODE_FEATURE_CRD, _request_timeout=3)
    except ApiException as e:
        if e.status != 404:
            raise
        return FAILED, f"CRD {NODE_FEATURE_CRD} is not served", "install NFD 0.14 or newer (the chart's nfd.enabled)"
    return OK, f"CRD {NODE_FEATURE_CRD} served", ""


def _runtime_class(api: Any, name: str) -> tuple[str, str, str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        handler = client.NodeV1Api(api).read_runtime_class(name, _request_timeout=3).handler
    except ApiException as e:
        if e.status != 404:
            raise
        return FAILED, f"RuntimeClass {name} does not exist", f"kubectl apply a RuntimeClass {name} with handler nvidia"
    return OK, f"RuntimeClass {name} (handler {handler})", ""


def _labels(api: Any, node: str) -> tuple[str, str, str]:
    from kubernetes import client

    metadata = client.CoreV1Api(api).read_node(node, _request_timeout=3).metadata
    labels = (metadata.labels if metadata else None) or {}
    ours = sorted(k for k in labels if k.startswith("nvidia.com/"))
    if "nvidia.com/gpu.count" not in labels:  # GFD's, on every node with a GPU it can read
        return FAILED, f"node {node}: {len(ours)} nvidia.com labels, no nvidia.com/gpu.count", \
            "check GFD's log and NFD's master: GFD writes the labels, NFD publishes them"
    return OK, f"node {node}: {len(ours)} nvidia.com labels", ""


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


CHECKS: tuple[tuple[str, Callable[[Context], Finding]], ...] = (
    ("nvml.library", nvml_library),
    ("driver.version", driver_version),
    ("cuda.version", cuda_version),
    ("devices.nodes", device_nodes),
    ("gpus.mig-pending", mig_pending),
    ("gpus.lost", lost_gpus),
    ("gpus.row-remapping", row_remapping),
    ("runtime.nvidia", container_runtime),
    ("toolkit.installed", toolkit),
    ("cdi.specs", cdi_specs),
    ("kubelet.device-plugins", device_plugins),
    ("nfd.features", nfd_features),
    ("k8s.runtimeclass", runtime_class),
    ("k8s.node-labels", node_labels),
)


def run(c: Context, ids: Collection[str] | None = None) -> list[Check]:
    """Every check, in order, or only those named."""
    results = []
    for check_id, check in CHECKS:
        if ids is not None and check_id not in ids:
            continue
        try:
            finding = check(c)
        except Exception as e:  # a bug in a check is a failed check, never a failed doctor
            finding = Finding(FAILED, f"the check itself failed: {type(e).__name__}: {e}", "report this as a bug")
        results.append(Check(finding.verdict, finding.evidence, finding.remedy, check_id))
    return results
