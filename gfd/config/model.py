"""The effective configuration: one frozen object, built once per load and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

MIG_STRATEGIES = ("none", "single", "mixed")
DISCOVERY_STRATEGIES = ("auto", "nvml", "tegra", "vfio")
DEFAULT_OUTPUT_FILE = "/etc/kubernetes/node-feature-discovery/features.d/gfd"
DEFAULT_MACHINE_TYPE_FILE = "/sys/class/dmi/id/product_name"
STDOUT = "-"


@dataclass(frozen=True)
class ReplicatedResource:
    name: str
    replicas: int
    rename: str = ""


@dataclass(frozen=True)
class ReplicatedResources:
    resources: tuple[ReplicatedResource, ...]
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False

    def entry(self, name: str) -> ReplicatedResource | None:
        return next((r for r in self.resources if r.name == name), None)

    @property
    def any_shared(self) -> bool:
        return any(r.replicas > 1 for r in self.resources)


@dataclass(frozen=True)
class Sharing:
    time_slicing: ReplicatedResources | None = None
    mps: ReplicatedResources | None = None

    @property
    def active(self) -> ReplicatedResources | None:
        """The entry list GFD consults: `mps` whenever that key exists, else `timeSlicing`."""
        return self.mps if self.mps is not None else self.time_slicing

    @property
    def strategy(self) -> str:
        if self.mps is not None and self.mps.any_shared:
            return "mps"
        if self.time_slicing is not None and self.time_slicing.any_shared:
            return "time-slicing"
        return "none"


@dataclass(frozen=True)
class Imex:
    channel_ids: tuple[int, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class Config:
    mig_strategy: str = "none"
    fail_on_init_error: bool = True
    use_node_feature_api: bool = True
    device_discovery_strategy: str = "auto"
    oneshot: bool = False
    no_timestamp: bool = False
    sleep_interval_ns: int = 60_000_000_000
    output_file: str = DEFAULT_OUTPUT_FILE
    machine_type_file: str = DEFAULT_MACHINE_TYPE_FILE
    container_driver_root: str = "/driver-root"
    config_file: str = ""
    namespace: str = "default"
    node_name: str = ""
    pod_name: str = ""
    kubeconfig: str = ""
    kube_api_qps: float = 5.0
    kube_api_burst: int = 10
    simulate: str = ""
    log_format: str = "auto"
    log_level: str = "info"
    metrics_address: str = ""
    keep_output_on_exit: bool = False
    node_feature_resync_ns: int = 3_600_000_000_000
    sharing: Sharing = field(default_factory=Sharing)
    imex: Imex = field(default_factory=Imex)
    # Options given explicitly (flag, env or file), by attribute name: decides the output (see outputs).
    explicit: frozenset[str] = frozenset()
