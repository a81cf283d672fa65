"""Machine profiles: YAML descriptions of simulated nodes, expanded against the GPU models in models/."""

from __future__ import annotations

import functools
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from gfd.config.errors import ConfigError, short
from gfd.config.reading import load_yaml, read_text
from gfd.discovery.simulated.telemetry import Pattern, parse_telemetry

# Package data read by path: importlib.resources would add ~2 ms of imports to every oneshot.
HERE = os.path.dirname(os.path.abspath(__file__))
PROFILE_DIR = os.path.join(HERE, "profiles")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class SimProcess:
    """A process with a CUDA context on a GPU or MIG device, as NVML's running-process queries report it
    (nvml.h nvmlProcessInfo_t: pid, usedGpuMemory in bytes, gpuInstanceId, computeInstanceId). `kind` says which
    queries list it: "C" nvmlDeviceGetComputeRunningProcesses (a process with its own context), "M+C" that one and
    nvmlDeviceGetMPSComputeRunningProcesses (an MPS client as nvidia-smi shows it on the host: type "M+C", NVIDIA's
    DRA driver MPS guide), "M" the MPS query alone. Whether NVML also lists an MPS client among the compute
    processes is not documented (nvml.h documents each query on its own), so both cases can be simulated."""

    pid: int
    used_memory_mib: int
    kind: str = "C"


@dataclass(eq=False)
class SimMig:
    profile: str
    gi_profile: int  # NVML_GPU_INSTANCE_PROFILE_* index
    gi_profile_id: int  # the driver's profile ID (differs from the index)
    ci_profile: int
    ci_profile_id: int
    memory_mib: int
    multiprocessors: int
    gi_slices: int
    ci_slices: int
    copy: int = 0
    decoder: int = 0
    encoder: int = 0
    jpeg: int = 0
    ofa: int = 0
    # Where the driver may place the profile's GPU instance: the first memory slice of each placement, and
    # how many memory slices one takes (`nvidia-smi mig -lgipp`: `{0,2,4}:2`).
    placements: tuple[int, ...] = ()
    memory_slices: int = 0
    gi_id: int = 0
    ci_id: int = 0
    uuid: str = ""
    placement: tuple[int, int] | None = None  # (start, size) of this instance, as nvmlGpuInstanceGetInfo
    processes: list[SimProcess] = field(default_factory=list)  # those running on this MIG device


@dataclass(eq=False)
class SimGpu:
    """Mutable on purpose: tests change a running simulation (GPU lost, MIG re-layout)."""

    name: str
    memory_mib: int
    compute_capability: tuple[int, int]
    architecture: int
    brand: int
    pci_device_id: int
    pci_class: int
    mig_capable: bool
    bus_id: str = ""
    uuid: str = ""
    minor: int = 0
    numa_node: int = -1
    mig_enabled: bool = False
    mig: list[SimMig] = field(default_factory=list)
    # Every MIG profile of the model (what the profile-info queries answer), by profile name.
    mig_profiles: dict[str, SimMig] = field(default_factory=dict)
    fabric: dict[str, Any] | None = None
    virtualization_mode: int = 0
    vgpu: dict[str, str] | None = None
    lost: bool = False
    compute_mode: int = 0  # nvmlComputeMode_t; the MPS control daemon sets EXCLUSIVE_PROCESS
    mig_pending: bool | None = None  # a MIG mode change that waits for a GPU reset (None: none pending)
    nvlinks: list[str] = field(default_factory=list)  # remote PCI bus id per active NVLink (a GPU or an NVSwitch)
    events_supported: bool = True
    pci_name: str = ""  # the PCI-ID database name (what the vfio back-end reports)
    bars: list[int] = field(default_factory=list)  # 64-bit memory BAR sizes in bytes
    reserved_mib: int = 0  # framebuffer the driver reserves (nvmlDeviceGetMemoryInfo_v2 `reserved`)
    vgpu_licensed: bool = True  # a vGPU guest's license state (nvmlDeviceGetGridLicensableFeatures)
    processes: list[SimProcess] = field(default_factory=list)  # running on the GPU (not on one of its MIG devices)


@dataclass(eq=False)
class Fault:
    call: str
    error: int
    gpu: int | None = None


@dataclass(eq=False)
class SimNode:
    name: str
    description: str
    machine: str
    driver_version: str
    cuda_driver_version: int
    gpus: list[SimGpu]
    faults: list[Fault] = field(default_factory=list)
    library_present: bool = True
    telemetry: dict[str, Pattern] = field(default_factory=lambda: parse_telemetry(None, ""))
    started: float = field(default_factory=time.monotonic)  # telemetry patterns run from here
    extra_pci_functions: list[dict[str, Any]] = field(default_factory=list)
    pcie: dict[tuple[int, int], int] = field(default_factory=dict)  # (a, b) with a < b -> NVML level
    pcie_default: int = 40
    nvswitches: list[str] = field(default_factory=list)  # PCI bus ids of the NVSwitches the GPUs' links reach
    # GPUs bound to vfio-pci for passthrough: in sysfs, invisible to NVML.
    vfio_gpus: list[SimGpu] = field(default_factory=list)
    # A file whose lines `<GPU index> <XID> [<GI id> <CI id>]`, appended while a program runs on this node, are
    # raised as XID events: another process's way to make a GPU fail (NVIDIA's mock NVML has the same kind of
    # runtime control, nvml-mock-ctl's overrides file).
    events_file: str = ""


_ARCH = {"kepler": 2, "maxwell": 3, "pascal": 4, "volta": 5, "turing": 6, "ampere": 7, "ada": 8, "hopper": 9,
         "blackwell": 10, "rubin": 13}
_BRAND = {"unknown": 0, "quadro": 1, "tesla": 2, "nvs": 3, "grid": 4, "geforce": 5, "titan": 6, "nvidia": 14}
_GPU_FIELDS = {"name", "memory_mib", "compute_capability", "architecture", "brand", "pci_device_id", "pci_class",
               "mig_capable", "numa_node", "fabric", "virtualization_mode", "vgpu", "bus_id", "events_supported",
               "reserved_mib", "vgpu_licensed"}


def stable_uuid(seed: str) -> str:
    """A UUID-shaped id that is the same for the same seed (zlib, not uuid/hashlib: oneshot start-up)."""
    digits = "".join(f"{zlib.crc32(f'{i}:{seed}'.encode()):08x}" for i in range(4))
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:32]}"


def builtin_names() -> list[str]:
    return sorted(name[:-5] for name in os.listdir(PROFILE_DIR) if name.endswith(".yaml"))


def load_profile(name_or_path: str) -> SimNode:
    """A built-in profile by name, or a profile YAML file by path."""
    if os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = name_or_path
        text = read_text(path, f"simulation profile {path}")
    else:
        if name_or_path not in builtin_names():
            raise ConfigError("flag --simulate", "simulate", f"unknown profile {short(name_or_path)}",
                              ", ".join(builtin_names()) + ", list, or a path to a profile YAML file")
        path = f"<built-in {name_or_path}>"
        with open(os.path.join(PROFILE_DIR, f"{name_or_path}.yaml"), encoding="utf-8") as f:
            text = f.read()
    return build_node(load_yaml(text, f"simulation profile {path}"), path)


MODEL_DIR = os.path.join(HERE, "models")


def model_names() -> list[str]:
    return sorted(name[:-5] for name in os.listdir(MODEL_DIR) if name.endswith(".yaml"))


@functools.cache
def _model(name: str) -> dict[str, Any]:
    with open(os.path.join(MODEL_DIR, f"{name}.yaml"), encoding="utf-8") as f:
        data: dict[str, Any] = yaml.load(f, Loader=_Loader)
    return data


def build_node(doc: Any, source: str) -> SimNode:
    """ConfigError (one line naming the file) for any document that is not a profile."""
    src = f"simulation profile {source}"
    try:
        return _build_node(doc, source, src)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ConfigError(src, "", f"malformed profile ({type(e).__name__}: {short(str(e))})",
                          "see the built-in profiles for the shape") from e


MAX_GPUS = 256  # per simulated node: far above any real one (16), low enough to build in milliseconds
MAX_NVLINKS = 18  # NVLink links per GPU on the largest parts (H100, GH200, B200)
_BUS_ID = re.compile(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]")


def _bus_id(value: Any, src: str, field_name: str) -> str:
    """PCI addresses become paths of the simulated tree: nothing but a PCI address gets through."""
    text = str(value)
    if not _BUS_ID.fullmatch(text):
        raise ConfigError(src, field_name, f"not a PCI address: {short(value)}", "DDDDDDDD:BB:DD.F")
    return text


def _build_node(doc: Any, source: str, src: str) -> SimNode:
    if not isinstance(doc, dict):
        raise ConfigError(src, "", "expected a mapping", "description, machine, driver_version, gpus, faults")
    gpus: list[SimGpu] = []
    vfio: list[SimGpu] = []
    for i, group in enumerate(doc.get("gpus") or []):
        target = vfio if isinstance(group, dict) and group.get("vfio") else gpus
        target.extend(_gpu_group(group, f"gpus[{i}]", src, start=len(gpus) + len(vfio)))
    name = str(doc.get("name") or os.path.basename(source).removesuffix(".yaml"))
    for g in gpus:
        g.uuid = g.uuid or f"GPU-{stable_uuid(f'{name}/{g.minor}')}"
        for m in g.mig:
            # Real MIG UUIDs are new for every created instance; the profile in the seed models that.
            m.uuid = f"MIG-{stable_uuid(f'{g.uuid}/{m.gi_id}/{m.ci_id}/{m.profile}')}"
    node = SimNode(
        name=name,
        description=str(doc.get("description", "")),
        machine=str(doc.get("machine", "")),
        driver_version=str(doc.get("driver_version", "550.54.15")),
        cuda_driver_version=int(doc.get("cuda_driver_version", 12040)),
        gpus=gpus,
        faults=[_fault(f, f"faults[{i}]", src) for i, f in enumerate(doc.get("faults") or [])],
        library_present=doc.get("library", "present") != "missing",
        telemetry=parse_telemetry(doc.get("telemetry"), src),
        extra_pci_functions=[dict(f, address=_bus_id(f["address"], src, f"extra_pci_functions[{i}].address"))
                             for i, f in enumerate(doc.get("extra_pci_functions") or [])],
        vfio_gpus=vfio,
        events_file=str(doc.get("events_file") or ""),
    )
    _topology(node, doc.get("topology") or {}, src)
    _processes(node, doc.get("processes") or [], src)
    return node


PROCESS_KINDS = ("C", "M", "M+C")
MAX_PROCESSES = 4096  # per simulated node: far above what a GPU runs (48 MPS clients per device since Volta)


def _processes(node: SimNode, raw: Any, src: str) -> None:
    """`processes: [{gpu: INDEX, mig: GI_ID, pid: PID, used_memory_mib: MIB, kind: C|M|M+C}, ...]`: what the
    running-process queries list on that GPU (or on its MIG device with that GPU instance id)."""
    if not isinstance(raw, list) or len(raw) > MAX_PROCESSES:
        raise ConfigError(src, "processes", f"expected a list of at most {MAX_PROCESSES} processes, got {short(raw)}",
                          "[{gpu, mig, pid, used_memory_mib, kind}, ...]")
    for i, entry in enumerate(raw):
        field_name = f"processes[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"gpu", "mig", "pid", "used_memory_mib", "kind"}:
            raise ConfigError(src, field_name, f"expected {{gpu, mig, pid, used_memory_mib, kind}}, got {short(entry)}")
        index, pid, mib = int(entry.get("gpu", 0)), int(entry["pid"]), int(entry.get("used_memory_mib", 0))
        kind = str(entry.get("kind", "C"))
        if not 0 <= index < len(node.gpus) or not 0 < pid < 1 << 32 or not 0 <= mib < 1 << 44 or \
                kind not in PROCESS_KINDS:
            raise ConfigError(src, field_name, f"not a process of this node: {short(entry)}",
                              f"a GPU index below {len(node.gpus)}, a PID (1 to 2^32-1), MiB, kind "
                              + "/".join(PROCESS_KINDS))
        gpu, process = node.gpus[index], SimProcess(pid, mib, kind)
        if entry.get("mig") is None:
            gpu.processes.append(process)
            continue
        mig = next((m for m in gpu.mig if m.gi_id == int(entry["mig"])), None)
        if mig is None:
            raise ConfigError(src, f"{field_name}.mig", f"GPU {index} has no MIG device with GPU instance "
                              f"{short(entry['mig'])}", ", ".join(str(m.gi_id) for m in gpu.mig) or "none")
        mig.processes.append(process)


_PCIE_LEVELS = {"internal": 0, "single": 10, "multiple": 20, "hostbridge": 30, "node": 40, "system": 50}


def _topology(node: SimNode, raw: dict[str, Any], src: str) -> None:
    """`nvlink: [[a, b, count], ...]`; `nvswitch: {switches: [BUS_ID, ...], links_per_gpu: N}` (every GPU's
    N links spread round-robin over the switches, as on HGX boards); `pcie: {default: LEVEL, LEVEL: [[gpu, ...],
    ...]}` where each group lists GPUs whose every pair has that level (more specific levels win)."""
    for a, b, count in raw.get("nvlink") or []:
        if not 0 <= int(count) <= MAX_NVLINKS:
            raise ConfigError(src, "topology.nvlink", f"{short(count)} links between GPUs {a} and {b}",
                              f"0 to {MAX_NVLINKS} (NVLink links per GPU)")
        for _ in range(count):
            node.gpus[a].nvlinks.append(node.gpus[b].bus_id)
            node.gpus[b].nvlinks.append(node.gpus[a].bus_id)
    switch = raw.get("nvswitch") or {}
    node.nvswitches = [_bus_id(b, src, f"topology.nvswitch.switches[{i}]")
                       for i, b in enumerate(switch.get("switches") or [])]
    per_gpu = int(switch.get("links_per_gpu", 0))
    if node.nvswitches or per_gpu:
        if not node.nvswitches or not 0 < per_gpu <= MAX_NVLINKS:
            raise ConfigError(src, "topology.nvswitch",
                              f"{len(node.nvswitches)} switches, {short(per_gpu)} links per GPU",
                              f"at least one switch and 1 to {MAX_NVLINKS} links per GPU")
        for gpu in node.gpus:
            gpu.nvlinks += [node.nvswitches[link % len(node.nvswitches)] for link in range(per_gpu)]
    for gpu in node.gpus:
        if len(gpu.nvlinks) > MAX_NVLINKS:
            raise ConfigError(src, "topology", f"{len(gpu.nvlinks)} NVLinks on GPU {gpu.minor}",
                              f"at most {MAX_NVLINKS} NVLinks per GPU")
    pcie = dict(raw.get("pcie") or {})
    default = pcie.pop("default", "node")
    if default not in _PCIE_LEVELS or not set(pcie) <= set(_PCIE_LEVELS):
        raise ConfigError(src, "topology.pcie", f"unknown level in {sorted({default, *pcie})}", ", ".join(_PCIE_LEVELS))
    node.pcie_default = _PCIE_LEVELS[default]
    for level in sorted(pcie, key=lambda name: -_PCIE_LEVELS[name]):  # broad first, specific last
        for group in pcie[level]:
            for i, a in enumerate(group):
                for b in group[i + 1 :]:
                    node.pcie[(min(a, b), max(a, b))] = _PCIE_LEVELS[level]


def _gpu_group(group: Any, field_name: str, src: str, start: int) -> list[SimGpu]:
    if not isinstance(group, dict) or group.get("model") not in model_names():
        raise ConfigError(src, f"{field_name}.model", f"unknown GPU model {short(group)}", ", ".join(model_names()))
    spec = dict(_model(group["model"]))  # cached: never mutate it
    unknown = set(group) - _GPU_FIELDS - {"model", "count", "mig", "bus_ids", "vfio"}
    if unknown:
        raise ConfigError(src, field_name, f"unknown keys {sorted(unknown)}", ", ".join(sorted(_GPU_FIELDS)))
    spec.update({k: v for k, v in group.items() if k in _GPU_FIELDS})
    profiles = spec.pop("mig_profiles", {}) or {}
    layout = group.get("mig")
    bus_ids = group.get("bus_ids") or []
    count = int(group.get("count", 1))
    if not 0 <= count <= MAX_GPUS - start:  # a huge count would build (and hold) that many GPUs
        raise ConfigError(src, f"{field_name}.count", f"{short(count)} GPUs is out of range",
                          f"0 to {MAX_GPUS} GPUs per node")
    out = []
    for n in range(count):
        index = start + n
        gpu = SimGpu(
            name=spec["name"],
            memory_mib=int(spec["memory_mib"]),
            compute_capability=(int(spec["compute_capability"][0]), int(spec["compute_capability"][1])),
            architecture=_ARCH[spec["architecture"]],
            brand=_BRAND[spec.get("brand", "nvidia")],
            pci_device_id=int(spec["pci_device_id"]),
            pci_class=int(spec.get("pci_class", 0x030200)),
            mig_capable=bool(spec.get("mig_capable", False)),
            bus_id=_bus_id(bus_ids[n], src, f"{field_name}.bus_ids[{n}]") if n < len(bus_ids)
            else f"00000000:{(0x10 + 0x08 * index) % 0x100:02X}:00.0",
            minor=index,
            numa_node=int(spec.get("numa_node", index * 2 // max(1, int(group.get("count", 1))))),
            fabric=spec.get("fabric"),
            virtualization_mode=int(spec.get("virtualization_mode", 0)),
            vgpu=spec.get("vgpu"),
            events_supported=bool(spec.get("events_supported", True)),
            pci_name=str(spec.get("pci_name", "")),
            bars=[int(b) for b in spec.get("bars", [])],
            reserved_mib=int(spec.get("reserved_mib", 0)),
            vgpu_licensed=bool(spec.get("vgpu_licensed", True)),
        )
        gpu.mig_profiles = {name: _profile(name, fields) for name, fields in profiles.items()}
        if layout is not None:
            if not gpu.mig_capable:
                raise ConfigError(src, f"{field_name}.mig", f"{gpu.name} is not MIG-capable")
            gpu.mig_enabled = True
            gpu.mig = [_mig(p, profiles, gi_id, f"{field_name}.mig[{gi_id}]", src) for gi_id, p in enumerate(layout)]
            _place(gpu.mig, f"{field_name}.mig", src)
        out.append(gpu)
    return out


def _mig(profile: str, profiles: dict[str, Any], gi_id: int, field_name: str, src: str) -> SimMig:
    if profile not in profiles:
        raise ConfigError(src, field_name, f"unknown MIG profile {short(profile)}", ", ".join(profiles))
    return _profile(profile, {**profiles[profile], "gi_id": gi_id + 1, "ci_id": 0})


def _profile(name: str, fields: dict[str, Any]) -> SimMig:
    return SimMig(profile=name, **{**fields, "placements": tuple(fields.get("placements", ()))})


MEMORY_SLICES = 8  # every MIG-capable GPU: 8 memory slices, 7 compute slices (see the model files' sources)


def _place(migs: list[SimMig], field_name: str, src: str) -> None:
    """Give each GPU instance of a layout a placement, as the driver does when it creates them: no two may share
    a memory slice. Which placement the driver picks when none is asked for is not documented; this takes the
    first assignment, in layout order, that fits them all (a search over at most 7 instances). A layout that
    cannot exist on the GPU is refused, as `nvidia-smi mig -cgi` refuses it."""
    def fit(i: int, used: frozenset[int]) -> list[tuple[int, int]] | None:
        if i == len(migs):
            return []
        size = migs[i].memory_slices
        for start in migs[i].placements:
            slices = frozenset(range(start, start + size))
            if slices & used or start + size > MEMORY_SLICES:
                continue
            rest = fit(i + 1, used | slices)
            if rest is not None:
                return [(start, size), *rest]
        return None

    found = fit(0, frozenset())
    if found is None:
        raise ConfigError(src, field_name, f"MIG layout {short([m.profile for m in migs])} does not fit the GPU's "
                          f"{MEMORY_SLICES} memory slices", "GPU instances whose placements do not overlap")
    for mig, placement in zip(migs, found, strict=True):
        mig.placement = placement


def _fault(raw: Any, field_name: str, src: str) -> Fault:
    import pynvml  # only a fault needs the error names

    codes = {k[len("NVML_ERROR_"):]: v for k, v in vars(pynvml).items() if k.startswith("NVML_ERROR_")}
    if not isinstance(raw, dict) or "call" not in raw:
        raise ConfigError(src, field_name, f"expected {{call, error, gpu}}, got {short(raw)}")
    error = str(raw.get("error", "UNKNOWN")).removeprefix("NVML_ERROR_")
    if error not in codes:
        raise ConfigError(src, f"{field_name}.error", f"unknown NVML error {short(error)}", ", ".join(sorted(codes)))
    return Fault(call=str(raw["call"]), error=codes[error], gpu=raw.get("gpu"))
